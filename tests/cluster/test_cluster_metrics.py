"""Pairwise precision / recall / F-score: a case table, a brute-force double loop over
pairs, scikit-learn's pair confusion matrix, and the undefined cases."""

import itertools
import math
import warnings

import numpy as np
import pytest

from usv_ray.cluster.metrics import (
    CountAgreement,
    PairScores,
    count_agreement,
    pair_counts,
    pair_counts_by_patient,
    pairwise_scores,
)
from usv_ray.evaluate.metrics import MetricWarning


def brute_force(truth, pred, patients) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` by visiting every pair of rows."""
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(truth)), 2):
        if patients[i] != patients[j]:
            continue
        same_truth, same_pred = truth[i] == truth[j], pred[i] == pred[j]
        tp += same_truth and same_pred
        fp += same_pred and not same_truth
        fn += same_truth and not same_pred
    return tp, fp, fn


# (truth, pred, patients, (tp, fp, fn))
CASES = [
    ([0, 0, 1, 1], [5, 5, 7, 7], [0, 0, 0, 0], (2, 0, 0)),  # perfect, other label names
    ([0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], (2, 4, 0)),  # all merged (DBSCAN-like)
    ([0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 0, 0], (0, 0, 3)),  # all split
    ([0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0], (1, 1, 2)),
    ([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], (2, 0, 0)),  # no pair across patients
    (["a", "a", "b"], [1, 1, 1], ["p", "p", "q"], (1, 0, 0)),  # string labels
]


@pytest.mark.parametrize(("truth", "pred", "patients", "expected"), CASES)
def test_case_table(truth, pred, patients, expected):
    assert pair_counts(np.array(truth), np.array(pred), np.array(patients)) == expected
    assert brute_force(truth, pred, patients) == expected


def test_scores_from_counts():
    # truth {0,1,2} {3}, pred {0,1} {2,3}: TP 1, FP 1, FN 2
    scores = pairwise_scores(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), np.zeros(4))
    assert scores == PairScores(precision=0.5, recall=1 / 3, f_score=0.4, tp=1, fp=1, fn=2)
    assert math.isclose(scores.f_score, 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_matches_brute_force_over_many_patients():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        patients = rng.integers(0, 5, size=n).astype(str)
        truth = rng.integers(0, 4, size=n)
        pred = rng.integers(0, 3, size=n)  # labels reused across patients
        expected = brute_force(truth, pred, patients)
        assert pair_counts(truth, pred, patients) == expected
        scores = pairwise_scores(truth, pred, patients)
        assert (scores.tp, scores.fp, scores.fn) == expected


def test_matches_sklearn_pair_confusion_matrix_on_one_patient():
    from sklearn.metrics.cluster import pair_confusion_matrix

    rng = np.random.default_rng(1)
    for _ in range(10):
        truth, pred = rng.integers(0, 5, size=40), rng.integers(0, 6, size=40)
        matrix = pair_confusion_matrix(truth, pred)  # ordered pairs: each pair counted twice
        tp, fp, fn = pair_counts(truth, pred, np.zeros(40))
        assert (2 * tp, 2 * fp, 2 * fn) == (matrix[1, 1], matrix[0, 1], matrix[1, 0])


def test_summed_over_patients_before_the_ratios():
    # patient p: TP 1 FP 0; patient q: TP 0 FP 3 -> pooled precision 1/4, not mean(1, 0)
    truth = np.array([0, 0, 0, 1, 2])
    pred = np.array([0, 0, 0, 0, 0])
    patients = np.array(["p", "p", "q", "q", "q"])
    assert pairwise_scores(truth, pred, patients).precision == 0.25


def test_no_predicted_pairs_precision_nan_f_score_zero():
    with pytest.warns(MetricWarning, match="precision"):
        scores = pairwise_scores(np.array([0, 0, 1]), np.array([0, 1, 2]), np.zeros(3))
    assert math.isnan(scores.precision)
    assert scores.recall == 0.0 and scores.f_score == 0.0


def test_no_pairs_at_all_is_nan_with_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = pairwise_scores(np.array([0, 1]), np.array([0, 1]), np.array(["p", "q"]))
    assert math.isnan(scores.precision) and math.isnan(scores.recall)
    assert math.isnan(scores.f_score)
    assert sum(issubclass(w.category, MetricWarning) for w in caught) == 3
    assert (scores.tp, scores.fp, scores.fn) == (0, 0, 0)
    with pytest.warns(MetricWarning):
        assert math.isnan(pairwise_scores(np.array([]), np.array([]), np.array([])).f_score)


@pytest.mark.parametrize(
    ("truth", "pred", "patients", "match"),
    [
        ([0, 1], [0], [0, 0], "one length"),
        ([[0, 1]], [[0, 1]], [[0, 0]], "1-D"),
        ([0, None], [0, 1], [0, 0], "truth has 1 missing"),
        ([0, 1], [0, 1], ["p", None], "patients has 1 missing"),
    ],
)
def test_bad_input_is_a_clear_error(truth, pred, patients, match):
    with pytest.raises(ValueError, match=match):
        pairwise_scores(
            np.array(truth, dtype=object), np.array(pred, dtype=object), np.array(patients)
        )


def test_count_agreement_by_hand():
    # patient a: 2 nodules, 3 clusters; b: 1 nodule (label reused from a), 1 cluster;
    # c: 2 nodules merged into 1 cluster
    truth = ["n0", "n0", "n1", "n0", "n0", "x", "y"]
    pred = [0, 1, 2, 0, 0, 5, 5]
    patients = ["a", "a", "a", "b", "b", "c", "c"]
    assert count_agreement(truth, pred, patients) == CountAgreement(3, 1, 2 / 3, 5, 5)


def test_count_agreement_matches_brute_force():
    rng = np.random.default_rng(4)
    patients = rng.integers(0, 30, 400)
    truth, pred = rng.integers(0, 4, 400), rng.integers(0, 6, 400)
    errors = [
        abs(len(set(pred[patients == p])) - len(set(truth[patients == p])))
        for p in np.unique(patients)
    ]
    got = count_agreement(truth, pred, patients)
    assert got.patients == len(errors) and got.exact == errors.count(0)
    assert math.isclose(got.mean_error, sum(errors) / len(errors))
    assert got.clusters == sum(len(set(pred[patients == p])) for p in np.unique(patients))


def test_count_agreement_of_nothing():
    got = count_agreement([], [], [])
    assert (got.patients, got.exact, got.clusters) == (0, 0, 0) and math.isnan(got.mean_error)


def test_counts_by_patient_are_sklearns_pair_confusion_per_patient():
    from sklearn.metrics.cluster import pair_confusion_matrix

    rng = np.random.default_rng(2)
    patients = rng.choice(["p1", "p2", "p3"], size=50)
    truth, pred = rng.integers(0, 4, size=50), rng.integers(0, 3, size=50)
    names, counts = pair_counts_by_patient(truth, pred, patients)
    assert names.tolist() == ["p1", "p2", "p3"]
    for name, (tp, fp, fn) in zip(names, counts, strict=True):
        rows = patients == name
        matrix = pair_confusion_matrix(truth[rows], pred[rows])
        assert (2 * tp, 2 * fp, 2 * fn) == (matrix[1, 1], matrix[0, 1], matrix[1, 0])
    assert tuple(counts.sum(axis=0)) == pair_counts(truth, pred, patients)


def test_counts_by_patient_of_nothing():
    names, counts = pair_counts_by_patient(np.array([]), np.array([]), np.array([]))
    assert names.size == 0 and counts.shape == (0, 3)
