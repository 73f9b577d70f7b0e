"""Tracklet clips as the re-ID extractor sees them: read, sampled to T frames, resized.

A tracklet row holds ``len(frame_index)`` patches of ``height x width`` (what ingest
wrote); :func:`clip_array` samples ``clip_frames`` of them uniformly along the tracklet
and resizes each to ``clip_height x clip_width``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from usv_ray.config import ReidConfig
from usv_ray.frames import resize_gray, uniform_positions
from usv_ray.imaging import augment, normalise

META_COLUMNS = ["tracklet_id", "video_id", "patient_key", "study_key", "nodule_id"]


def tracklet_shards(data: Path) -> list[str]:
    """The ``tracklets`` shards under an ingest output folder, sorted."""
    return sorted(str(p) for p in (Path(data) / "tracklets").glob("*.parquet"))


def read_tracklet_table(data: Path, columns: Sequence[str] = META_COLUMNS) -> pa.Table:
    """``columns`` of every tracklet of the archive (no clips unless asked), by tracklet_id.

    Raises:
        FileNotFoundError: when the folder holds no tracklet shards.
    """
    shards = tracklet_shards(data)
    if not shards:
        raise FileNotFoundError(f"no tracklets under {Path(data) / 'tracklets'}: run ingest first")
    table = pa.concat_tables(pq.read_table(s, columns=list(columns)) for s in shards)
    return table.sort_by("tracklet_id")


def clip_problem(clip: bytes | None, frames: int, height: int, width: int) -> str | None:
    """Why a stored tracklet clip cannot be read, or None when it can."""
    if frames < 1 or height < 1 or width < 1:
        return f"empty tracklet: {frames} frames of {height} x {width}"
    if clip is None or len(clip) != frames * height * width:
        size = 0 if clip is None else len(clip)
        return f"tracklet clip of {size} bytes is not {frames} x {height} x {width} uint8"
    return None


def clip_array(clip: bytes, frames: int, height: int, width: int, cfg: ReidConfig) -> np.ndarray:
    """One stored tracklet clip -> ``(cfg.clip_frames, clip_height, clip_width)`` uint8.

    Raises:
        ValueError: for a clip :func:`clip_problem` rejects.
    """
    if problem := clip_problem(clip, frames, height, width):
        raise ValueError(problem)
    patches = np.frombuffer(clip, np.uint8).reshape(frames, height, width)  # (T0, h, w)
    return np.stack(
        [
            resize_gray(patches[p], cfg.clip_height, cfg.clip_width)
            for p in uniform_positions(frames, cfg.clip_frames)
        ]
    )


def batch_clips(batch: dict[str, np.ndarray], cfg: ReidConfig) -> np.ndarray:
    """Tracklet rows (columns clip, frame_index, height, width) -> ``(B, T, H, W)`` uint8."""
    return np.stack(
        [
            clip_array(c, len(f), int(h), int(w), cfg)
            for c, f, h, w in zip(
                batch["clip"], batch["frame_index"], batch["height"], batch["width"], strict=True
            )
        ]
    )


@dataclass(frozen=True)
class TrackletSet:
    """Tracklets in memory, in tracklet_id order: the clips and who is who."""

    tracklet_ids: np.ndarray  # (N,) str
    patient_keys: np.ndarray  # (N,) str
    identities: np.ndarray  # (N,) str: the nodule within its patient
    clips: np.ndarray  # (N, T, H, W) uint8

    def __len__(self) -> int:
        return len(self.tracklet_ids)


def load_tracklets(data: Path, tracklet_ids: Sequence[str], cfg: ReidConfig) -> TrackletSet:
    """Read the clips of ``tracklet_ids`` (every worker reads the shared data folder).

    Raises:
        KeyError: when an id is not in the archive's tracklets.
    """
    wanted = set(tracklet_ids)
    columns = [*META_COLUMNS, "clip", "frame_index", "height", "width"]
    parts = []
    for shard in tracklet_shards(data):
        table = pq.read_table(shard, columns=columns)
        mask = np.isin(table["tracklet_id"].to_numpy(zero_copy_only=False), list(wanted))
        if mask.any():
            parts.append(table.filter(pa.array(mask)))
    table = pa.concat_tables(parts).sort_by("tracklet_id") if parts else None
    found = set() if table is None else set(table["tracklet_id"].to_pylist())
    if missing := wanted - found:
        raise KeyError(f"{len(missing)} tracklets not found, e.g. {sorted(missing)[0]}")
    rows = table.to_pydict()
    return TrackletSet(
        tracklet_ids=np.array(rows["tracklet_id"]),
        patient_keys=np.array(rows["patient_key"]),
        identities=np.array([n or "" for n in rows["nodule_id"]]),
        clips=batch_clips(rows, cfg),
    )


def model_input(clips: Tensor) -> Tensor:
    """uint8 clips (B, T, H, W) -> the extractor's float input (B, 1, T, H, W)."""
    return normalise(clips)[:, None]


def augmented_input(clips: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 training clips (B, T, H, W) -> augmented float input (B, 1, T, H, W).

    One draw per clip (the frames are the channels of :func:`usv_ray.imaging.augment`), so
    a clip stays one consistent view of its nodule.
    """
    return augment(normalise(clips), generator)[:, None]
