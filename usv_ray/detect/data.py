"""What the detector trains on: the stored frames of the videos whose annotations are whole.

Ingest writes, in every frame row of such a video, the boxes of the nodules annotated in
that frame (a key frame's own, the union of its neighbours' between key frames), in the
stored frame's pixels; an empty list is a frame that shows none. Those videos are split by
patient into train / validation / test (:func:`split_videos`), as the re-ID stage splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from usv_ray.config import DetectConfig
from usv_ray.errors import UsvRayError

FRAME_COLUMNS = ["image", "height", "width", "boxes"]


class DetectError(UsvRayError, ValueError):
    """The detector cannot be trained as asked (no annotated videos, too few patients)."""


def annotated_videos(data: Path) -> pd.DataFrame:
    """video_id, patient_key of the ingested videos whose annotations are whole.

    Raises:
        DetectError: no ingest folder, or no such video.
    """
    from usv_ray.layout import IngestFolder, LayoutError

    columns = ["video_id", "patient_key", "status", "annotated"]
    try:
        videos = IngestFolder(data).read_videos(columns)
    except LayoutError as exc:
        raise DetectError(str(exc)) from exc
    videos = videos[(videos["status"] == "ok") & videos["annotated"].fillna(False).astype(bool)]
    if videos.empty:
        raise DetectError(
            f"no video in {data} has whole annotations: the detector learns from annotated "
            "videos (ingest them with their annotations column)"
        )
    return videos[["video_id", "patient_key"]].sort_values("video_id", ignore_index=True)


def split_videos(videos: pd.DataFrame, cfg: DetectConfig) -> pd.DataFrame:
    """``videos`` with the ``split`` (train, val, test) of their patient.

    Raises:
        DetectError: too few patients for three splits.
    """
    from usv_ray.splits import split_patients

    try:
        split_of = split_patients(videos["patient_key"].tolist(), cfg.split, seed=cfg.seed)
    except ValueError as exc:
        raise DetectError(f"detector split: {exc}") from exc
    return videos.assign(split=videos["patient_key"].map(split_of))


def collate(batch: dict[str, np.ndarray]) -> tuple[Tensor, list[Tensor]]:
    """Ray Data batch -> (frames uint8 (B, 1, S, S), boxes: per frame (n, 4) float32)."""
    images = batch["image"]  # (B,) bytes, each S * S
    height, width = int(batch["height"][0]), int(batch["width"][0])
    pixels = np.frombuffer(b"".join(images), np.uint8).reshape(len(images), 1, height, width)
    boxes = [
        torch.tensor(np.asarray([list(b) for b in frame], np.float32).reshape(-1, 4))
        for frame in batch["boxes"]
    ]
    return torch.from_numpy(pixels.copy()), boxes


def augment(
    images: Tensor, boxes: list[Tensor], generator: torch.Generator
) -> tuple[Tensor, list[Tensor]]:
    """A float batch ``(B, 1, S, S)`` and its boxes, augmented as ultrasound allows, one
    draw per frame: a left-right flip, a shift of up to a tenth of the frame (edges repeat
    the border; a box shifted half out of the frame is dropped), a gain and an offset."""
    batch, _, size, _ = images.shape
    flip = torch.rand(batch, generator=generator) < 0.5  # (B,)
    shift = torch.round(0.1 * size * (2 * torch.rand(batch, 2, generator=generator) - 1))  # px
    gain = 1 + 0.4 * (torch.rand(batch, generator=generator) - 0.5)
    offset = 0.4 * (torch.rand(batch, generator=generator) - 0.5)
    out, moved = torch.empty_like(images), []
    for b in range(batch):
        frame = images[b].flip(-1) if flip[b] else images[b]
        dx, dy = int(shift[b, 0]), int(shift[b, 1])
        index_x = (torch.arange(size, device=images.device) - dx).clamp(0, size - 1)
        index_y = (torch.arange(size, device=images.device) - dy).clamp(0, size - 1)
        out[b] = frame[:, index_y][:, :, index_x] * gain[b] + offset[b]
        box = boxes[b].clone()
        if flip[b] and len(box):
            box[:, [0, 2]] = size - box[:, [2, 0]]
        box = box + torch.tensor([dx, dy, dx, dy], dtype=box.dtype)
        clipped = box.clamp(0, size)
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        moved.append(clipped[inside >= 0.5 * area])
    return out, moved
