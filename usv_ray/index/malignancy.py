"""A diagnosis for every nodule of the index, pooled from the night's diagnoses.

A video-level label says only that one of the video's nodules is malignant, so a nodule
is scored from what ``usv-ray predict`` wrote, in one of two ways (``index.nodule_scoring``):

- ``tracklets``: the mean calibrated P(malignant) of the nodule's tracklets, each read by
  the variable-frame CNN-LSTM on the stored frames it spans (``tracklet_diagnoses``): a
  video that shows two nodules at different moments gives each its own reading;
- ``videos``: the mean calibrated P of the videos that show it (``diagnoses``): every
  nodule of a video shares that video's reading.

Besides the pooled P over every tracklet, each nodule gets the same pool over its first
and its latest exam alone, and ``turned_suspicious`` when the first read below the
bundle's threshold and the latest at or above it: the follow-up a reader should see first.
The evidence is the number of its tracklets, videos and exams.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def evidence(nodules: pd.DataFrame, tracklets: pd.DataFrame) -> pd.DataFrame:
    """``n_videos`` and ``n_studies`` of each nodule (a row of the index) from the tracklet
    table (tracklet_id, video_id, study_key); returns ``nodules`` with the two columns."""
    if nodules.empty:  # a night where nothing could be embedded
        return nodules.assign(n_videos=np.int32(0), n_studies=np.int32(0)).astype(
            {"n_videos": np.int32, "n_studies": np.int32}
        )
    members = nodules[["nodule_uid", "tracklet_ids"]].explode("tracklet_ids")
    members = members.merge(
        tracklets[["tracklet_id", "video_id", "study_key"]],
        left_on="tracklet_ids",
        right_on="tracklet_id",
        how="left",
    )
    counts = members.groupby("nodule_uid").agg(
        n_videos=("video_id", "nunique"), n_studies=("study_key", "nunique")
    )
    out = nodules.drop(columns=["n_videos", "n_studies"], errors="ignore")
    out = out.merge(counts, left_on="nodule_uid", right_index=True, how="left")
    return out.astype({"n_videos": np.int32, "n_studies": np.int32})


def _pool(members: pd.DataFrame) -> pd.Series:
    """Mean P per nodule, over the rows of ``members`` (nodule_uid, prob) that have one."""
    return members.dropna(subset=["prob"]).groupby("nodule_uid")["prob"].mean()


def score_nodules(
    nodules: pd.DataFrame,
    tracklets: pd.DataFrame,
    scored: pd.DataFrame,
    scoring: str,
    threshold: float,
    version: str | None,
) -> pd.DataFrame:
    """``nodules`` (rows of the index) with their malignancy columns set (malignancy,
    malignancy_first, malignancy_latest, turned_suspicious, nodule_scoring,
    diagnosis_version: see :data:`usv_ray.schemas.NODULES`).

    ``tracklets``: tracklet_id, video_id, study_key of the archive; ``scored``: the
    diagnoses of one model version, tracklet_id and prob (``scoring`` tracklets) or
    video_id and prob (``videos``), empty when there are none; ``threshold``: the bundle's
    operating point; ``version``: its model version.
    """
    if scoring not in ("tracklets", "videos"):
        raise ValueError(f"nodule scoring {scoring!r} is not tracklets or videos")
    members = nodules[["nodule_uid", "tracklet_ids", "first_study", "last_study"]]
    members = members.explode("tracklet_ids").rename(columns={"tracklet_ids": "tracklet_id"})
    members = members.merge(tracklets[["tracklet_id", "video_id", "study_key"]], how="left")
    key = "tracklet_id" if scoring == "tracklets" else "video_id"
    if scoring == "videos":  # each video counts once, however many tracklets it gives
        members = members.drop_duplicates(["nodule_uid", "video_id"])
    members = members.merge(scored[[key, "prob"]], on=key, how="left")
    study = members["study_key"].fillna("")  # an archive without study ids: one exam
    first = members[study == members["first_study"].fillna("")]
    latest = members[study == members["last_study"].fillna("")]
    out = nodules.copy()
    uid = out["nodule_uid"]
    out["malignancy"] = uid.map(_pool(members)).astype("float32")
    out["malignancy_first"] = uid.map(_pool(first)).astype("float32")
    out["malignancy_latest"] = uid.map(_pool(latest)).astype("float32")
    known = out["malignancy_first"].notna() & out["malignancy_latest"].notna()
    turned = (out["malignancy_first"] < threshold) & (out["malignancy_latest"] >= threshold)
    out["turned_suspicious"] = turned.where(known, None).astype("object")
    scored_any = out["malignancy"].notna()
    out["nodule_scoring"] = np.where(scored_any, scoring, None)
    out["diagnosis_version"] = np.where(scored_any, version, None)
    return out
