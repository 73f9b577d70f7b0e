"""Frame positions and frame sizes, the same in every stage that samples or resizes frames.

Ingest samples the frames it keeps and the frames of each tracklet, the LSTMs' equal-frame
sets and the 3D-CNN clips sample cached frames, and the re-ID clips sample tracklet
patches: all at :func:`uniform_positions`. Gray frames and patches are resized by
:func:`resize_gray`. numpy and OpenCV only: ingest workers do not import torch.
"""

from __future__ import annotations

import numpy as np


def uniform_positions(length: int, count: int, start: int = 0) -> np.ndarray:
    """``count`` positions spread uniformly over ``length`` frames from ``start``, both ends
    included: ``rint(linspace(start, start + length - 1, count))``.

    With fewer frames than ``count`` the positions repeat (each is the nearest frame), so
    every sequence of at least one frame gets ``count`` of them; with at least ``count``
    frames they are distinct. Returns int64 ``(count,)``, non-decreasing.

    Raises:
        ValueError: if ``length`` or ``count`` is below 1.
    """
    if length < 1 or count < 1:
        raise ValueError(f"need length >= 1 and count >= 1, got length={length}, count={count}")
    return np.rint(np.linspace(start, start + length - 1, count)).astype(np.int64)


def resize_gray(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W) image to (height, width), anti-aliased when shrinking.

    Large factors are first halved with Gaussian pyramid steps (``cv2.pyrDown``: a proper
    low-pass, and cheap) while the image stays at least 0.9 x the target; the last factor,
    below 2, is area-averaged (or bilinear when the image grows). About four times faster
    than one large box filter, and the same to a model.
    """
    import cv2

    if gray.shape == (height, width):
        return np.ascontiguousarray(gray)
    image = gray
    while image.shape[0] / 2 >= 0.9 * height and image.shape[1] / 2 >= 0.9 * width:
        image = cv2.pyrDown(image)
    if image.shape == (height, width):
        return image
    shrinking = image.shape[0] * image.shape[1] > height * width
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=method)
