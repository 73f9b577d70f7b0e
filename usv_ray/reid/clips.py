"""Tracklet clips as the re-ID models train on them: read from the ingest folder, sampled
to T frames and resized (:func:`usv_ray.frames.clip_array`), augmented per clip.
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
from usv_ray.frames import ClipShape, batch_clips
from usv_ray.imaging import augment, normalise
from usv_ray.layout import TRACKLET_META, IngestFolder


def clip_shape(cfg: ReidConfig) -> ClipShape:
    """(T, H, W) of the clips ``cfg`` trains on."""
    return (cfg.clip_frames, cfg.clip_height, cfg.clip_width)


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
    columns = [*TRACKLET_META, "clip", "frame_index", "height", "width"]
    parts = []
    for shard in IngestFolder(data).tracklet_shards():
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
        clips=batch_clips(rows, clip_shape(cfg)),
    )


def augmented_input(clips: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 training clips (B, T, H, W) -> augmented float input (B, 1, T, H, W).

    One draw per clip (the frames are the channels of :func:`usv_ray.imaging.augment`), so
    a clip stays one consistent view of its nodule.
    """
    return augment(normalise(clips), generator)[:, None]
