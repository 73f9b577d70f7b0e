"""Frame positions, frame sizes and tracklet clips, the same in every stage that samples,
resizes or reads them.

Ingest samples the frames it keeps and the frames of each tracklet, the LSTMs' equal-frame
sets and the 3D-CNN clips sample cached frames, and the re-ID clips sample tracklet
patches: all at :func:`uniform_positions`. Gray frames and patches are resized by
:func:`resize_gray`. A stored tracklet clip becomes a model's input by :func:`clip_array`
(re-ID training, the re-ID bundle's embedding). numpy and OpenCV only: ingest workers do
not import torch.
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


ClipShape = tuple[int, int, int]  # (T frames, height, width) of a model's input clips


def clip_problem(clip: bytes | None, frames: int, height: int, width: int) -> str | None:
    """Why a stored tracklet clip cannot be read, or None when it can."""
    if frames < 1 or height < 1 or width < 1:
        return f"empty tracklet: {frames} frames of {height} x {width}"
    if clip is None or len(clip) != frames * height * width:
        size = 0 if clip is None else len(clip)
        return f"tracklet clip of {size} bytes is not {frames} x {height} x {width} uint8"
    return None


def clip_array(clip: bytes, frames: int, height: int, width: int, shape: ClipShape) -> np.ndarray:
    """One stored tracklet clip (``frames`` patches of ``height x width``) -> ``shape``
    ``(T, H, W)`` uint8: T patches sampled uniformly along the tracklet, each resized.

    Raises:
        ValueError: for a clip :func:`clip_problem` rejects.
    """
    if problem := clip_problem(clip, frames, height, width):
        raise ValueError(problem)
    count, out_height, out_width = shape
    patches = np.frombuffer(clip, np.uint8).reshape(frames, height, width)  # (T0, h, w)
    return np.stack(
        [resize_gray(patches[p], out_height, out_width) for p in uniform_positions(frames, count)]
    )


def batch_clips(batch: dict[str, np.ndarray], shape: ClipShape) -> np.ndarray:
    """Tracklet rows (columns clip, frame_index, height, width) -> ``(B, T, H, W)`` uint8."""
    return np.stack(
        [
            clip_array(c, len(f), int(h), int(w), shape)
            for c, f, h, w in zip(
                batch["clip"], batch["frame_index"], batch["height"], batch["width"], strict=True
            )
        ]
    )
