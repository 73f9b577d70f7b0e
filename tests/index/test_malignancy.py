"""Each nodule's malignancy pooled from the diagnoses, its evidence, and the follow-up
whose nodule turned suspicious."""

import numpy as np
import pandas as pd
import pytest

from usv_ray.index.malignancy import evidence, score_nodules

# two nodules of one patient: n1 seen in exam s1 (videos a, b) and again in s2 (video c);
# n2 only in s1, in video b beside n1
NODULES = pd.DataFrame(
    {
        "patient_key": ["p", "p"],
        "nodule_uid": ["n1", "n2"],
        "tracklet_ids": [["t1", "t2", "t3", "t4"], ["t5"]],
        "first_study": ["s1", "s1"],
        "last_study": ["s2", "s1"],
    }
)
TRACKLETS = pd.DataFrame(
    {
        "tracklet_id": ["t1", "t2", "t3", "t4", "t5"],
        "video_id": ["a", "b", "c", "c", "b"],
        "study_key": ["s1", "s1", "s2", "s2", "s1"],
    }
)


def test_evidence_counts_videos_and_exams():
    rows = evidence(NODULES, TRACKLETS)
    assert rows["n_videos"].tolist() == [3, 1] and rows["n_studies"].tolist() == [2, 1]
    assert rows["n_videos"].dtype == np.int32


@pytest.mark.parametrize(
    ("scoring", "scored", "expected"),
    [
        # tracklets: each its own P; n1 = mean(0.1, 0.3, 0.8, 0.6), first s1 (0.1, 0.3),
        # latest s2 (0.8, 0.6); n2 = its one tracklet
        (
            "tracklets",
            {"tracklet_id": ["t1", "t2", "t3", "t4", "t5"], "prob": [0.1, 0.3, 0.8, 0.6, 0.9]},
            {"n1": (0.45, 0.2, 0.7, True), "n2": (0.9, 0.9, 0.9, False)},
        ),
        # videos: a video counts once per nodule (c gives n1 two tracklets), and n2 shares
        # video b's P with n1
        (
            "videos",
            {"video_id": ["a", "b", "c"], "prob": [0.2, 0.6, 0.7]},
            {"n1": (0.5, 0.4, 0.7, True), "n2": (0.6, 0.6, 0.6, False)},
        ),
    ],
)
def test_a_nodule_pools_its_tracklets_or_videos(scoring, scored, expected):
    rows = score_nodules(NODULES, TRACKLETS, pd.DataFrame(scored), scoring, 0.5, "dx-1")
    for uid, (pooled, first, latest, turned) in expected.items():
        row = rows.set_index("nodule_uid").loc[uid]
        assert row["malignancy"] == pytest.approx(pooled, abs=1e-6)
        assert row["malignancy_first"] == pytest.approx(first, abs=1e-6)
        assert row["malignancy_latest"] == pytest.approx(latest, abs=1e-6)
        assert row["turned_suspicious"] is turned
        assert row["nodule_scoring"] == scoring and row["diagnosis_version"] == "dx-1"


def test_undiagnosed_tracklets_leave_the_nodule_unscored():
    scored = pd.DataFrame({"tracklet_id": ["t3"], "prob": [0.7]})
    rows = score_nodules(NODULES, TRACKLETS, scored, "tracklets", 0.5, "dx-1").set_index(
        "nodule_uid"
    )
    assert rows.loc["n1", "malignancy"] == pytest.approx(0.7)  # only what is diagnosed
    assert np.isnan(rows.loc["n1", "malignancy_first"]) and pd.isna(
        rows.loc["n1", "turned_suspicious"]
    )
    assert np.isnan(rows.loc["n2", "malignancy"]) and pd.isna(rows.loc["n2", "diagnosis_version"])
    with pytest.raises(ValueError, match="nodule scoring"):
        score_nodules(NODULES, TRACKLETS, scored, "frames", 0.5, "dx-1")


def test_an_archive_without_study_ids_is_one_exam():
    nodules = NODULES.assign(first_study=None, last_study=None)
    tracklets = TRACKLETS.assign(study_key=None)
    scored = pd.DataFrame({"tracklet_id": ["t1", "t5"], "prob": [0.2, 0.4]})
    rows = score_nodules(nodules, tracklets, scored, "tracklets", 0.5, "dx-1")
    assert rows["malignancy_first"].tolist() == pytest.approx([0.2, 0.4])
    assert rows["turned_suspicious"].tolist() == [False, False]


def test_an_empty_index_has_no_evidence_and_no_error():
    nodules = pd.DataFrame({"nodule_uid": pd.Series([], dtype=str), "tracklet_ids": []})
    tracklets = pd.DataFrame(columns=["tracklet_id", "video_id", "study_key"])
    out = evidence(nodules, tracklets)
    assert out.empty and out["n_videos"].dtype == np.int32 and out["n_studies"].dtype == np.int32
