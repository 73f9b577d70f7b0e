"""DeLong variance of ROC AUCs and the paired test of two correlated AUCs.

The fast midrank algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm
for comparing the areas under correlated ROC curves", IEEE Signal Processing Letters 21(11):
O(N log N) in the number of rows instead of DeLong's O(P N) pairwise comparisons.

Inputs, as in :mod:`usv_ray.evaluate.metrics`:

- ``y_true``: ``(N,)`` labels in {0, 1}, integer or boolean (for re-identification pairs,
  1 = same nodule);
- ``scores``: ``(N,)`` finite real scores, higher meaning more likely 1. They need not be
  probabilities: a similarity in [-1, 1] or a negated distance will do.

Bad shapes, labels or scores raise ``ValueError``. With one class present or no rows the
AUC is undefined: every field is NaN and a :class:`MetricWarning` is emitted. With fewer
than 2 positives or 2 negatives the AUC is defined but its variance is not (a sample
variance of one value): the variance fields are NaN, again with a MetricWarning.

The structural components of DeLong et al. (1988), for P positives scored ``x_i`` and
N negatives scored ``y_j``, ``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``:

- ``V10_i = mean_j psi(x_i, y_j)``, ``(P,)``; ``V01_j = mean_i psi(x_i, y_j)``, ``(N,)``;
- ``AUC = mean(V10) = mean(V01)``, ties counting 1/2, as ``sklearn.metrics.roc_auc_score``;
- ``Var(AUC) = S10 / P + S01 / N`` with ``S10``, ``S01`` the sample variances (ddof 1) of
  the components, and the covariance of two AUCs on the same rows likewise from the sample
  covariances of their components.

DeLong treats the positives, and the negatives, as independent draws. Rows that share a
patient (or, for pairs, a tracklet) are not, and then the variance is too small; the
patient bootstrap of :func:`usv_ray.evaluate.metrics.bootstrap_ci` is the honest interval
in that case.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from usv_ray.evaluate.metrics import MetricWarning, _one_class

__all__ = ["DelongComparison", "DelongResult", "delong_auc", "delong_test"]

ArrayLike = npt.ArrayLike
NAN = float("nan")


@dataclass(frozen=True)
class DelongResult:
    """One AUC with its DeLong variance and normal-approximation confidence interval."""

    auc: float  # area under the ROC curve, ties counted half
    variance: float  # DeLong variance of the AUC
    low: float  # lower end of the CI, clipped to [0, 1]
    high: float  # upper end of the CI, clipped to [0, 1]


@dataclass(frozen=True)
class DelongComparison:
    """The paired DeLong test of ``auc_a - auc_b`` for two scores of the same rows."""

    auc_a: float
    auc_b: float
    variance_a: float  # DeLong variance of auc_a
    variance_b: float  # DeLong variance of auc_b
    covariance: float  # DeLong covariance of auc_a and auc_b
    difference: float  # auc_a - auc_b
    variance: float  # of the difference: variance_a + variance_b - 2 covariance
    z: float  # difference / sqrt(variance)
    p_value: float  # two-sided, normal approximation
    low: float  # lower end of the CI of the difference, clipped to [-1, 1]
    high: float  # upper end of the CI of the difference, clipped to [-1, 1]


def _warn(message: str) -> None:
    # stacklevel 3: the warning points at the caller of the public function.
    warnings.warn(f"{message}; returning NaN", MetricWarning, stacklevel=3)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return level


def _check(y_true: ArrayLike, **named_scores: ArrayLike) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validated ``(y_true int64 (N,), [scores float64 (N,), ...])``; ValueError naming the
    problem. The scores are passed by keyword so that the messages can name them."""
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {labels.shape}")
    # An empty list arrives as float64; it holds no bad label, so let it through.
    if labels.dtype.kind not in "biu" and labels.size:
        raise ValueError(f"y_true must hold integer or boolean labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        raise ValueError(f"y_true must be 0 or 1, found {np.unique(labels[bad])[:5].tolist()}")
    checked = []
    for name, values in named_scores.items():
        scores = np.asarray(values)
        if scores.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {scores.shape}")
        if scores.shape != labels.shape:
            raise ValueError(
                f"y_true and {name} must have the same length, got {labels.size} and {scores.size}"
            )
        if scores.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be real numbers, got dtype {scores.dtype}")
        scores = scores.astype(np.float64, copy=False)
        if not np.isfinite(scores).all():
            raise ValueError(f"{name} must be finite, found NaN or inf")
        checked.append(scores)
    return labels, checked


def _sorted_midranks(ordered: np.ndarray) -> np.ndarray:
    """``(K,)`` 1-based ranks of an ascending ``(K,)`` array, position by position, tied
    values sharing the mean of their ranks (``scipy.stats.rankdata(method="average")``)."""
    size = ordered.size
    starts_run = np.empty(size, dtype=bool)  # (K,) first position of a run of equal values
    starts_run[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    first = np.flatnonzero(starts_run)  # (R,) 0-based position where each run starts
    last = np.append(first[1:], size) - 1  # (R,) and where it ends
    run_rank = (first + last) / 2.0 + 1.0  # (R,) mean of the run's 1-based ranks
    return run_rank[np.cumsum(starts_run) - 1]


def _components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(auc, V10 (P,), V01 (N,))`` from midranks (Sun & Xu 2014, Algorithm 2).

    A positive's rank among all rows less its rank among the positives is the number of
    negatives below it, ties counting half: ``P * N * V10``, summed over positives, is the
    Mann-Whitney U. Likewise for the negatives, from the other side.

    Sun & Xu sort three times (all rows, positives, negatives); one argsort does here, since
    the positives, taken in the order of all rows, are already in their own order.
    """
    positives = scores[labels == 1]  # (P,)
    negatives = scores[labels == 0]  # (N,)
    n_pos, n_neg = positives.size, negatives.size
    pooled = np.concatenate([positives, negatives])  # (P + N,) positives first
    order = np.argsort(pooled)  # (P + N,) stability is not needed: ties share a rank
    ranks = np.empty(pooled.size)  # (P + N,) midranks among all rows
    ranks[order] = _sorted_midranks(pooled[order])
    pos_order = order[order < n_pos]  # (P,) the positives, ascending
    neg_order = order[order >= n_pos]  # (N,) the negatives, ascending
    own_ranks = np.empty(pooled.size)  # (P + N,) midranks within the row's own class
    own_ranks[pos_order] = _sorted_midranks(pooled[pos_order])
    own_ranks[neg_order] = _sorted_midranks(pooled[neg_order])
    below = ranks - own_ranks  # (P + N,) rows of the other class below, ties counting half
    v10 = below[:n_pos] / n_neg  # (P,) share of negatives below each positive
    v01 = 1.0 - below[n_pos:] / n_pos  # (N,) share of positives above each negative
    # The rank sum is exact in float64 (half-integers), so the AUC is one rounding from exact.
    auc = (ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return float(auc), v10, v01


def _delong_matrix(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """``(K, K)`` DeLong covariance matrix of K AUCs from their structural components
    ``v10`` ``(K, P)`` and ``v01`` ``(K, N)``: ``S10 / P + S01 / N``, with ``S10`` and
    ``S01`` the sample covariance matrices (ddof 1) over the positives and the negatives.
    ``P, N >= 2``."""

    def sample_covariance(rows: np.ndarray) -> np.ndarray:
        centred = rows - rows.mean(axis=1, keepdims=True)  # (K, M)
        # One (K, M) @ (M, K) product: K dot products of length M each were several times
        # slower on a busy machine.
        return centred @ centred.T / (rows.shape[1] - 1)  # (K, K)

    return sample_covariance(v10) / v10.shape[1] + sample_covariance(v01) / v01.shape[1]


def _too_few(labels: np.ndarray, name: str) -> bool:
    """Warn and say so when a variance is undefined: fewer than 2 of a class."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if min(n_pos, n_neg) < 2:
        warnings.warn(
            f"the DeLong variance in {name} needs at least 2 positives and 2 negatives, got "
            f"{n_pos} and {n_neg}; returning NaN",
            MetricWarning,
            3,
        )
        return True
    return False


def _z_critical(level: float) -> float:
    """The standard normal quantile of a two-sided ``level`` interval, 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def delong_auc(y_true: ArrayLike, scores: ArrayLike, *, level: float = 0.95) -> DelongResult:
    """ROC AUC of ``scores`` ``(N,)`` for ``y_true`` ``(N,)``, with its DeLong variance and
    the ``level`` normal-approximation CI ``auc -/+ z * sqrt(variance)`` clipped to [0, 1].

    One class or no rows: all NaN, with a MetricWarning. Fewer than 2 positives or 2
    negatives: the AUC, and NaN variance and CI, with a MetricWarning.
    """
    level = _check_level(level)
    labels, (checked,) = _check(y_true, scores=scores)
    if _one_class(labels, "delong_auc"):
        return DelongResult(NAN, NAN, NAN, NAN)
    auc, v10, v01 = _components(labels, checked)
    if _too_few(labels, "delong_auc"):
        return DelongResult(auc, NAN, NAN, NAN)
    variance = float(_delong_matrix(v10[None, :], v01[None, :])[0, 0])
    half_width = _z_critical(level) * math.sqrt(variance)
    return DelongResult(
        auc=auc,
        variance=variance,
        low=max(0.0, auc - half_width),
        high=min(1.0, auc + half_width),
    )


def delong_test(
    y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, *, level: float = 0.95
) -> DelongComparison:
    """Paired DeLong test of ``auc_a - auc_b`` for two scores ``(N,)`` of the same rows.

    ``z = difference / sqrt(variance)`` with the variance of the difference from DeLong's
    covariance, the two-sided p-value ``erfc(|z| / sqrt 2)``, and the ``level`` CI of the
    difference ``difference -/+ z_crit * sqrt(variance)`` clipped to [-1, 1].

    The variance of the difference is computed from the differences of the structural
    components, which equals ``variance_a + variance_b - 2 covariance`` but is never
    negative and is exactly 0 when the two scores rank the rows alike (e.g. identical
    scores). When it is 0 there is no normal approximation to make, and by convention:
    a difference of 0 gives ``z = 0`` and ``p = 1``; any other difference ``z = +-inf`` and
    ``p = 0``; the CI is the point ``(difference, difference)``. No warning either way.

    One class or no rows: all NaN, with a MetricWarning. Fewer than 2 positives or 2
    negatives: the AUCs and their difference, the rest NaN, with a MetricWarning.
    """
    level = _check_level(level)
    labels, (checked_a, checked_b) = _check(y_true, scores_a=scores_a, scores_b=scores_b)
    if _one_class(labels, "delong_test"):
        return DelongComparison(*[NAN] * 11)
    auc_a, v10_a, v01_a = _components(labels, checked_a)
    auc_b, v10_b, v01_b = _components(labels, checked_b)
    difference = auc_a - auc_b
    if _too_few(labels, "delong_test"):
        return DelongComparison(auc_a, auc_b, NAN, NAN, NAN, difference, *[NAN] * 5)
    # Rows a, b and a - b: the difference's own components give its variance directly,
    # exactly 0 for scores that rank the rows alike and never negative by rounding.
    matrix = _delong_matrix(
        np.stack([v10_a, v10_b, v10_a - v10_b]),  # (3, P)
        np.stack([v01_a, v01_b, v01_a - v01_b]),  # (3, N)
    )  # (3, 3)
    variance = float(matrix[2, 2])
    if variance > 0.0:
        sd = math.sqrt(variance)
        z = difference / sd
        p_value = math.erfc(abs(z) / math.sqrt(2.0))
        half_width = _z_critical(level) * sd
    else:  # the convention of the docstring; also keeps 0/0 out
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
        p_value = 1.0 if difference == 0.0 else 0.0
        half_width = 0.0
    return DelongComparison(
        auc_a=auc_a,
        auc_b=auc_b,
        variance_a=float(matrix[0, 0]),
        variance_b=float(matrix[1, 1]),
        covariance=float(matrix[0, 1]),
        difference=difference,
        variance=variance,
        z=z,
        p_value=p_value,
        low=max(-1.0, difference - half_width),
        high=min(1.0, difference + half_width),
    )
