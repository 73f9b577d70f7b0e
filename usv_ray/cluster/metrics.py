"""Pairwise precision, recall and F-score of a clustering against the true nodules (numpy).

The re-ID paper scores its clustering (Table 4) over *pairs of tracklets of one patient*:
a pair is a true positive when the prediction puts both tracklets in one cluster and they
show the same nodule, a false positive when the prediction joins two nodules, a false
negative when it splits one. Counts are summed over patients before the ratios are taken
(pairs never cross patients, so a patient with many tracklets weighs more).

Every count comes from a contingency table of (patient, true nodule, cluster) cells, never
from a loop over pairs: a cell of ``c`` tracklets holds ``c (c - 1) / 2`` pairs.

Undefined values follow ``usv_ray.evaluate.metrics``: NaN plus a ``MetricWarning``, never
an exception. Precision is undefined without predicted pairs (every cluster a singleton),
recall without true pairs (every nodule seen once). The F-score is ``2 TP / (2 TP + FP +
FN)``, the harmonic mean of precision and recall where both exist, defined whenever there
is a pair on either side (so all-singleton clusters of multi-tracklet nodules score 0, not
NaN); with no pair at all it is NaN too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from usv_ray.evaluate.metrics import MetricWarning

__all__ = [
    "CountAgreement",
    "PairScores",
    "count_agreement",
    "pair_counts",
    "pair_counts_by_patient",
    "pairwise_scores",
]


@dataclass(frozen=True)
class PairScores:
    """Pairwise scores of a clustering, as fractions in [0, 1] (NaN where undefined)."""

    precision: float  # TP / (TP + FP)
    recall: float  # TP / (TP + FN)
    f_score: float  # 2 TP / (2 TP + FP + FN)
    tp: int  # within-patient pairs in one cluster and of one nodule
    fp: int  # in one cluster, of two nodules
    fn: int  # of one nodule, in two clusters


@dataclass(frozen=True)
class CountAgreement:
    """How well the number of clusters per patient matches the number of true nodules."""

    patients: int
    exact: int  # patients with as many clusters as true nodules
    mean_error: float  # mean over patients of |clusters - nodules| (NaN without patients)
    clusters: int  # over all patients
    nodules: int


def _codes(values: np.ndarray, name: str) -> np.ndarray:
    """``(N,)`` int64 codes of any hashable labels; ValueError for a missing label."""
    import pandas as pd

    codes, _ = pd.factorize(values)
    if (codes < 0).any():
        raise ValueError(f"{name} has {int((codes < 0).sum())} missing labels")
    return codes.astype(np.int64)


def _pairs_within(*keys: np.ndarray) -> int:
    """Pairs of rows that agree on every key: sum of c (c - 1) / 2 over the key cells."""
    cell = keys[0]
    for key in keys[1:]:
        cell = cell * (int(key.max()) + 1) + key  # (N,); factorised again below, no overflow
        cell = np.unique(cell, return_inverse=True)[1]
    counts = np.bincount(cell)
    return int((counts * (counts - 1) // 2).sum())


def _arrays(
    truth: np.ndarray, pred: np.ndarray, patients: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three label columns as arrays; ValueError unless 1-D of one length."""
    truth, pred, patients = (np.asarray(a) for a in (truth, pred, patients))
    if not truth.ndim == pred.ndim == patients.ndim == 1 or not (
        truth.shape == pred.shape == patients.shape
    ):
        raise ValueError(
            "truth, pred and patients must be 1-D of one length, got shapes "
            f"{truth.shape}, {pred.shape}, {patients.shape}"
        )
    return truth, pred, patients


def pair_counts(truth: np.ndarray, pred: np.ndarray, patients: np.ndarray) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` over the within-patient pairs (see the module docstring).

    Args:
        truth: ``(N,)`` true nodule of each tracklet (any hashable labels; only equality
            within a patient matters).
        pred: ``(N,)`` predicted cluster of each tracklet (labels need only be unique within
            a patient, as ``cluster_patients`` gives them).
        patients: ``(N,)`` patient of each tracklet.

    Raises:
        ValueError: inputs not 1-D of one length, or a missing label.
    """
    truth, pred, patients = _arrays(truth, pred, patients)
    if truth.size == 0:
        return 0, 0, 0
    patient = _codes(patients, "patients")
    nodule = _codes(truth, "truth")
    cluster = _codes(pred, "pred")
    tp = _pairs_within(patient, nodule, cluster)
    predicted = _pairs_within(patient, cluster)  # TP + FP
    true = _pairs_within(patient, nodule)  # TP + FN
    return tp, predicted - tp, true - tp


def pair_counts_by_patient(
    truth: np.ndarray, pred: np.ndarray, patients: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The patients and their ``(P, 3)`` counts ``tp, fp, fn`` (arguments as
    :func:`pair_counts`, whose counts are these summed): what a bootstrap over patients
    resamples."""
    truth, pred, patients = _arrays(truth, pred, patients)
    names, patient = np.unique(patients, return_inverse=True)
    counts = np.zeros((names.size, 3), dtype=np.int64)
    if truth.size == 0:
        return names, counts
    patient = patient.reshape(-1).astype(np.int64)
    nodule, cluster = _codes(truth, "truth"), _codes(pred, "pred")

    def within(*keys: np.ndarray) -> np.ndarray:  # (P,) pairs agreeing on keys, per patient
        _, first, sizes = np.unique(
            np.stack([patient, *keys], axis=1), axis=0, return_index=True, return_counts=True
        )
        return np.bincount(patient[first], weights=sizes * (sizes - 1) // 2, minlength=names.size)

    tp = within(nodule, cluster)
    counts[:, 0] = tp
    counts[:, 1] = within(cluster) - tp
    counts[:, 2] = within(nodule) - tp
    return names, counts


def _ratio(numerator: int, denominator: int, what: str) -> float:
    if denominator == 0:
        # stacklevel 3: the warning points at the caller of pairwise_scores
        warnings.warn(f"{what}; returning NaN", MetricWarning, stacklevel=3)
        return float("nan")
    return numerator / denominator


def pairwise_scores(truth: np.ndarray, pred: np.ndarray, patients: np.ndarray) -> PairScores:
    """Pairwise precision, recall and F-score of ``pred`` against ``truth``, counted over
    pairs of tracklets of one patient and summed over patients (the paper's Table 4).

    Arguments as :func:`pair_counts`. Undefined scores are NaN with a ``MetricWarning``:
    precision without predicted pairs, recall without true pairs, F-score with neither.
    """
    tp, fp, fn = pair_counts(truth, pred, patients)
    precision = _ratio(tp, tp + fp, "pairwise precision is undefined: no predicted pairs")
    recall = _ratio(tp, tp + fn, "pairwise recall is undefined: no true pairs")
    f_score = _ratio(2 * tp, 2 * tp + fp + fn, "pairwise F-score is undefined: no pairs")
    return PairScores(precision, recall, f_score, tp, fp, fn)


def count_agreement(truth: np.ndarray, pred: np.ndarray, patients: np.ndarray) -> CountAgreement:
    """Clusters vs true nodules, counted per patient (arguments as :func:`pair_counts`).

    Pairwise scores say how tracklets were grouped; this says what a reader of the index
    sees first: how many nodules it lists for each patient, against how many there are.
    """
    truth, pred, patients = _arrays(truth, pred, patients)
    if truth.size == 0:
        return CountAgreement(0, 0, float("nan"), 0, 0)
    patient = _codes(patients, "patients")
    n = int(patient.max()) + 1

    def per_patient(labels: np.ndarray) -> np.ndarray:  # (P,) distinct labels per patient
        width = int(labels.max()) + 1
        return np.bincount(np.unique(patient * width + labels) // width, minlength=n)

    clusters = per_patient(_codes(pred, "pred"))
    nodules = per_patient(_codes(truth, "truth"))
    error = np.abs(clusters - nodules)
    return CountAgreement(
        n, int((error == 0).sum()), float(error.mean()), int(clusters.sum()), int(nodules.sum())
    )
