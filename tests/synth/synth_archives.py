"""Tiny archive configs and readers shared by the night and truth tests."""

import csv
import dataclasses
from pathlib import Path

import numpy as np

from usv_ray.config import SynthConfig

# Small frames and short videos: each archive takes about a second to write.
BASE = SynthConfig(
    patients=4, seed=11, width=128, height=96, min_frames=4, max_frames=12, workers=1,
    dicom_fraction=0.3,
)  # fmt: skip
NIGHT = dataclasses.replace(BASE, night_followups=0.5, night_new_patients=2)
# As NIGHT, and only half of the archive's rows give annotations; two render processes.
FULL = dataclasses.replace(NIGHT, annotated_fraction=0.5, workers=2)


def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest, as dicts of strings."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_frames(path: Path) -> np.ndarray:
    """Decoded gray frames ``(T, H, W)`` of an MP4 or a DICOM cine."""
    if path.suffix == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path)
        return ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])
