"""A synthetic archive's hidden truth in the pipeline's keyed names.

The truth file (:mod:`usv_ray.synth.truth`) names patients by their raw ID and videos by
their manifest path; the pipeline's tables hold only keyed hashes of them. With the key
ingest used, the same hashes are computed here (the manifest reader's and ingest's own
functions), so the truth joins the tables, and the raw IDs go no further than this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from usv_ray.privacy import keyed_hash, patient_key
from usv_ray.synth.truth import Truth


@dataclass(frozen=True, eq=False)
class KeyedTruth:
    """The truth with keyed ids only (no raw patient ID, no path)."""

    videos: pd.DataFrame  # video_id, patient_key, batch, label (0/1), annotated
    nodules: pd.DataFrame  # patient_key, nodule_id (keyed, as the tracklets hold it), malignant
    boxes: pd.DataFrame  # video_id, nodule_id (keyed), frame, x0, y0, x1, y1 (source pixels)


def keyed_truth(truth: Truth, key: bytes) -> KeyedTruth:
    """``truth`` under ``key``: video ids as ingest derives them from the manifest's video
    cell, patient keys and nodule ids as ingest hashes them."""
    videos = truth.videos.copy()
    videos["video_id"] = [keyed_hash(key, "video", os.path.normpath(v)) for v in videos["video"]]
    videos["patient_key"] = [patient_key(key, p) for p in videos["patient_id"]]
    videos["label"] = (videos["label"] == "malignant").astype("int8")
    by_video = videos.set_index(["batch", "video"])

    shown = truth.appearances.join(by_video[["video_id", "patient_key"]], on=["batch", "video"])
    shown["nodule_id"] = [
        keyed_hash(key, "nodule", pkey, nodule)
        for pkey, nodule in zip(shown["patient_key"], shown["nodule_id"], strict=True)
    ]
    nodules = shown.drop_duplicates(["patient_key", "nodule_id"])[
        ["patient_key", "nodule_id", "malignant"]
    ].reset_index(drop=True)
    boxes = truth.boxes.join(by_video[["video_id", "patient_key"]], on=["batch", "video"])
    boxes["nodule_id"] = [
        keyed_hash(key, "nodule", pkey, nodule)
        for pkey, nodule in zip(boxes["patient_key"], boxes["nodule_id"], strict=True)
    ]
    columns = ["video_id", "patient_key", "batch", "label", "annotated"]
    return KeyedTruth(
        videos[columns].reset_index(drop=True),
        nodules,
        boxes[["video_id", "nodule_id", "frame", "x0", "y0", "x1", "y1"]].reset_index(drop=True),
    )
