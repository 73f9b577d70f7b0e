"""De-identification crop, field-of-view trimming and resizing of gray frames.

The configured crop box is cut first, so the scanner's burned-in text (patient name, ID,
date) never reaches a stored pixel; the field of view (the fan or rectangle of echoes) is
then found on the cropped frames and everything outside it is trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from usv_ray.frames import resize_gray

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


def crop_region(crop_box: Sequence[float], width: int, height: int) -> Region:
    """Pixel region of a fractional ``crop_box`` (x0, y0, x1, y1) of a width x height frame."""
    x0, y0, x1, y1 = crop_box
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"crop_box {tuple(crop_box)} must satisfy 0 <= x0 < x1 <= 1, same for y")
    region = (
        int(np.floor(x0 * width)),
        int(np.floor(y0 * height)),
        int(np.ceil(x1 * width)),
        int(np.ceil(y1 * height)),
    )
    return region


def fov_region(frames: Sequence[np.ndarray], threshold: int, margin: int = 2) -> Region | None:
    """Bounding box of pixels brighter than ``threshold`` in any of ``frames`` (H, W).

    Uses the per-pixel maximum over the frames, so speckle that is dark in one frame is
    still counted; returns None when nothing is bright (an all-dark clip is kept whole).
    """
    peak = np.maximum.reduce(list(frames))  # (H, W)
    rows = np.flatnonzero((peak > threshold).any(axis=1))
    cols = np.flatnonzero((peak > threshold).any(axis=0))
    if rows.size == 0:
        return None
    height, width = peak.shape
    return (
        max(int(cols[0]) - margin, 0),
        max(int(rows[0]) - margin, 0),
        min(int(cols[-1]) + 1 + margin, width),
        min(int(rows[-1]) + 1 + margin, height),
    )


def cut(gray: np.ndarray, region: Region) -> np.ndarray:
    """The ``region`` of ``gray`` (a view)."""
    x0, y0, x1, y1 = region
    return gray[y0:y1, x0:x1]


def patch(
    gray: np.ndarray, box: Sequence[float], keep: Region, height: int, width: int
) -> np.ndarray:
    """The ``box`` (source pixels) of ``gray``, clipped to the kept region, resized.

    A box that falls wholly outside the kept region gives a black patch rather than text.
    """
    kx0, ky0, kx1, ky1 = keep
    x0 = int(np.clip(np.floor(box[0]), kx0, kx1))
    y0 = int(np.clip(np.floor(box[1]), ky0, ky1))
    x1 = int(np.clip(np.ceil(box[2]), kx0, kx1))
    y1 = int(np.clip(np.ceil(box[3]), ky0, ky1))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((height, width), np.uint8)
    return resize_gray(gray[y0:y1, x0:x1], height, width)
