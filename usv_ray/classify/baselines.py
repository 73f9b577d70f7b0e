"""The frame-level baselines of the paper, read from the feature cache (no CNN is rerun).

- ``CNN_Vote``: every frame votes with its CNN prediction (P(malignant) >= threshold); the
  video's score is the share of malignant votes, so the majority wins at 0.5 (a tie counts
  as malignant) and the score still ranks videos for ROC and PR curves.
- ``CNN_Aver``: the mean of the frames' P(malignant).
- ``Key_Frame``: the CNN's P(malignant) of one key frame: the annotated key frame when the
  video has one (the first key frame of its earliest tracklet), else the middle frame.
  Ingest keeps sampled frames only, so the annotated frame is matched to the nearest kept
  frame of the video.

Every function takes fold k's cached frame rows (``video_id, seq_index, frame_index,
frame_prob``, from the CNN trained without fold k) and returns one score per video.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def vote(frames: pd.DataFrame, threshold: float = 0.5) -> pd.Series:
    """CNN_Vote: share of a video's frames predicted malignant, indexed by video_id."""
    malignant = (frames["frame_prob"] >= threshold).astype(np.float64)
    return malignant.groupby(frames["video_id"]).mean().rename("CNN_Vote")


def average(frames: pd.DataFrame) -> pd.Series:
    """CNN_Aver: mean frame P(malignant) of each video, indexed by video_id."""
    return (
        frames["frame_prob"]
        .astype(np.float64)
        .groupby(frames["video_id"])
        .mean()
        .rename("CNN_Aver")
    )


def key_frame(frames: pd.DataFrame, annotated: Mapping[str, int]) -> pd.Series:
    """Key_Frame: P(malignant) of each video's key frame, indexed by video_id.

    ``annotated`` maps video_id -> the source frame index of its annotated key frame; the
    kept frame nearest to it is used (the earlier one on a tie). Videos without one use
    their middle kept frame (of an even count, the later of the two middle frames).
    """
    rows = frames.sort_values(["video_id", "seq_index"], kind="stable")
    scores = {}
    for video_id, video in rows.groupby("video_id", sort=True):
        if video_id in annotated:
            distance = np.abs(video["frame_index"].to_numpy() - annotated[video_id])
            pick = int(np.argmin(distance))  # argmin: the first (earlier) on a tie
        else:
            pick = len(video) // 2
        scores[video_id] = float(video["frame_prob"].iloc[pick])
    return pd.Series(scores, name="Key_Frame", dtype=np.float64)


def annotated_key_frames(tracklets: pd.DataFrame) -> dict[str, int]:
    """video_id -> first key frame of its earliest tracklet, from ``tracklets`` rows.

    A tracklet starts at its first annotated key frame, and ingest samples its frames
    uniformly from that frame on, so ``frame_index[0]`` is an annotated key frame.
    """
    first = tracklets["frame_index"].map(lambda frames: int(frames[0]))
    return {
        str(video): int(frame)
        for video, frame in first.groupby(tracklets["video_id"]).min().items()
    }
