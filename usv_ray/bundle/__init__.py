"""Bundles: a trained model made a product that travels without its training folder.

One record for every kind (:class:`~usv_ray.bundle.record.Bundle`: kind, format, version,
files with their digests, the ingest settings it needs, metrics), written by
:func:`write` and checked by :func:`read`, and one :func:`load` that returns a ready
model for every kind: :class:`~usv_ray.bundle.diagnosis.DiagnosisModel`,
:class:`~usv_ray.bundle.reid.ReidModels`, :class:`~usv_ray.bundle.detector.DetectorModel`,
:class:`~usv_ray.bundle.trunk.TrunkModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from usv_ray.bundle.record import (
    BUNDLE_DIR,
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    Bundle,
    BundleError,
    file_digest,
    find,
    now_utc,
    package_version,
    read,
    write,
)

__all__ = [
    "BUNDLE_DIR",
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "LOADERS",
    "Bundle",
    "BundleError",
    "file_digest",
    "find",
    "load",
    "now_utc",
    "package_version",
    "read",
    "write",
]


def _diagnosis(bundle: Bundle, device: Any, bf16: bool) -> Any:
    from usv_ray.bundle.diagnosis import DiagnosisModel

    return DiagnosisModel.load(bundle, device, bf16)


def _reid(bundle: Bundle, device: Any, bf16: bool) -> Any:
    from usv_ray.bundle.reid import ReidModels

    return ReidModels.load(bundle, device, bf16)


def _detector(bundle: Bundle, device: Any, bf16: bool) -> Any:
    from usv_ray.bundle.detector import DetectorModel

    return DetectorModel.load(bundle, device, bf16)


def _trunk(bundle: Bundle, device: Any, bf16: bool) -> Any:
    from usv_ray.bundle.trunk import TrunkModel

    return TrunkModel.load(bundle, device, bf16)


# a bundle's kind -> what makes its ready model
LOADERS: dict[str, Callable[[Bundle, Any, bool], Any]] = {
    "diagnosis": _diagnosis,
    "reid": _reid,
    "detector": _detector,
    "trunk": _trunk,
}


def load(
    path: str | Path, kind: str | None = None, *, device: Any = "cpu", bf16: bool = False
) -> Any:
    """The ready model of the bundle at ``path`` (a bundle folder, or the training stage's
    folder holding one), of ``kind`` when given, on ``device``; ``bf16``: inference under
    bf16 autocast (a GPU's). Every model carries its :class:`Bundle` as ``.bundle``.

    Raises:
        BundleError: no bundle there, another kind, an unknown format, a missing or damaged
            file.
    """
    bundle = read(path, kind)
    if bundle.kind not in LOADERS:
        raise BundleError(
            f"{bundle.folder} holds a {bundle.kind!r} bundle, which this usv_ray cannot load "
            f"(it loads {', '.join(LOADERS)})"
        )
    return LOADERS[bundle.kind](bundle, device, bf16)
