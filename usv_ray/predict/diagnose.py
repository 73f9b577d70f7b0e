"""Diagnose videos with a bundle: the callable class of the Ray Data batch-inference job.

:class:`Diagnoser` loads the diagnosis bundle once per actor (on the GPU when the actor
holds one) and takes batches of videos: for each it reads the video's frames shard (and
its tracklets shard, when ingest wrote one), runs every member of the bundle over all the
video's frames, and over the frames each tracklet spans, and returns one row per video
with its tracklets nested. A video whose frames cannot be read is an error row; the rest
of the batch is diagnosed.

A video's frames come from :func:`usv_ray.bundle.diagnosis.read_video`. A tracklet's
frames are the stored frames whose source index lies within the tracklet's
first to last frame; when the sampling left none there, the stored frame nearest its middle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import torch

TRACKLET_RESULT = pa.struct(
    [
        pa.field("tracklet_id", pa.string()),
        pa.field("prob", pa.float32()),
        pa.field("prob_raw", pa.float32()),
        pa.field("spread", pa.float32()),
        pa.field("member_probs", pa.list_(pa.float32())),
        pa.field("frames", pa.int16()),
    ]
)
# what Diagnoser returns: the DIAGNOSES columns and the video's tracklets, nested
ROW_FIELDS = [
    ("video_id", pa.string()),
    ("patient_key", pa.string()),
    ("study_key", pa.string()),
    ("model_version", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("prob", pa.float32()),
    ("prob_raw", pa.float32()),
    ("spread", pa.float32()),
    ("member_probs", pa.list_(pa.float32())),
    ("reading", pa.string()),
    ("threshold", pa.float32()),
    ("frames", pa.int16()),
    ("diagnosed_at", pa.timestamp("ms", tz="UTC")),
    ("tracklets", pa.list_(TRACKLET_RESULT)),
]
ROW_SCHEMA = pa.schema(ROW_FIELDS)


def tracklet_spans(frame_index: np.ndarray, tracklet_frames: list[list[int]]) -> list[np.ndarray]:
    """Positions into a video's stored frames (``frame_index (T,)``, their source indices in
    order) of each tracklet's span: those from its first to its last source frame, else the
    one nearest the middle of its span."""
    spans = []
    for frames in tracklet_frames:
        first, last = min(frames), max(frames)
        inside = np.flatnonzero((frame_index >= first) & (frame_index <= last))
        if inside.size == 0:
            inside = np.array([int(np.argmin(np.abs(frame_index - (first + last) / 2)))])
        spans.append(inside)
    return spans


class Diagnoser:
    """Ray Data callable class: a batch of videos in, their diagnosis rows out.

    A batch holds ``video_id``, ``patient_key``, ``study_key``, ``frames`` (the frames
    shard's path), ``tracklets`` (the tracklets shard's path, "" without one) and
    ``shards`` (what ingest recorded of them, as JSON; "" for none).
    """

    def __init__(self, bundle: str, use_gpu: bool = False, precision: str = "fp32") -> None:
        from usv_ray import bundle as bundles

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        bf16 = precision == "bf16" and device == "cuda"  # as the setting says: fp32 on a CPU
        self.model = bundles.load(bundle, "diagnosis", device=device, bf16=bf16)

    def diagnose(
        self, frames: str, tracklets: str | None, shards: dict | None = None
    ) -> dict[str, Any]:
        """The diagnosis of one video (its ok row's values, tracklets nested)."""
        from usv_ray.bundle.diagnosis import read_video

        model = self.model
        images, index, tracks = read_video(frames, tracklets, shards)
        spans = tracklet_spans(index, tracks["frame_index"].to_pylist())
        video, parts = model.member_probs(images, spans)  # (M,), (S, M)
        raw = np.concatenate([[video.mean()], parts.mean(axis=1)])  # (1 + S,)
        calibrated = model.calibrator.apply(raw)
        spread = np.concatenate([[video.std()], parts.std(axis=1)])
        return {
            "status": "ok",
            "prob": float(calibrated[0]),
            "prob_raw": float(raw[0]),
            "spread": float(spread[0]),
            "member_probs": video.tolist(),
            "reading": "malignant" if calibrated[0] >= model.threshold else "benign",
            "frames": len(images),
            "tracklets": [
                {
                    "tracklet_id": tracklet_id,
                    "prob": float(calibrated[1 + i]),
                    "prob_raw": float(raw[1 + i]),
                    "spread": float(spread[1 + i]),
                    "member_probs": parts[i].tolist(),
                    "frames": len(spans[i]),
                }
                for i, tracklet_id in enumerate(tracks["tracklet_id"].to_pylist())
            ],
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        now = datetime.now(UTC)  # to the millisecond: a rerun compares it to shard mtimes
        rows = []
        for i, video_id in enumerate(batch["video_id"]):
            row = {
                "video_id": video_id,
                "patient_key": batch["patient_key"][i],
                "study_key": batch["study_key"][i],
                "model_version": self.model.version,
                "threshold": self.model.threshold,
                "diagnosed_at": now,
            }
            try:
                recorded = batch["shards"][i] if "shards" in batch else ""
                shards = json.loads(recorded) if recorded else None
                row.update(self.diagnose(batch["frames"][i], batch["tracklets"][i] or None, shards))
            except Exception as exc:  # one unreadable video is an error row, not a failed job
                row.update(status="error", error=f"{type(exc).__name__}: {exc}", tracklets=[])
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
