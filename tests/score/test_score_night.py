"""Scoring the night: predictions by the member that never saw the patient, each nodule's
truth by its tracklets' majority, and the per-nodule AUC of each way of scoring."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from usv_ray.config import IngestConfig
from usv_ray.ingest.manifest import read_manifest
from usv_ray.privacy import keyed_hash
from usv_ray.score.keyed import keyed_truth
from usv_ray.score.night import nodule_truth, oof_probs, scoring_comparison
from usv_ray.synth.truth import Truth

PLATT = {"method": "platt", "params": {"a": 1.0, "b": 0.0}, "n_videos": 4, "n_positive": 2}


def _record(folds, calibrator=PLATT):
    return {"members": [{"fold": k} for k in folds], "calibrator": calibrator}


def test_each_patient_is_read_by_the_member_that_held_it_out():
    rows = pd.DataFrame(
        {
            "patient_key": ["a", "b", "new"],
            "prob": [0.5, 0.5, 0.42],  # the ensemble's calibrated P
            "member_probs": [[0.1, 0.9, 0.5], [0.2, 0.8, 0.5], [0.3, 0.3, 0.3]],
        }
    )
    folds = pd.DataFrame({"patient_key": ["a", "b"], "fold": [1, 0]})
    # members fold 0, fold 1, and the final model (-1): a is read by fold 1's, b by fold 0's
    probs = oof_probs(rows, _record([0, 1, -1]), folds)
    assert probs == pytest.approx([0.9, 0.2, 0.42])  # Platt a=1, b=0 is the identity
    squeezed = {**PLATT, "params": {"a": 0.0, "b": 0.0}}  # every P to 0.5
    assert oof_probs(rows, _record([0, 1], squeezed), folds) == pytest.approx([0.5, 0.5, 0.42])


def test_a_nodule_is_the_true_nodule_most_of_its_tracklets_show():
    nodules = pd.DataFrame(
        {"nodule_uid": ["u1", "u2", "u3"], "tracklet_ids": [["t1", "t2", "t3"], ["t4"], ["t5"]]}
    )
    tracklets = pd.DataFrame(
        {"tracklet_id": ["t1", "t2", "t3", "t4", "t5"], "nodule_id": ["m", "m", "b", "b", None]}
    )
    truth = pd.DataFrame({"nodule_id": ["m", "b"], "malignant": [True, False]})
    result = nodule_truth(nodules, tracklets, truth)
    assert result["u1"] == 1.0 and result["u2"] == 0.0 and np.isnan(result["u3"])


def test_the_comparison_pins_each_auc_and_the_paired_test():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 40)
    frame = pd.DataFrame(
        {
            "patient_key": [f"p{i // 2}" for i in range(40)],
            "truth": truth,
            "tracklets": np.clip(truth * 0.6 + rng.normal(0.2, 0.2, 40), 0, 1),
            "videos": rng.uniform(0, 1, 40),
        }
    )
    frame.loc[0, "videos"] = np.nan  # a nodule without a P is left out of both
    table = scoring_comparison({"all": frame})
    known = frame.dropna()
    for row in table.itertuples():
        expected = roc_auc_score(known["truth"], known[row.scoring])
        assert row.roc_auc == pytest.approx(100 * expected) and row.nodules == 39
    assert table["p_value"].nunique() == 1 and table["p_value"].iloc[0] < 0.05


def test_the_truth_is_keyed_as_ingest_keys_the_archive():
    videos = pd.DataFrame(
        {
            "video": ["videos/a.mp4"],
            "manifest": ["manifest.csv"],
            "batch": ["archive"],
            "patient_id": ["MRN1"],
            "study_id": ["2020-01-01"],
            "exam_date": ["2020-01-01"],
            "label": ["malignant"],
            "annotated": [True],
        }
    )
    appearances = pd.DataFrame(
        {
            "video": ["videos/a.mp4"],
            "batch": ["archive"],
            "patient_id": ["MRN1"],
            "nodule_id": ["n1"],
            "malignant": [True],
            "n_visible": [2],
        }
    )
    boxes = pd.DataFrame(
        {
            "video": ["videos/a.mp4"],
            "batch": ["archive"],
            "nodule_id": ["n1"],
            "frame": [0],
            "x0": [1],
            "y0": [2],
            "x1": [3],
            "y1": [4],
        }
    )
    key = b"k" * 16
    keyed = keyed_truth(Truth(0, videos, appearances, boxes), key)
    keyed_text = str(keyed.videos) + str(keyed.nodules) + str(keyed.boxes)
    assert "MRN1" not in keyed_text and "2020" not in keyed_text  # nor the exam date
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.csv"
        (Path(folder) / "videos").mkdir()
        (Path(folder) / "videos" / "a.mp4").write_bytes(b"x")
        manifest.write_text("video,patient_id,label\nvideos/a.mp4,MRN1,1\n")
        (task,), _, _ = read_manifest(manifest, key, IngestConfig())
    assert keyed.videos["video_id"][0] == task.video_id
    assert keyed.videos["patient_key"][0] == task.patient_key
    assert keyed.nodules["nodule_id"][0] == keyed_hash(key, "nodule", task.patient_key, "n1")
    assert keyed.boxes["video_id"][0] == task.video_id and keyed.videos["label"][0] == 1


def test_tracking_counts_the_nodules_of_videos_where_the_tracker_found_nothing():
    from usv_ray.score.keyed import KeyedTruth
    from usv_ray.score.tracks import tracking_quality

    boxes = pd.DataFrame(
        {
            "video_id": ["a"] * 4 + ["b"] * 4,
            "nodule_id": ["n1"] * 4 + ["n2"] * 4,
            "frame": [0, 1, 2, 3] * 2,
            "x0": [10] * 8,
            "y0": [10] * 8,
            "x1": [30] * 8,
            "y1": [30] * 8,
        }
    )
    truth = KeyedTruth(pd.DataFrame(), pd.DataFrame(), boxes)
    automatic = pd.DataFrame(
        {
            "video_id": ["a"],
            "tracklet_id": ["t1"],
            "box_frames": [[0, 1, 2, 3]],
            "boxes": [[[11.0, 10.0, 30.0, 31.0]] * 4],
        }
    )
    own, per_track = tracking_quality(truth, automatic)
    assert own["videos"] == 1 and own["frame_recall"] == 100 and own["purity"] == 100
    assert per_track["nodule_id"].tolist() == ["n1"]
    both, _ = tracking_quality(truth, automatic, {"a", "b"})  # b: a nodule nobody tracked
    assert both["videos"] == 2 and both["true_boxes"] == 8 and both["frame_recall"] == 50
    assert both["frame_precision"] == 100
