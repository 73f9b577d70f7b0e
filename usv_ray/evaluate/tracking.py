"""Tracking quality: predicted tracks against the true boxes of every nodule, frame by frame.

Both inputs are tables of boxes, one row per box, in one video or many:

- ``truth``: ``video, frame, object_id, x0, y0, x1, y1``, every true nodule in every frame
  where it is visible (a frame without a row for a nodule is a frame without it);
- ``pred``: ``video, frame, track_id, x0, y0, x1, y1``, every box of every predicted track.

Either may be a pandas DataFrame with these columns (others are ignored), a mapping of
column arrays, or an ``(N, 7)`` array with the columns in this order. Object and track ids
are unique within a video only: every function keys them by ``(video, id)``. An id may
appear once per frame. A predicted box *matches* a true box of the same video and frame when
their IoU is at least ``iou`` (0.5, the usual MOT threshold).

Three views of the same tables:

- :func:`frame_scores`: detection quality, identities ignored. Each frame's predicted and
  true boxes are paired one to one (Hungarian: the most pairs with ``IoU >= iou``, then the
  highest total IoU); recall is the share of true boxes paired, precision the share of
  predicted boxes.
- :func:`purity`: does a track stay on one nodule? For each track, the share of its frames
  whose box matches its most frequent true object. Matching here is not one to one: a track
  duplicating another on the same nodule is pure (its cost shows in precision and IDP).
- :func:`identity_scores`: IDF1, IDP and IDR (Ristani et al., ECCV 2016 workshops: one
  global one-to-one assignment of tracks to objects, scored over all frames), identity
  switches and MOTA (CLEAR MOT, Bernardin and Stiefelhagen 2008), from py-motmetrics.

A score that is undefined for its input (recall without true boxes, precision without
predicted boxes, ...) is NaN with a :class:`~usv_ray.evaluate.metrics.MetricWarning`, as in
``usv_ray.evaluate.metrics``; bad input (missing columns, non-finite boxes, an id twice in a
frame) raises ``ValueError``.

Box IoU is computed here rather than taken from ``usv_ray.detect.track``, so the evaluation
shares no code with the tracker it scores.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from usv_ray.boxes import box_iou
from usv_ray.evaluate.metrics import MetricWarning

__all__ = ["frame_scores", "identity_scores", "purity"]

BOX_COLUMNS = ["x0", "y0", "x1", "y1"]


@dataclass(frozen=True)
class _Boxes:
    """One validated input table as arrays; row ``i`` of each is box ``i``."""

    table: pd.DataFrame  # video, frame, id column, x0..y1; index 0..N-1
    boxes: np.ndarray  # (N, 4) float64 x0, y0, x1, y1
    frames: np.ndarray  # (N,) int64
    videos: np.ndarray  # (N,) int64 video code, shared by truth and pred
    keys: np.ndarray  # (N,) int64 code of (video, id), 0..K-1 in order of first appearance


def _table(rows: Any, id_column: str, name: str) -> pd.DataFrame:
    """``rows`` as a DataFrame of the columns ``video, frame, <id_column>, x0..y1``."""
    columns = ["video", "frame", id_column, *BOX_COLUMNS]
    if isinstance(rows, pd.DataFrame | Mapping):
        table = pd.DataFrame(rows)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"{name} lacks the columns {missing}; it needs {columns}")
        return table[columns].reset_index(drop=True)
    array = np.asarray(rows, dtype=object)
    if array.size == 0:
        array = array.reshape(0, len(columns))
    if array.ndim != 2 or array.shape[1] != len(columns):
        raise ValueError(
            f"{name} as an array must be (N, {len(columns)}) with columns {columns}, "
            f"got shape {array.shape}"
        )
    return pd.DataFrame(array, columns=columns)


def _validated(rows: Any, id_column: str, name: str) -> pd.DataFrame:
    """The table of ``rows`` with float boxes and integer frames; ValueError naming a problem."""
    table = _table(rows, id_column, name)
    if table[["video", id_column]].isna().any().any():
        raise ValueError(f"{name} has missing videos or {id_column}s")
    try:
        boxes = table[BOX_COLUMNS].to_numpy(dtype=np.float64)  # (N, 4)
        frames = table["frame"].to_numpy(dtype=np.float64)  # (N,)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} boxes and frames must be numbers: {error}") from None
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} boxes must be finite, found NaN or inf")
    if not (np.isfinite(frames).all() and (frames == np.round(frames)).all()):
        raise ValueError(f"{name} frames must be integers")
    table[BOX_COLUMNS] = boxes
    table["frame"] = frames.astype(np.int64)
    repeated = table.duplicated(["video", "frame", id_column])
    if repeated.any():
        first = table[repeated].iloc[0]
        raise ValueError(
            f"{name} has {int(repeated.sum())} repeated boxes: {id_column} "
            f"{first[id_column]!r} twice in frame {first['frame']} of video {first['video']!r}"
        )
    return table


def _inputs(truth: Any, pred: Any) -> tuple[_Boxes, _Boxes]:
    """Validated ``(truth, pred)``; video codes 0..V-1 in order of first appearance, truth
    first, are shared by both."""
    truth_table = _validated(truth, "object_id", "truth")
    pred_table = _validated(pred, "track_id", "pred")
    video_codes, _ = pd.factorize(pd.concat([truth_table["video"], pred_table["video"]]))
    truth_videos = video_codes[: len(truth_table)].astype(np.int64)
    pred_videos = video_codes[len(truth_table) :].astype(np.int64)

    def boxes(table: pd.DataFrame, videos: np.ndarray, id_column: str) -> _Boxes:
        keys, _ = pd.factorize(pd.MultiIndex.from_arrays([videos, table[id_column]]))
        return _Boxes(
            table,
            table[BOX_COLUMNS].to_numpy(),
            table["frame"].to_numpy(),
            videos,
            np.asarray(keys, dtype=np.int64),
        )

    return (
        boxes(truth_table, truth_videos, "object_id"),
        boxes(pred_table, pred_videos, "track_id"),
    )


def _frames(truth: _Boxes, pred: _Boxes) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(video code, frame, truth rows, pred rows)`` of every frame with a box, by video
    then frame (motmetrics needs each video's frames in order)."""
    n_truth = len(truth.frames)
    if n_truth + len(pred.frames) == 0:
        return
    videos = np.r_[truth.videos, pred.videos]  # (N + M,)
    frames = np.r_[truth.frames, pred.frames]  # (N + M,)
    order = np.lexsort((frames, videos))  # (N + M,) rows by video, then frame
    videos, frames = videos[order], frames[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(videos) != 0) | (np.diff(frames) != 0)])
    ends = np.r_[starts[1:], order.size]
    for start, end in zip(starts, ends, strict=True):
        rows = order[start:end]
        is_truth = rows < n_truth
        yield int(videos[start]), int(frames[start]), rows[is_truth], rows[~is_truth] - n_truth


def _one_to_one(iou: np.ndarray, threshold: float) -> int:
    """Number of pairs in a one-to-one matching of the rows and columns of ``iou`` (N, M)
    with the most pairs at ``IoU >= threshold`` (ties: the highest total IoU)."""
    allowed = iou >= threshold  # (N, M)
    if not allowed.any():
        return 0
    # A disallowed pair costs more than any set of allowed ones can save (each saves < 1),
    # so the assignment first minimises the disallowed pairs it is forced to make.
    cost = np.where(allowed, 1.0 - iou, float(min(iou.shape) + 1))
    rows, cols = linear_sum_assignment(cost)
    return int(allowed[rows, cols].sum())


def _check_iou(iou: float) -> float:
    iou = float(iou)
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    return iou


def _ratio(numerator: float, denominator: float, what: str) -> float:
    if denominator == 0:
        # stacklevel 3: the warning points at the caller of the public function
        warnings.warn(f"{what}; returning NaN", MetricWarning, stacklevel=3)
        return float("nan")
    return numerator / denominator


def frame_scores(truth: Any, pred: Any, iou: float = 0.5) -> dict[str, float]:
    """Frame-level recall and precision of the predicted boxes, identities ignored.

    Args:
        truth: true boxes, ``video, frame, object_id, x0, y0, x1, y1`` (module docstring).
        pred: predicted boxes, ``video, frame, track_id, x0, y0, x1, y1``.
        iou: least IoU of a matching pair.

    Returns:
        ``recall`` (matched / true_boxes) and ``precision`` (matched / pred_boxes), NaN
        with a ``MetricWarning`` without true or predicted boxes; the counts ``matched``,
        ``true_boxes`` and ``pred_boxes``.
    """
    threshold = _check_iou(iou)
    truth_boxes, pred_boxes = _inputs(truth, pred)
    matched = 0
    for _, _, truth_rows, pred_rows in _frames(truth_boxes, pred_boxes):
        if truth_rows.size and pred_rows.size:
            frame_iou = box_iou(truth_boxes.boxes[truth_rows], pred_boxes.boxes[pred_rows])
            matched += _one_to_one(frame_iou, threshold)
    n_true, n_pred = len(truth_boxes.frames), len(pred_boxes.frames)
    return {
        "recall": _ratio(matched, n_true, "frame recall is undefined without true boxes"),
        "precision": _ratio(
            matched, n_pred, "frame precision is undefined without predicted boxes"
        ),
        "matched": matched,
        "true_boxes": n_true,
        "pred_boxes": n_pred,
    }


def purity(truth: Any, pred: Any, iou: float = 0.5) -> tuple[float, pd.DataFrame]:
    """Mean over predicted tracks of the share of a track's frames on its main true object.

    A track's main object is the true object its boxes match (``IoU >= iou``) in the most
    frames (ties: the object seen first); a track that never matches has purity 0. A track
    that jumps from one nodule to another halfway has purity 0.5.

    Args: as :func:`frame_scores`.

    Returns:
        The mean purity (NaN with a ``MetricWarning`` without predicted tracks), and one row
        per track, by video then track id in order of first appearance: ``video``,
        ``track_id``, ``frames`` (boxes of the track), ``object_id`` (its main object, None
        if it matches none), ``matched_frames`` (frames on it) and ``purity``.
    """
    threshold = _check_iou(iou)
    truth_boxes, pred_boxes = _inputs(truth, pred)
    pairs = []  # ((P,) truth rows, (P,) pred rows) of every matching pair
    for _, _, truth_rows, pred_rows in _frames(truth_boxes, pred_boxes):
        if truth_rows.size and pred_rows.size:
            frame_iou = box_iou(truth_boxes.boxes[truth_rows], pred_boxes.boxes[pred_rows])
            t, p = np.nonzero(frame_iou >= threshold)
            pairs.append((truth_rows[t], pred_rows[p]))
    truth_rows = np.concatenate([t for t, _ in pairs] + [np.empty(0, np.int64)])
    pred_rows = np.concatenate([p for _, p in pairs] + [np.empty(0, np.int64)])

    # (track, object) cells with their frame counts; one box per id and frame, so each
    # matching pair is one frame of the cell
    cells = pd.DataFrame(
        {"track": pred_boxes.keys[pred_rows], "object": truth_boxes.keys[truth_rows]}
    )
    counts = cells.value_counts().reset_index(name="matched_frames")
    main = counts.sort_values(
        ["track", "matched_frames", "object"], ascending=[True, False, True]
    ).drop_duplicates("track")  # (tracks with a match, 3) the main object of each

    n_tracks = int(pred_boxes.keys.max()) + 1 if pred_boxes.keys.size else 0
    first_row = np.unique(pred_boxes.keys, return_index=True)[1]  # (K,) in key order
    object_ids = truth_boxes.table["object_id"].to_numpy()
    first_object_row = np.unique(truth_boxes.keys, return_index=True)[1]  # (O,)
    main_object = np.full(n_tracks, None, dtype=object)
    main_object[main["track"].to_numpy()] = object_ids[first_object_row[main["object"].to_numpy()]]
    matched_frames = np.zeros(n_tracks, dtype=np.int64)
    matched_frames[main["track"].to_numpy()] = main["matched_frames"].to_numpy()
    frames = np.bincount(pred_boxes.keys, minlength=n_tracks)
    per_track = pd.DataFrame(
        {
            "video": pred_boxes.table["video"].to_numpy()[first_row],
            "track_id": pred_boxes.table["track_id"].to_numpy()[first_row],
            "frames": frames,
            "object_id": main_object,
            "matched_frames": matched_frames,
            "purity": matched_frames / frames,
        }
    )
    per_track = per_track.iloc[np.argsort(pred_boxes.videos[first_row], kind="stable")]
    per_track = per_track.reset_index(drop=True)
    if n_tracks == 0:
        return _ratio(0, 0, "purity is undefined without predicted tracks"), per_track
    return float(per_track["purity"].mean()), per_track


IDENTITY_RATIOS = ("idf1", "idp", "idr", "mota")  # motmetrics names
IDENTITY_COUNTS = (
    "num_switches",
    "num_unique_objects",
    "num_objects",
    "num_predictions",
    "num_misses",
    "num_false_positives",
)


def identity_scores(truth: Any, pred: Any, iou: float = 0.5) -> dict[str, float]:
    """Identity and CLEAR MOT scores of the tracks, from py-motmetrics, over all videos.

    One ``motmetrics.MOTAccumulator`` per video takes every frame with a true or predicted
    box, in frame order, with the distance ``1 - IoU`` of each true and predicted box, NaN
    (do not pair, in motmetrics' convention) where ``IoU < iou``: the matrix
    ``motmetrics.distances.iou_matrix(objs, hyps, max_iou=1 - iou)`` gives for boxes as
    ``x, y, width, height``. That function is not called because motmetrics 1.4.0 uses
    ``np.asfarray``, removed in NumPy 2.0. Ids go in as integer codes of ``(video, id)``,
    since motmetrics 1.4.0 stores them as floats. ``compute_many(...,
    generate_overall=True)`` then sums the counts over the videos and recomputes the
    ratios, so every score pools all frames of all videos.

    Args: as :func:`frame_scores`.

    Returns:
        ``idf1``, ``idp``, ``idr``, ``mota`` (NaN with a ``MetricWarning`` where undefined:
        IDR and MOTA without true boxes, IDP without predicted boxes, IDF1 without either),
        ``num_switches`` (motmetrics: times an object is matched to another track than the
        one it was last matched to), ``num_unique_objects`` (true nodules),
        ``num_unique_tracks`` (predicted tracks), and the box counts ``num_objects``,
        ``num_predictions``, ``num_misses``, ``num_false_positives``.

    Raises:
        ImportError: motmetrics is not installed.
    """
    import motmetrics as mm

    threshold = _check_iou(iou)
    truth_boxes, pred_boxes = _inputs(truth, pred)
    accumulators: dict[int, Any] = {}  # video code -> its MOTAccumulator
    for video, frame, truth_rows, pred_rows in _frames(truth_boxes, pred_boxes):
        frame_iou = box_iou(truth_boxes.boxes[truth_rows], pred_boxes.boxes[pred_rows])
        distance = np.where(frame_iou >= threshold, 1.0 - frame_iou, np.nan)  # (T, P)
        if video not in accumulators:
            accumulators[video] = mm.MOTAccumulator(auto_id=False)
        accumulators[video].update(
            truth_boxes.keys[truth_rows].tolist(),
            pred_boxes.keys[pred_rows].tolist(),
            distance,
            frameid=frame,
        )

    scores: dict[str, float] = dict.fromkeys(IDENTITY_RATIOS + IDENTITY_COUNTS, 0)
    if accumulators:  # else no box at all: every ratio is undefined below
        # motmetrics logs its timings at INFO on the root logger: not the product's news
        disabled = logging.root.manager.disable
        logging.disable(logging.INFO)
        try:
            summary = mm.metrics.create().compute_many(
                list(accumulators.values()),
                metrics=[*IDENTITY_RATIOS, *IDENTITY_COUNTS],
                names=[str(video) for video in accumulators],
                generate_overall=True,
            )
        finally:
            logging.disable(disabled)
        overall = summary.loc["OVERALL"]
        scores = {name: float(overall[name]) for name in IDENTITY_RATIOS}
        scores |= {name: int(overall[name]) for name in IDENTITY_COUNTS}
    n_true, n_pred = scores["num_objects"], scores["num_predictions"]
    # motmetrics divides quietly (0/0 gives NaN, MOTA without truth -inf): NaN and a warning
    for name, denominator, what in (
        ("idr", n_true, "IDR is undefined without true boxes"),
        ("mota", n_true, "MOTA is undefined without true boxes"),
        ("idp", n_pred, "IDP is undefined without predicted boxes"),
        ("idf1", n_true + n_pred, "IDF1 is undefined without true or predicted boxes"),
    ):
        if denominator == 0:
            scores[name] = _ratio(0, 0, what)
    scores["num_unique_tracks"] = int(np.unique(pred_boxes.keys).size)
    return scores
