"""Tracking scores on hand-built videos: a perfect tracker, an identity swap, a track that
jumps nodules, missed frames; the identity scores cross-checked with motmetrics' own IoU."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from usv_ray.evaluate.metrics import MetricWarning
from usv_ray.evaluate.tracking import frame_scores, identity_scores, purity

TRUTH = ["video", "frame", "object_id", "x0", "y0", "x1", "y1"]
PRED = ["video", "frame", "track_id", "x0", "y0", "x1", "y1"]


def square(x: float, y: float = 0.0, side: float = 10.0) -> list[float]:
    """Box ``x0, y0, x1, y1`` of a square with its top-left corner at ``(x, y)``."""
    return [x, y, x + side, y + side]


def table(rows, columns) -> pd.DataFrame:
    """A box table from rows ``(video, frame, id, box)``."""
    return pd.DataFrame([[v, f, i, *box] for v, f, i, box in rows], columns=columns)


def two_nodules(video="v", frames=range(6)) -> pd.DataFrame:
    """Nodule 1 drifting right along y=0, nodule 2 drifting left along y=50."""
    rows = []
    for f in frames:
        rows += [(video, f, 1, square(2 * f)), (video, f, 2, square(40 - 2 * f, 50))]
    return table(rows, TRUTH)


def as_pred(truth: pd.DataFrame, track_of: dict) -> pd.DataFrame:
    """The true boxes as predictions, the track of each row ``track_of[(frame, object)]``."""
    pred = truth.rename(columns={"object_id": "track_id"})
    pred["track_id"] = [track_of[(f, o)] for f, o in zip(truth.frame, truth.object_id, strict=True)]
    return pred


def needs_motmetrics():
    return pytest.importorskip("motmetrics")


# --- frame_scores -------------------------------------------------------------------------


def test_perfect_tracker_frame_scores_and_purity():
    truth = pd.concat([two_nodules("a"), two_nodules("b")], ignore_index=True)
    pred = truth.rename(columns={"object_id": "track_id"})  # ids reused in both videos
    assert frame_scores(truth, pred) == {
        "recall": 1.0,
        "precision": 1.0,
        "matched": 24,
        "true_boxes": 24,
        "pred_boxes": 24,
    }
    mean, per_track = purity(truth, pred)
    assert mean == 1.0
    assert per_track[["video", "track_id"]].values.tolist() == [
        ["a", 1],
        ["a", 2],
        ["b", 1],
        ["b", 2],
    ]
    assert per_track["object_id"].tolist() == [1, 2, 1, 2]
    assert (per_track["frames"] == 6).all() and (per_track["matched_frames"] == 6).all()


def test_missed_frame_and_a_misplaced_box():
    truth = two_nodules()
    pred = as_pred(truth, {(f, o): o for f in range(6) for o in (1, 2)})
    pred = pred.drop(index=pred.index[(pred.frame == 2) & (pred.track_id == 1)])  # missed
    pred.loc[(pred.frame == 4) & (pred.track_id == 2), ["x0", "x1"]] += 6  # IoU 4/16
    scores = frame_scores(truth, pred)
    assert (scores["matched"], scores["true_boxes"], scores["pred_boxes"]) == (10, 12, 11)
    assert scores["recall"] == 10 / 12 and scores["precision"] == 10 / 11
    assert frame_scores(truth, pred, iou=0.25)["matched"] == 11


# (truth box, predicted box, iou threshold, matched)
THRESHOLD_CASES = [
    ([0, 0, 2, 2], [0, 0, 2, 1], 0.5, 1),  # IoU exactly 0.5 counts
    ([0, 0, 2, 2], [0, 0, 2, 1], 0.51, 0),
    ([0, 0, 2, 2], [1, 0, 3, 2], 0.3, 1),  # IoU 1/3
    ([0, 0, 2, 2], [1, 0, 3, 2], 0.34, 0),
    ([0, 0, 2, 2], [2, 2, 4, 4], 0.01, 0),  # touching corners
]


@pytest.mark.parametrize(("true_box", "pred_box", "iou", "matched"), THRESHOLD_CASES)
def test_iou_threshold(true_box, pred_box, iou, matched):
    truth = table([("v", 0, 1, true_box)], TRUTH)
    pred = table([("v", 0, 1, pred_box)], PRED)
    assert frame_scores(truth, pred, iou=iou)["matched"] == matched


def test_one_to_one_matching_is_optimal_not_greedy():
    # predicted box 1 overlaps both true boxes, best with true box 1 (IoU 0.82); greedy would
    # pair them and leave true box 2 unmatched, the assignment pairs both
    truth = table([("v", 0, 1, [0, 0, 10, 10]), ("v", 0, 2, [4, 0, 14, 10])], TRUTH)
    pred = table([("v", 0, 1, [1, 0, 11, 10]), ("v", 0, 2, [0, 0, 10, 10])], PRED)
    assert frame_scores(truth, pred)["matched"] == 2
    # two predictions on one true box: one match, the other a false positive
    pred = table([("v", 0, 1, [0, 0, 10, 10]), ("v", 0, 2, [0, 0, 10, 10])], PRED)
    truth = table([("v", 0, 1, [0, 0, 10, 10])], TRUTH)
    assert frame_scores(truth, pred)["precision"] == 0.5


def test_boxes_of_other_videos_and_frames_never_match():
    truth = table([("a", 0, 1, square(0)), ("a", 1, 1, square(0))], TRUTH)
    pred = table([("b", 0, 1, square(0)), ("a", 2, 1, square(0))], PRED)
    assert frame_scores(truth, pred)["matched"] == 0


# --- purity ---------------------------------------------------------------------------------


def test_track_covering_two_nodules_in_sequence_has_purity_half():
    # nodule 1 visible in frames 0-3, nodule 2 (elsewhere) in frames 4-7; one track on both
    truth = table(
        [("v", f, 1, square(0)) for f in range(4)]
        + [("v", f, 2, square(100)) for f in range(4, 8)],
        TRUTH,
    )
    pred = as_pred(truth, {(f, o): 9 for f in range(8) for o in (1, 2)})
    mean, per_track = purity(truth, pred)
    assert mean == 0.5
    row = per_track.iloc[0]
    assert (row.track_id, row.frames, row.matched_frames, row.purity) == (9, 8, 4, 0.5)
    assert row.object_id == 1  # a tie of 4 frames each: the nodule seen first
    assert frame_scores(truth, pred)["recall"] == 1.0  # identities do not matter here


def test_purity_counts_unmatched_frames_and_tracks():
    truth = table([("v", f, 1, square(0)) for f in range(4)], TRUTH)
    pred = table(
        [("v", f, 5, square(0)) for f in range(3)]
        + [("v", 3, 5, square(50))]  # off the nodule
        + [("v", f, 6, square(80)) for f in range(2)],  # never on a nodule
        PRED,
    )
    mean, per_track = purity(truth, pred)
    assert per_track["purity"].tolist() == [0.75, 0.0]
    assert per_track["object_id"].tolist() == [1, None]
    assert mean == pytest.approx(0.375)


def test_purity_keys_ids_by_video():
    # track 7 of video a is on nodule 1, track 7 of video b on nodule 2: two pure tracks,
    # not one track half on each nodule
    truth = table(
        [("a", f, 1, square(0)) for f in range(3)] + [("b", f, 2, square(0)) for f in range(3)],
        TRUTH,
    )
    pred = truth.rename(columns={"object_id": "track_id"}).assign(track_id=7)
    mean, per_track = purity(truth, pred)
    assert mean == 1.0 and len(per_track) == 2
    assert per_track["object_id"].tolist() == [1, 2]


def test_a_duplicate_track_is_pure():
    truth = table([("v", f, 1, square(0)) for f in range(3)], TRUTH)
    pred = table([("v", f, t, square(0)) for f in range(3) for t in (1, 2)], PRED)
    assert purity(truth, pred)[0] == 1.0
    assert frame_scores(truth, pred)["precision"] == 0.5


# --- identity_scores ------------------------------------------------------------------------


def test_perfect_tracker_identity_scores():
    needs_motmetrics()
    truth = pd.concat([two_nodules("a"), two_nodules("b")], ignore_index=True)
    pred = truth.rename(columns={"object_id": "track_id"})
    scores = identity_scores(truth, pred)
    assert (scores["idf1"], scores["idp"], scores["idr"], scores["mota"]) == (1, 1, 1, 1)
    assert scores["num_switches"] == 0
    assert (scores["num_unique_objects"], scores["num_unique_tracks"]) == (4, 4)
    assert (scores["num_objects"], scores["num_predictions"]) == (24, 24)
    assert (scores["num_misses"], scores["num_false_positives"]) == (0, 0)


def swap_at_frame_4():
    """Two nodules over frames 0-5; tracks 1 and 2 follow them, then swap from frame 4."""
    truth = two_nodules()
    track_of = {(f, o): o if f < 4 else 3 - o for f in range(6) for o in (1, 2)}
    return truth, as_pred(truth, track_of)


def test_identity_swap_midway():
    needs_motmetrics()
    truth, pred = swap_at_frame_4()
    scores = identity_scores(truth, pred)
    # motmetrics counts a switch each time an object is matched to another track than
    # before: both nodules switch at frame 4
    assert scores["num_switches"] == 2
    # IDF1: the best one-to-one track-object assignment keeps 4 of each 6 frames
    assert scores["idf1"] == pytest.approx(8 / 12)
    assert scores["idp"] == pytest.approx(8 / 12) and scores["idr"] == pytest.approx(8 / 12)
    assert scores["mota"] == pytest.approx(1 - 2 / 12)  # no miss, no false positive
    assert frame_scores(truth, pred)["recall"] == 1.0
    assert purity(truth, pred)[0] == pytest.approx(4 / 6)


def test_identity_scores_do_not_depend_on_row_order():
    needs_motmetrics()
    truth, pred = swap_at_frame_4()
    expected = identity_scores(truth, pred)
    rng = np.random.default_rng(0)
    shuffled_truth = truth.iloc[rng.permutation(len(truth))]
    shuffled_pred = pred.iloc[rng.permutation(len(pred))]
    assert identity_scores(shuffled_truth, shuffled_pred) == expected


def test_track_jumping_nodules_is_no_switch_but_halves_idf1():
    needs_motmetrics()
    truth = table(
        [("v", f, 1, square(0)) for f in range(4)]
        + [("v", f, 2, square(100)) for f in range(4, 8)],
        TRUTH,
    )
    pred = as_pred(truth, {(f, o): 9 for f in range(8) for o in (1, 2)})
    scores = identity_scores(truth, pred)
    # an ID switch is an object changing track; here a track changes object: no switch
    assert scores["num_switches"] == 0
    assert scores["idf1"] == pytest.approx(0.5)
    assert scores["mota"] == 1.0


def test_lost_and_restarted_track_is_one_switch():
    needs_motmetrics()
    truth = table([("v", f, 1, square(0)) for f in range(6)], TRUTH)
    pred = table(
        [("v", f, 1, square(0)) for f in (0, 1, 2)] + [("v", f, 2, square(0)) for f in (4, 5)],
        PRED,
    )
    scores = identity_scores(truth, pred)
    assert scores["num_switches"] == 1 and scores["num_misses"] == 1
    assert scores["idr"] == pytest.approx(3 / 6) and scores["idp"] == pytest.approx(3 / 5)
    assert scores["num_unique_tracks"] == 2


def test_identity_scores_match_motmetrics_iou_matrix_by_hand():
    # the scores of random noisy tracks, against accumulators fed motmetrics' own IoU
    # (its iou_matrix, x, y, w, h boxes, written out: iou_matrix needs numpy < 2)
    mm = needs_motmetrics()
    rng = np.random.default_rng(3)
    truth_rows, pred_rows = [], []
    for video in ("a", "b"):
        for f in range(25):
            for obj in range(3):
                if rng.random() < 0.9:
                    x, y = 30.0 * obj + 0.5 * f, 10.0 * obj
                    truth_rows.append((video, f, obj, square(x, y, 20)))
                    if rng.random() < 0.85:
                        track = obj if f < 12 or obj else 7  # object 0 changes track
                        box = square(x + rng.normal(0, 3), y + rng.normal(0, 3), 20)
                        pred_rows.append((video, f, track, box))
            if rng.random() < 0.3:  # clutter
                pred_rows.append((video, f, 100 + f, square(*rng.uniform(0, 90, 2), 20)))
    truth, pred = table(truth_rows, TRUTH), table(pred_rows, PRED)
    threshold = 0.5

    accumulators = []
    for video in ("a", "b"):
        accumulator = mm.MOTAccumulator(auto_id=False)
        for f in range(25):
            t = truth[(truth.video == video) & (truth.frame == f)]
            p = pred[(pred.video == video) & (pred.frame == f)]
            objs = np.array(t[["x0", "y0", "x1", "y1"]], dtype=float)
            hyps = np.array(p[["x0", "y0", "x1", "y1"]], dtype=float)
            objs[:, 2:] -= objs[:, :2]  # x, y, w, h
            hyps[:, 2:] -= hyps[:, :2]
            distance = 1 - mm.distances.boxiou(objs[:, None], hyps[None, :])
            distance = np.where(distance > 1 - threshold, np.nan, distance)
            accumulator.update(t.object_id.tolist(), p.track_id.tolist(), distance, frameid=f)
        accumulators.append(accumulator)
    names = ["idf1", "idp", "idr", "mota", "num_switches", "num_misses"]
    expected = mm.metrics.create().compute_many(
        accumulators, metrics=names, names=["a", "b"], generate_overall=True
    )
    got = identity_scores(truth, pred, iou=threshold)
    for name in names:
        assert got[name] == pytest.approx(expected.loc["OVERALL", name]), name
    assert got["num_switches"] > 0 and 0 < got["idf1"] < 1


# --- inputs and undefined scores -------------------------------------------------------------


def test_arrays_and_mappings_as_input():
    truth, pred = swap_at_frame_4()
    expected = frame_scores(truth, pred)
    assert frame_scores(truth.to_numpy(), pred.to_numpy()) == expected
    assert frame_scores(truth.to_dict("list"), pred.to_dict("list")) == expected
    assert frame_scores(truth.assign(extra=1), pred) == expected  # other columns ignored
    assert purity(truth.to_numpy(), pred.values.tolist())[0] == purity(truth, pred)[0]


def test_empty_truth():
    pred = table([("v", 0, 1, square(0))], PRED)
    empty = pd.DataFrame(columns=TRUTH)
    with pytest.warns(MetricWarning, match="recall"):
        scores = frame_scores(empty, pred)
    assert math.isnan(scores["recall"]) and scores["precision"] == 0.0
    assert purity([], pred)[0] == 0.0  # a track on no nodule is defined, and impure


def test_empty_pred():
    truth = table([("v", 0, 1, square(0))], TRUTH)
    with pytest.warns(MetricWarning, match="precision"):
        scores = frame_scores(truth, [])
    assert math.isnan(scores["precision"]) and scores["recall"] == 0.0
    with pytest.warns(MetricWarning, match="purity"):
        mean, per_track = purity(truth, pd.DataFrame(columns=PRED))
    assert math.isnan(mean) and per_track.empty
    assert list(per_track.columns) == [
        "video",
        "track_id",
        "frames",
        "object_id",
        "matched_frames",
        "purity",
    ]


def test_nothing_at_all():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = frame_scores([], [])
    assert math.isnan(scores["recall"]) and math.isnan(scores["precision"])
    assert sum(issubclass(w.category, MetricWarning) for w in caught) == 2


@pytest.mark.parametrize(
    ("truth_rows", "pred_rows", "nan", "values"),
    [
        ([], [], {"idf1", "idp", "idr", "mota"}, {"num_unique_tracks": 0}),
        ([], [("v", 0, 1, square(0))], {"idr", "mota"}, {"idp": 0.0, "idf1": 0.0}),
        ([("v", 0, 1, square(0))], [], {"idp"}, {"idr": 0.0, "idf1": 0.0, "mota": 0.0}),
    ],
)
def test_identity_scores_of_empty_inputs(truth_rows, pred_rows, nan, values):
    needs_motmetrics()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = identity_scores(table(truth_rows, TRUTH), table(pred_rows, PRED))
    assert {name for name, value in scores.items() if math.isnan(value)} == nan
    assert sum(issubclass(w.category, MetricWarning) for w in caught) == len(nan)
    assert {name: scores[name] for name in values} == values
    assert scores["num_switches"] == 0


@pytest.mark.parametrize(
    ("truth", "pred", "match"),
    [
        (pd.DataFrame(columns=TRUTH[:-1]), [], "truth lacks the columns"),
        ([], pd.DataFrame(columns=TRUTH), "pred lacks the columns"),  # object_id, not track_id
        (np.zeros((2, 6)), [], r"\(N, 7\)"),
        ([["v", 0, 1, 0, 0, np.nan, 1]], [], "finite"),
        ([["v", 0.5, 1, 0, 0, 1, 1]], [], "integers"),
        ([["v", 0, 1, 0, 0, "x", 1]], [], "numbers"),
        ([["v", 0, None, 0, 0, 1, 1]], [], "missing"),
        ([], [["v", 3, 1, 0, 0, 1, 1], ["v", 3, 1, 5, 5, 6, 6]], "track_id 1 twice in frame 3"),
    ],
)
def test_bad_input_is_a_clear_error(truth, pred, match):
    with pytest.raises(ValueError, match=match):
        frame_scores(truth, pred)


@pytest.mark.parametrize("iou", [0.0, 1.5, -0.1])
def test_bad_threshold(iou):
    with pytest.raises(ValueError, match="iou"):
        purity([], [], iou=iou)


def test_import_needs_neither_torch_nor_motmetrics():
    import subprocess
    import sys

    code = (
        "import sys, usv_ray.evaluate.tracking\n"
        "print(sorted(m for m in ('torch', 'motmetrics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
