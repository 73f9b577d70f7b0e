"""The index against the truth: pairs by source, the nodule count, uids kept tonight and
wrong merges, on an index built by hand (two patients, each back tonight)."""

import math

import numpy as np
import pandas as pd

from usv_ray.score.keyed import KeyedTruth
from usv_ray.score.linking import f_difference, linking_quality

BOX = [10.0, 10.0, 30.0, 30.0]


def _case() -> tuple[pd.DataFrame, pd.DataFrame, KeyedTruth]:
    # A: n1 in t1, t2 (archive) and t4 (tonight, automatic); n2 in t3.
    # B: m1 in t5, t8; m2 in t6 and t7 (tonight, automatic), which the index put with m1.
    annotated = [("t1", "a1", "A", "n1"), ("t2", "a1", "A", "n1"), ("t3", "a1", "A", "n2")]
    annotated += [("t5", "b1", "B", "m1"), ("t8", "b1", "B", "m1"), ("t6", "b1", "B", "m2")]
    rows = [
        {"tracklet_id": t, "video_id": v, "patient_key": p, "source": "annotated",
         "nodule_id": n, "box_frames": [0], "boxes": [BOX]}
        for t, v, p, n in annotated
    ] + [
        {"tracklet_id": t, "video_id": v, "patient_key": p, "source": "automatic",
         "nodule_id": None, "box_frames": [0, 1], "boxes": [BOX, BOX]}
        for t, v, p in (("t4", "a2", "A"), ("t7", "b2", "B"))
    ]  # fmt: skip
    boxes = pd.DataFrame(
        [
            {"video_id": v, "nodule_id": n, "frame": f, "x0": 10, "y0": 10, "x1": 30, "y1": 30}
            for v, n in (("a1", "n1"), ("a1", "n2"), ("a2", "n1"), ("b1", "m1"), ("b1", "m2"),
                         ("b2", "m2"))
            for f in (0, 1)
        ]
    )  # fmt: skip
    nodules = pd.DataFrame(
        {
            "patient_key": ["A", "A", "B", "B"],
            "nodule_uid": ["U1", "U2", "V1", "V2"],
            "tracklet_ids": [["t1", "t2", "t4"], ["t3"], ["t5", "t7", "t8"], ["t6"]],
        }
    )
    return nodules, pd.DataFrame(rows), KeyedTruth(pd.DataFrame(), pd.DataFrame(), boxes)


def test_pairs_by_source_count_within_patients():
    nodules, tracklets, truth = _case()
    pairs = linking_quality(nodules, tracklets, truth, n_boot=200).pairs.set_index("tracklets")
    # all: A 3 true pairs, all joined; B t5-t8 joined, t6-t7 split, t7 joined to two of m1
    assert pairs.loc["all", "pairs"] == 5 and pairs.loc["all", "on_a_nodule"] == 8
    assert math.isclose(pairs.loc["all", "precision"], 100 * 4 / 6)
    assert math.isclose(pairs.loc["all", "recall"], 100 * 4 / 5)
    assert math.isclose(pairs.loc["all", "f"], 100 * 8 / 11)
    low, high = map(float, pairs.loc["all", "f_ci"].split("-"))
    assert low <= 100 * 8 / 11 <= high  # over two patients: 54.5 (B twice) to 100 (A twice)
    assert pairs.loc["annotated", "precision"] == pairs.loc["annotated", "recall"] == 100
    assert pairs.loc["automatic", "pairs"] == 0 and np.isnan(pairs.loc["automatic", "f"])


def test_tonight_a_nodule_kept_and_one_merged():
    nodules, tracklets, truth = _case()
    tonight = {"a2", "b2"}
    linking = linking_quality(nodules, tracklets, truth, tonight=tonight, n_boot=200)
    figures = linking.nodules.set_index("figure")
    assert figures["count"].tolist() == ["2 of 2", "1 of 2", "1 of 2"]
    assert figures["share"].tolist() == [100, 50, 50]
    assert linking_quality(nodules, tracklets, truth, n_boot=50).nodules.shape[0] == 1


def test_a_missed_nodule_makes_the_count_wrong():
    nodules, tracklets, truth = _case()
    extra = pd.DataFrame(
        [{"video_id": "a1", "nodule_id": "n3", "frame": 0, "x0": 50, "y0": 50, "x1": 60, "y1": 60}]
    )
    truth = KeyedTruth(truth.videos, truth.nodules, pd.concat([truth.boxes, extra]))
    figures = linking_quality(nodules, tracklets, truth, n_boot=50).nodules
    assert figures["count"].tolist() == ["1 of 2"]  # A shows 3 nodules, the index lists 2


def test_f_difference_is_paired_over_patients():
    same = pd.Series({"A": (3, 0, 0), "B": (1, 2, 1)})
    nothing = {"f_difference": 0.0, "f_difference_low": 0.0, "f_difference_high": 0.0}
    assert f_difference(same, same, n_boot=100) == nothing
    worse = pd.Series({"A": (3, 0, 0), "B": (0, 3, 2)})
    gap = f_difference(same, worse, n_boot=200)
    assert math.isclose(gap["f_difference"], 100 * (6 / 11 - 8 / 11))
    assert gap["f_difference_low"] <= gap["f_difference"] <= gap["f_difference_high"] <= 0
