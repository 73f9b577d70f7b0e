"""Deterministic synthetic breast ultrasound video archives (B-mode-like, with nodules).

``write_archive(cfg, out)`` writes videos, per-video annotations and a manifest shaped as
the README's (a user's own archive's), as a pure function of a
:class:`~usv_ray.config.SynthConfig`;
beside them a night batch of unlabelled exams (``out/night/``) when the config asks for
one, and the hidden truth of both (``out/truth.json``), which only evaluation code reads,
through :func:`load_truth`.
"""

from usv_ray.synth.archive import write_archive
from usv_ray.synth.truth import Truth, load_truth, nodule_table

__all__ = ["Truth", "load_truth", "nodule_table", "write_archive"]
