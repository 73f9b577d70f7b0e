"""Boxes ``x0, y0, x1, y1`` in pixels: their intersection over union, computed one way for
every stage (the tracker, the tracking metrics, the synthetic annotator)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Intersection over union of every box of ``a`` with every box of ``b``.

    Args:
        a: ``(N, 4)`` boxes ``x0, y0, x1, y1``.
        b: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` float64 in [0, 1]; 0 wherever a box is empty or inverted (``x1 <= x0``
        or ``y1 <= y0``), where ``torchvision.ops.box_iou`` would give NaN or garbage.

    Raises:
        ValueError: an input is not ``(K, 4)``.
    """
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    area_a = _area(a)  # (N,)
    area_b = _area(b)  # (M,)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=-1)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    # an empty box has no intersection, so inter > 0 implies union > 0
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def as_boxes(boxes: npt.ArrayLike, name: str) -> np.ndarray:
    """``(K, 4)`` float64 view of ``boxes``; an empty input of any shape is ``(0, 4)``."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) boxes x0, y0, x1, y1, got shape {array.shape}")
    return array


def _area(boxes: np.ndarray) -> np.ndarray:
    """``(K,)`` areas; 0 for empty or inverted boxes."""
    sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)  # (K, 2)
    return sides[:, 0] * sides[:, 1]
