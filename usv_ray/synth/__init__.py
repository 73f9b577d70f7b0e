"""Deterministic synthetic breast ultrasound video archives (B-mode-like, with nodules).

``write_archive(cfg, out)`` writes videos, per-video annotations and a manifest following
DESIGN.md's input contract, as a pure function of a :class:`~usv_ray.config.SynthConfig`.
"""

from usv_ray.synth.archive import write_archive

__all__ = ["write_archive"]
