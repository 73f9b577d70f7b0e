"""Automatic tracklets against the hidden truth: tracking quality and each tracklet's true
nodule (what :mod:`usv_ray.score.linking` holds an index against).

Every video of the synthetic archive has true boxes in every frame where a nodule is
visible, so the tracker's output is scored frame by frame (:mod:`usv_ray.evaluate.tracking`:
frame recall and precision, purity, IDF1 and identity switches from py-motmetrics), and an
automatic tracklet shows the true nodule its boxes match (IoU >= 0.5) in most of its
frames, or none when they match one in fewer than half.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from usv_ray.score.keyed import KeyedTruth

IOU = 0.5  # a box on a nodule: the usual MOT threshold


def tracklet_boxes(tracklets: pd.DataFrame) -> pd.DataFrame:
    """One row per box of each tracklet: video, frame, track_id (its tracklet_id), x0..y1."""
    rows = tracklets[["video_id", "tracklet_id", "box_frames", "boxes"]]
    rows = rows.explode(["box_frames", "boxes"], ignore_index=True).dropna(subset=["boxes"])
    boxes = np.stack(rows["boxes"].to_numpy()) if len(rows) else np.zeros((0, 4))
    return pd.DataFrame(
        {
            "video": rows["video_id"].to_numpy(),
            "frame": rows["box_frames"].to_numpy(np.int64),
            "track_id": rows["tracklet_id"].to_numpy(),
            **{name: boxes[:, i] for i, name in enumerate(("x0", "y0", "x1", "y1"))},
        }
    )


def truth_boxes(truth: KeyedTruth, video_ids: set[str]) -> pd.DataFrame:
    """The true boxes of ``video_ids``: video, frame, object_id (the keyed nodule), x0..y1."""
    boxes = truth.boxes[truth.boxes["video_id"].isin(video_ids)]
    return boxes.rename(columns={"video_id": "video", "nodule_id": "object_id"})


def tracking_quality(
    truth: KeyedTruth, automatic: pd.DataFrame, videos: set[str] | None = None
) -> tuple[dict, pd.DataFrame]:
    """Tracking scores of the ``automatic`` tracklets over ``videos`` (the videos the
    tracker ran on, those without a tracklet too; default: the tracklets' own), and per
    tracklet its true nodule (tracklet_id, nodule_id: None when its boxes match none in
    half its frames) and purity."""
    from usv_ray.evaluate.tracking import frame_scores, identity_scores, purity

    videos = set(automatic["video_id"]) if videos is None else videos
    automatic = automatic[automatic["video_id"].isin(videos)]
    true, pred = truth_boxes(truth, videos), tracklet_boxes(automatic)
    frames = frame_scores(true, pred, IOU)
    mean_purity, per_track = purity(true, pred, IOU)
    identity = identity_scores(true, pred, IOU)
    row = {
        "videos": len(videos),
        "tracklets": len(automatic),
        "true_boxes": int(frames["true_boxes"]),
        "frame_recall": 100 * frames["recall"],
        "frame_precision": 100 * frames["precision"],
        "purity": 100 * mean_purity,
        "idf1": 100 * identity["idf1"],
        "idp": 100 * identity["idp"],
        "idr": 100 * identity["idr"],
        "id_switches": int(identity["num_switches"]),
        "mota": 100 * identity["mota"],
    }
    matched = per_track["matched_frames"] >= 0.5 * per_track["frames"]
    nodules = pd.DataFrame(
        {
            "tracklet_id": per_track["track_id"].to_numpy(),
            "nodule_id": per_track["object_id"].where(matched, None).to_numpy(),
        }
    )
    return row, nodules


def tracklet_nodules(tracklets: pd.DataFrame, truth: KeyedTruth) -> pd.DataFrame:
    """The true nodule of every tracklet (tracklet_id, nodule_id): an annotated tracklet's
    own, an automatic one's by its boxes (None when it matches none)."""
    annotated = tracklets.loc[tracklets["source"] == "annotated", ["tracklet_id", "nodule_id"]]
    automatic = tracklets[tracklets["source"] == "automatic"]
    if automatic.empty:
        return annotated.reset_index(drop=True)
    return pd.concat([annotated, tracking_quality(truth, automatic)[1]], ignore_index=True)
