"""Calibration of P(malignant): Platt / isotonic calibrators, Brier score, ECE, reliability.

Inputs, as in :mod:`usv_ray.evaluate.metrics`:

- ``y_true``: ``(N,)`` labels in {0, 1}, integer or boolean;
- ``y_prob``: ``(N,)`` finite probabilities of malignant (1) in [0, 1].

Bad shapes, labels or probabilities raise ``ValueError``. A figure that is undefined for its
input (an empty input, an operating point without malignant videos) is NaN with a
:class:`MetricWarning`. A calibrator that cannot be fitted (fewer than 2 rows, one class
present) falls back to the identity with a MetricWarning; it never raises for that.

A calibrator fitted on the predictions it is then judged on looks better than it is: the
honest "after calibration" figures come from :func:`cross_fitted`, where every row is
calibrated by a calibrator fitted on the other folds.

Bins follow ``sklearn.calibration.calibration_curve`` exactly: ``n_bins`` equal-width bins
on [0, 1] ("uniform") or equal-mass bins at the percentiles of ``y_prob`` ("quantile"); a
row goes to bin ``searchsorted(edges[1:-1], p)``, so a probability on an inner edge belongs
to the bin *below* it (bins are ``[0, e1], (e1, e2], ..., (e_{n-1}, 1]``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from usv_ray.evaluate.metrics import MetricWarning, _check, _ranked_counts, _undefined

__all__ = [
    "METHODS",
    "STRATEGIES",
    "Calibrator",
    "bin_edges",
    "brier_score",
    "calibration_summary",
    "cross_fitted",
    "expected_calibration_error",
    "fit_calibrator",
    "operating_point",
    "reliability",
]

ArrayLike = npt.ArrayLike

# method -> the keys of its ``params``; the one choice point of calibration methods.
METHODS: dict[str, tuple[str, ...]] = {
    "platt": ("a", "b"),  # P = sigmoid(a * logit(p) + b)
    "isotonic": ("x", "y"),  # P = piecewise-linear through (x, y), flat outside
    "identity": (),  # P = p
}
STRATEGIES = ("uniform", "quantile")
# Probabilities are clipped to [EPS, 1 - EPS] before the logit, so that a probability
# saturated at exactly 0 or 1 (a float32 sigmoid does that) has a finite logit (|.| < 16.2).
EPS = 1e-7
_DICT_KEYS = ("method", "params", "n_videos", "n_positive")


def _check_probs(y_prob: ArrayLike) -> np.ndarray:
    """Validated ``y_prob`` float64 ``(N,)``, by the same checks as the metrics."""
    probs = np.asarray(y_prob)
    if probs.ndim != 1:
        raise ValueError(f"y_prob must be 1-D, got shape {probs.shape}")
    return _check(np.zeros(probs.size, dtype=np.int64), probs)[1]


def _logit(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, EPS, 1.0 - EPS)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for any z.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _reals(values: Any, name: str) -> list[float]:
    if isinstance(values, str | bytes | Mapping) or np.ndim(values) != 1:
        raise ValueError(f"{name} must be a flat list of numbers, got {values!r}")
    return [_real(value, f"{name}[{i}]") for i, value in enumerate(values)]


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}, expected one of {list(METHODS)}")
    return method


def _check_params(method: str, params: Any) -> dict[str, Any]:
    """``params`` as plain floats / lists of floats; ValueError naming what is wrong."""
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    expected = METHODS[method]
    missing = [key for key in expected if key not in params]
    if missing:
        raise ValueError(f"a {method} calibrator needs params {list(expected)}, missing {missing}")
    unknown = sorted(str(key) for key in params if key not in expected)
    if unknown:
        raise ValueError(f"a {method} calibrator takes params {list(expected)}, got {unknown}")
    if method == "platt":
        return {"a": _real(params["a"], "a"), "b": _real(params["b"], "b")}
    if method == "isotonic":
        x, y = _reals(params["x"], "x"), _reals(params["y"], "y")
        if not x or len(x) != len(y):
            raise ValueError(
                f"isotonic x and y must be non-empty and of one length, got {len(x)} and {len(y)}"
            )
        if (np.diff(x) < 0).any():
            raise ValueError("isotonic x must be non-decreasing")
        if min(y) < 0.0 or max(y) > 1.0:
            raise ValueError(f"isotonic y must lie in [0, 1], found [{min(y)}, {max(y)}]")
        return {"x": x, "y": y}
    return {}


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from a model's P(malignant) to a calibrated one; JSON-serialisable."""

    method: str  # "platt", "isotonic" or "identity"
    params: dict[str, Any]  # platt {"a", "b"}; isotonic {"x": [...], "y": [...]}; identity {}
    n_videos: int  # rows it was fitted on
    n_positive: int  # malignant rows among them

    def __post_init__(self) -> None:
        _check_method(self.method)
        # Plain floats, so that to_dict() is JSON as it stands (no numpy scalars).
        object.__setattr__(self, "params", _check_params(self.method, self.params))
        for name in ("n_videos", "n_positive"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.n_positive > self.n_videos:
            raise ValueError(
                f"n_positive ({self.n_positive}) cannot exceed n_videos ({self.n_videos})"
            )

    def apply(self, probs: ArrayLike) -> np.ndarray:
        """Calibrated probabilities, float64 ``(N,)`` in [0, 1], of ``probs`` ``(N,)``."""
        probs = _check_probs(probs)
        if self.method == "platt":
            return _sigmoid(self.params["a"] * _logit(probs) + self.params["b"])
        if self.method == "isotonic":
            # np.interp is flat beyond the end points: IsotonicRegression's "clip".
            return np.interp(probs, self.params["x"], self.params["y"])
        return probs.copy()

    def to_dict(self) -> dict[str, Any]:
        """``{"method", "params", "n_videos", "n_positive"}`` of plain Python values."""
        params = {
            key: list(value) if isinstance(value, list) else value
            for key, value in self.params.items()
        }
        return {
            "method": self.method,
            "params": params,
            "n_videos": self.n_videos,
            "n_positive": self.n_positive,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """The calibrator of :meth:`to_dict`'s output; ValueError naming what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a calibrator must be a mapping, got {type(d).__name__}")
        missing = [key for key in _DICT_KEYS if key not in d]
        if missing:
            raise ValueError(f"calibrator is missing {missing}")
        unknown = sorted(str(key) for key in d if key not in _DICT_KEYS)
        if unknown:
            raise ValueError(f"calibrator has unknown keys {unknown}")
        return cls(**{key: d[key] for key in _DICT_KEYS})


def _fit_platt(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    positive = labels == 1  # (N,) bool
    if probs[~positive].max() < probs[positive].min():
        # The maximum-likelihood slope is infinite; lbfgs stops at some large finite one.
        warnings.warn(
            "y_prob separates the classes (every benign video below every malignant one): "
            "Platt scaling has no finite fit, and the calibrator is close to a step function",
            MetricWarning,
            stacklevel=3,
        )
    # C=inf is the unpenalised fit (penalty=None is deprecated from scikit-learn 1.8).
    model = LogisticRegression(C=np.inf)
    model.fit(_logit(probs)[:, None], labels)  # (N, 1): the one feature is the logit
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _fit_isotonic(labels: np.ndarray, probs: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
    model.fit(probs, labels.astype(np.float64))
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


def fit_calibrator(y_true: ArrayLike, y_prob: ArrayLike, method: str = "platt") -> Calibrator:
    """A ``method`` calibrator ("platt", "isotonic" or "identity") fitted on the rows given.

    Platt: an unpenalised logistic regression of ``y_true`` on ``logit(clip(y_prob))``;
    isotonic: scikit-learn's non-decreasing ``IsotonicRegression`` clipped to [0, 1].
    With fewer than 2 rows or one class present nothing can be fitted: the identity is
    returned with a MetricWarning saying why.
    """
    _check_method(method)
    labels, probs = _check(y_true, y_prob)
    n_videos, n_positive = labels.size, int(labels.sum())
    if method != "identity":
        reason = None
        if n_videos < 2:
            reason = f"{n_videos} row(s)"
        elif n_positive in (0, n_videos):
            reason = f"only class {labels[0]} in y_true"
        if reason is not None:
            warnings.warn(
                f"cannot fit a {method} calibrator with {reason}; using the identity",
                MetricWarning,
                stacklevel=2,
            )
            method = "identity"
    if method == "platt":
        params: dict[str, Any] = _fit_platt(labels, probs)
    elif method == "isotonic":
        params = _fit_isotonic(labels, probs)
    else:
        params = {}
    return Calibrator(method, params, n_videos, n_positive)


def cross_fitted(
    y_true: ArrayLike, y_prob: ArrayLike, folds: ArrayLike, method: str = "platt"
) -> np.ndarray:
    """Out-of-fold calibrated probabilities ``(N,)``: row i by a calibrator fitted without
    the rows of its fold ``folds[i]``.

    ``folds``: ``(N,)`` integer fold of each row (folds by patient keep the calibrator
    from seeing another video of the same patient). With fewer than 2 folds there is
    nothing to fit on: ``y_prob`` is returned unchanged with a MetricWarning. A fold whose
    complement holds one class is left uncalibrated, with :func:`fit_calibrator`'s warning.
    """
    _check_method(method)
    labels, probs = _check(y_true, y_prob)
    fold_of = np.asarray(folds)  # (N,)
    if fold_of.ndim != 1:
        raise ValueError(f"folds must be 1-D, got shape {fold_of.shape}")
    if fold_of.size != labels.size:
        raise ValueError(f"folds must have one entry per row ({labels.size}), got {fold_of.size}")
    if fold_of.dtype.kind not in "iu" and fold_of.size:
        raise ValueError(f"folds must hold integers, got dtype {fold_of.dtype}")
    fold_ids = np.unique(fold_of)
    if fold_ids.size < 2:
        warnings.warn(
            f"cross-fitting needs at least 2 folds, got {fold_ids.size}; "
            "returning y_prob uncalibrated",
            MetricWarning,
            stacklevel=2,
        )
        return probs.copy()
    calibrated = np.empty_like(probs)  # (N,)
    for fold in fold_ids:
        held_out = fold_of == fold  # (N,) bool
        calibrator = fit_calibrator(labels[~held_out], probs[~held_out], method)
        calibrated[held_out] = calibrator.apply(probs[held_out])
    return calibrated


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared error ``mean((y_prob - y_true)^2)``, scikit-learn's ``brier_score_loss``.

    0 is perfect; always predicting the prevalence ``r`` scores ``r (1 - r)``. NaN for an
    empty input.
    """
    labels, probs = _check(y_true, y_prob)
    if labels.size == 0:
        return _undefined("brier score of an empty input is undefined")
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(labels, probs, pos_label=1))


def _check_binning(n_bins: int, strategy: str) -> int:
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    return int(n_bins)


def bin_edges(y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """The ``(n_bins + 1,)`` bin edges of ``sklearn.calibration.calibration_curve``.

    "uniform": ``linspace(0, 1, n_bins + 1)``; "quantile": the percentiles of ``y_prob``
    at ``linspace(0, 1, n_bins + 1) * 100`` (written so, not ``linspace(0, 100, ...)``,
    to give sklearn's edges to the last bit). Tied probabilities can make quantile edges
    repeat, leaving some bins empty. A quantile edge needs at least one probability.
    """
    n_bins = _check_binning(n_bins, strategy)
    probs = _check_probs(y_prob)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if probs.size == 0:
        raise ValueError("quantile bin edges of an empty y_prob are undefined")
    return np.percentile(probs, np.linspace(0.0, 1.0, n_bins + 1) * 100)


def _binned(
    labels: np.ndarray, probs: np.ndarray, n_bins: int, strategy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prob_true, prob_pred, counts)`` over the non-empty bins, as calibration_curve."""
    edges = bin_edges(probs, n_bins, strategy)  # (n_bins + 1,)
    bin_of = np.searchsorted(edges[1:-1], probs)  # (N,) in 0 .. n_bins - 1
    prob_sums = np.bincount(bin_of, weights=probs, minlength=n_bins)  # (n_bins,)
    positives = np.bincount(bin_of, weights=labels, minlength=n_bins)  # (n_bins,)
    counts = np.bincount(bin_of, minlength=n_bins)  # (n_bins,) int64
    filled = counts != 0
    return positives[filled] / counts[filled], prob_sums[filled] / counts[filled], counts[filled]


def reliability(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prob_true, prob_pred, counts)``, each ``(B,)`` over the ``B <= n_bins`` non-empty bins.

    ``prob_true``: the fraction of malignant videos in the bin; ``prob_pred``: the mean
    predicted probability; ``counts``: the videos in the bin. ``prob_true`` and
    ``prob_pred`` are ``sklearn.calibration.calibration_curve``'s. An empty input gives
    empty arrays and a MetricWarning.
    """
    n_bins = _check_binning(n_bins, strategy)
    labels, probs = _check(y_true, y_prob)
    if labels.size == 0:
        warnings.warn("reliability of an empty input is empty", MetricWarning, stacklevel=2)
        empty = np.empty(0, dtype=np.float64)
        return empty, empty.copy(), np.empty(0, dtype=np.int64)
    return _binned(labels, probs, n_bins, strategy)


def expected_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> float:
    """ECE ``sum_b (n_b / N) |prob_true_b - prob_pred_b|`` over the bins of :func:`reliability`.

    0 is perfect, 1 the worst. With "uniform" bins and no probability on an inner bin edge
    it is torchmetrics' ``BinaryCalibrationError(n_bins, norm="l1")`` (which puts an edge
    value in the bin above, not below). NaN for an empty input.
    """
    n_bins = _check_binning(n_bins, strategy)
    labels, probs = _check(y_true, y_prob)
    if labels.size == 0:
        return _undefined("expected calibration error of an empty input is undefined")
    prob_true, prob_pred, counts = _binned(labels, probs, n_bins, strategy)
    return float(np.sum(counts / labels.size * np.abs(prob_true - prob_pred)))


def operating_point(y_true: ArrayLike, y_prob: ArrayLike, target_sensitivity: float) -> float:
    """The highest threshold ``t`` among the values of ``y_prob`` with sensitivity >= target.

    Predicting malignant when ``y_prob >= t`` then finds at least ``target_sensitivity``
    of the malignant videos, with as few benign ones called malignant as any threshold
    that does. ``target_sensitivity`` in (0, 1]; NaN without malignant videos.
    """
    target = float(target_sensitivity)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_sensitivity must lie in (0, 1], got {target_sensitivity}")
    labels, probs = _check(y_true, y_prob)
    n_positive = int(labels.sum())
    if n_positive == 0:
        return _undefined("operating point is undefined without positives (label 1) in y_true")
    tps, _ = _ranked_counts(labels, probs)  # (T,) at the distinct values, highest first
    thresholds = np.unique(probs)[::-1]  # (T,) the same distinct values, highest first
    # tps / n_positive, not tps >= target * n_positive: the same float division as
    # metrics.sensitivity, so that sensitivity(y_true, y_prob, t) >= target holds.
    reached = np.flatnonzero(tps / n_positive >= target)  # never empty: the last is 1
    return float(thresholds[reached[0]])


def calibration_summary(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> dict[str, float]:
    """``{"brier", "ece_uniform", "ece_quantile"}`` of the predictions, NaN for no input."""
    return {
        "brier": brier_score(y_true, y_prob),
        "ece_uniform": expected_calibration_error(y_true, y_prob, n_bins, "uniform"),
        "ece_quantile": expected_calibration_error(y_true, y_prob, n_bins, "quantile"),
    }
