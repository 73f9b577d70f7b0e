"""usv_ray.evaluate.calibration against scikit-learn, torchmetrics and hand tables."""

import json
import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from usv_ray.evaluate.calibration import (
    EPS,
    METHODS,
    Calibrator,
    bin_edges,
    brier_score,
    calibration_summary,
    cross_fitted,
    expected_calibration_error,
    fit_calibrator,
    operating_point,
    reliability,
)
from usv_ray.evaluate.metrics import MetricWarning, sensitivity

TOL = 1e-12


def random_case(n: int, seed: int, decimals: int | None = None):
    """``(y_true, y_prob)``, informative and overconfident; ``decimals=1`` puts many
    probabilities exactly on the uniform bin edges 0.0, 0.1, ..., 1.0 (and ties them)."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(np.int64)
    y_true[:2] = [0, 1][:n]  # both classes whenever n >= 2
    y_prob = np.clip(rng.normal(0.3 + 0.4 * y_true, 0.3), 0.0, 1.0)
    if decimals is not None:
        y_prob = np.round(y_prob, decimals)
    return y_true, y_prob


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)
        return fn(*args, **kwargs)


# ---- Brier score, reliability and ECE against scikit-learn ------------------------------


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("n", [1, 2, 7, 500])
@pytest.mark.parametrize("seed", range(4))
def test_brier_is_sklearns(seed, n, decimals):
    y_true, y_prob = random_case(n, seed, decimals)
    expected = brier_score_loss(y_true, y_prob)
    assert abs(no_warning(brier_score, y_true, y_prob) - expected) <= TOL


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [1, 3, 10, 15])
@pytest.mark.parametrize(("n", "decimals"), [(40, None), (300, None), (300, 1), (60, 2)])
@pytest.mark.parametrize("seed", range(5))
def test_reliability_is_calibration_curve(seed, n, decimals, n_bins, strategy):
    y_true, y_prob = random_case(n, seed, decimals)
    if decimals == 1:
        # the edges 0.0, 0.1, 0.5 and 1.0 themselves, and ties on them
        y_prob[2:10] = [0.0, 0.1, 0.1, 0.5, 0.5, 1.0, 1.0, 0.0]
    prob_true, prob_pred, counts = no_warning(reliability, y_true, y_prob, n_bins, strategy)
    expected_true, expected_pred = calibration_curve(
        y_true, y_prob, n_bins=n_bins, strategy=strategy
    )
    np.testing.assert_array_equal(prob_true, expected_true)
    np.testing.assert_array_equal(prob_pred, expected_pred)
    assert counts.dtype == np.int64 and counts.sum() == n and (counts > 0).all()
    # a bin's positives are a whole number of its videos
    np.testing.assert_allclose(prob_true * counts, np.round(prob_true * counts), atol=1e-9)


def hand_ece(y_true, y_prob, n_bins, strategy) -> float:
    """ECE from calibration_curve's output, the bin counts found by a plain loop over rows:
    a row belongs to the first bin whose upper edge it does not exceed."""
    prob_true, prob_pred = calibration_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    edges = bin_edges(y_prob, n_bins, strategy)
    counts = np.zeros(n_bins, dtype=np.int64)
    for p in y_prob:
        counts[next(b for b in range(n_bins) if b == n_bins - 1 or p <= edges[b + 1])] += 1
    counts = counts[counts > 0]
    return float(
        sum(
            c / len(y_prob) * abs(t - m)
            for c, t, m in zip(counts, prob_true, prob_pred, strict=True)
        )
    )


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [2, 10, 15])
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", range(4))
def test_ece_by_hand_from_calibration_curve(seed, decimals, n_bins, strategy):
    y_true, y_prob = random_case(200, seed, decimals)
    got = no_warning(expected_calibration_error, y_true, y_prob, n_bins, strategy)
    assert got == pytest.approx(hand_ece(y_true, y_prob, n_bins, strategy), abs=TOL)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("seed", range(4))
def test_ece_is_torchmetrics_binary_calibration_error(seed, n_bins):
    classification = pytest.importorskip("torchmetrics.classification")  # a dev dependency
    import torch

    rng = np.random.default_rng(seed)
    y_prob = rng.random(400)  # continuous in [0, 1)
    y_true = (rng.random(400) < y_prob**2).astype(np.int64)  # miscalibrated on purpose
    # torchmetrics puts an edge value in the bin above, sklearn below: keep off the edges.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    assert np.abs(y_prob[:, None] - edges[None, :]).min() > 1e-9
    metric = classification.BinaryCalibrationError(n_bins=n_bins, norm="l1")
    expected = float(metric(torch.from_numpy(y_prob), torch.from_numpy(y_true)))
    got = expected_calibration_error(y_true, y_prob, n_bins, "uniform")
    assert got == pytest.approx(expected, abs=1e-6)


# (y_true, y_prob, n_bins, prob_true, prob_pred, counts, ece); an inner edge value is in
# the bin below it, 0.0 in the first bin and 1.0 in the last.
RELIABILITY_TABLE = [
    (
        [0, 1, 0, 1, 0, 1],
        [0.0, 0.1, 0.15, 0.5, 0.5, 1.0],
        10,
        [0.5, 0.0, 0.5, 1.0],
        [0.05, 0.15, 0.5, 1.0],
        [2, 1, 2, 1],
        (2 * 0.45 + 0.15) / 6,
    ),
    (
        [0, 1, 0, 1, 0, 1],
        [0.0, 0.1, 0.15, 0.5, 0.5, 1.0],
        2,
        [0.4, 1.0],
        [0.25, 1.0],
        [5, 1],
        5 / 6 * 0.15,
    ),
    ([1, 1], [0.7, 0.7], 10, [1.0], [0.7], [2], 0.3),
    ([0, 1], [0.5, 0.5], 1, [0.5], [0.5], [2], 0.0),
]


@pytest.mark.parametrize(
    ("y_true", "y_prob", "n_bins", "prob_true", "prob_pred", "counts", "ece"), RELIABILITY_TABLE
)
def test_reliability_table(y_true, y_prob, n_bins, prob_true, prob_pred, counts, ece):
    got_true, got_pred, got_counts = reliability(y_true, y_prob, n_bins)
    np.testing.assert_allclose(got_true, prob_true, atol=TOL)
    np.testing.assert_allclose(got_pred, prob_pred, atol=TOL)
    np.testing.assert_array_equal(got_counts, counts)
    assert expected_calibration_error(y_true, y_prob, n_bins) == pytest.approx(ece, abs=TOL)


def test_bin_edges():
    y_prob = np.array([0.05, 0.2, 0.2, 0.2, 0.9, 0.3, 0.7])
    np.testing.assert_array_equal(bin_edges(y_prob, 4, "uniform"), [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(
        bin_edges(y_prob, 3, "quantile"), np.percentile(y_prob, np.linspace(0, 1, 4) * 100)
    )
    # ties repeat a quantile edge: an empty bin, left out of reliability()
    assert bin_edges(y_prob, 4, "quantile")[1] == bin_edges(y_prob, 4, "quantile")[2] == 0.2
    assert reliability(np.zeros(7, dtype=int), y_prob, 4, "quantile")[2].size == 3


def test_calibration_summary():
    y_true, y_prob = random_case(150, 3)
    summary = no_warning(calibration_summary, y_true, y_prob, n_bins=8)
    assert summary == {
        "brier": brier_score(y_true, y_prob),
        "ece_uniform": expected_calibration_error(y_true, y_prob, 8, "uniform"),
        "ece_quantile": expected_calibration_error(y_true, y_prob, 8, "quantile"),
    }
    with pytest.warns(MetricWarning, match="empty"):
        assert all(np.isnan(v) for v in calibration_summary([], []).values())


def test_empty_input_is_nan_or_empty_with_warning():
    for metric in (brier_score, expected_calibration_error):
        with pytest.warns(MetricWarning, match="empty input is undefined"):
            assert np.isnan(metric([], []))
    with pytest.warns(MetricWarning, match="empty"):
        prob_true, prob_pred, counts = reliability([], [], strategy="quantile")
    assert prob_true.size == prob_pred.size == counts.size == 0


BAD_INPUTS = [
    ([[0, 1]], [[0.1, 0.2]], "y_true must be 1-D"),
    ([0, 1, 1], [0.1, 0.2], "same length"),
    ([0, 2], [0.1, 0.2], "y_true must be 0 or 1"),
    ([0, 1], [0.1, np.nan], "finite"),
    ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
]
FUNCTIONS = [
    brier_score,
    reliability,
    expected_calibration_error,
    calibration_summary,
    fit_calibrator,
    lambda y_true, y_prob: operating_point(y_true, y_prob, 0.9),
    lambda y_true, y_prob: cross_fitted(y_true, y_prob, np.arange(np.size(y_true)) % 2),
]


@pytest.mark.parametrize(("y_true", "y_prob", "message"), BAD_INPUTS)
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_bad_inputs_raise(fn, y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        fn(y_true, y_prob)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_bins": 0}, "n_bins must be a positive integer"),
        ({"n_bins": 2.5}, "n_bins must be a positive integer"),
        ({"strategy": "kmeans"}, "strategy must be one of"),
    ],
)
def test_bad_binning_raises(kwargs, message):
    for fn in (reliability, expected_calibration_error):
        with pytest.raises(ValueError, match=message):
            fn([0, 1], [0.2, 0.8], **kwargs)
    with pytest.raises(ValueError, match=message):
        bin_edges([0.2, 0.8], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        bin_edges([], 10, "quantile")


# ---- calibrators -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_apply_is_isotonic_regression_predict(seed):
    y_true, y_prob = random_case(200, seed, decimals=2 if seed % 2 else None)
    calibrator = no_warning(fit_calibrator, y_true, y_prob, "isotonic")
    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
    model.fit(y_prob, y_true)
    assert calibrator.params == {
        "x": model.X_thresholds_.tolist(),
        "y": model.y_thresholds_.tolist(),
    }
    rng = np.random.default_rng(100 + seed)
    # new points, the fitted thresholds themselves, and beyond both ends
    new = np.r_[rng.random(300), model.X_thresholds_, 0.0, 1.0]
    np.testing.assert_allclose(calibrator.apply(new), model.predict(new), rtol=0, atol=TOL)
    assert (np.diff(calibrator.apply(np.sort(new))) >= 0).all()  # non-decreasing


@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (2.0, -0.5), (0.5, 0.8), (-1.0, 0.3)])
def test_platt_recovers_a_known_sigmoid(a, b):
    rng = np.random.default_rng(0)
    raw = sigmoid(rng.normal(0.0, 1.5, 20_000))  # (N,) the model's probability
    y_true = (rng.random(raw.size) < sigmoid(a * logit(raw) + b)).astype(np.int64)
    calibrator = no_warning(fit_calibrator, y_true, raw, "platt")
    assert calibrator.params["a"] == pytest.approx(a, abs=0.1)
    assert calibrator.params["b"] == pytest.approx(b, abs=0.1)
    assert (calibrator.n_videos, calibrator.n_positive) == (raw.size, int(y_true.sum()))


@pytest.mark.parametrize("seed", range(4))
def test_platt_apply_is_logistic_regression_predict_proba(seed):
    y_true, y_prob = random_case(300, seed, decimals=1)  # 0.0 and 1.0 exercise the clip
    calibrator = no_warning(fit_calibrator, y_true, y_prob, "platt")
    feature = logit(np.clip(y_prob, EPS, 1 - EPS))[:, None]  # (N, 1)
    model = LogisticRegression(C=np.inf).fit(feature, y_true)
    new = np.r_[np.random.default_rng(seed).random(200), 0.0, 1.0]
    expected = model.predict_proba(logit(np.clip(new, EPS, 1 - EPS))[:, None])[:, 1]
    got = calibrator.apply(new)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert got.dtype == np.float64 and ((got >= 0) & (got <= 1)).all()


def test_identity_apply_is_input():
    calibrator = Calibrator("identity", {}, 0, 0)
    probs = np.array([0.0, 0.3, 1.0])
    np.testing.assert_array_equal(calibrator.apply(probs), probs)
    np.testing.assert_array_equal(calibrator.apply([0.5]), [0.5])
    assert calibrator.apply([]).shape == (0,)


@pytest.mark.parametrize("method", list(METHODS))
def test_dict_round_trip_through_json(method):
    y_true, y_prob = random_case(120, 1, decimals=2)
    calibrator = fit_calibrator(y_true, y_prob, method)
    as_dict = calibrator.to_dict()
    assert set(as_dict) == {"method", "params", "n_videos", "n_positive"}
    for value in as_dict["params"].values():
        # plain Python floats, not numpy scalars
        assert all(type(v) is float for v in (value if isinstance(value, list) else [value]))
    again = Calibrator.from_dict(json.loads(json.dumps(as_dict)))
    assert again == calibrator
    np.testing.assert_array_equal(again.apply(y_prob), calibrator.apply(y_prob))


def test_constructor_normalises_numpy_params():
    calibrator = Calibrator("platt", {"a": np.float64(2.0), "b": np.int64(-1)}, np.int64(5), 2)
    assert calibrator.params == {"a": 2.0, "b": -1.0} and type(calibrator.params["b"]) is float
    assert type(calibrator.n_videos) is int
    json.dumps(calibrator.to_dict())


GOOD = {"method": "platt", "params": {"a": 1.0, "b": 0.0}, "n_videos": 10, "n_positive": 4}
BAD_DICTS = [
    ({**GOOD, "method": "beta"}, "unknown calibration method 'beta'"),
    ({**GOOD, "params": {"a": 1.0}}, r"missing \['b'\]"),
    ({**GOOD, "params": {"a": 1.0, "b": 0.0, "c": 2.0}}, r"got \['c'\]"),
    ({**GOOD, "method": "isotonic"}, r"missing \['x', 'y'\]"),
    ({**GOOD, "method": "identity"}, r"got \['a', 'b'\]"),
    ({**GOOD, "params": {"a": float("nan"), "b": 0.0}}, "a must be finite"),
    ({**GOOD, "params": {"a": "1", "b": 0.0}}, "a must be a real number"),
    ({**GOOD, "params": None}, "params must be a mapping"),
    (
        {**GOOD, "method": "isotonic", "params": {"x": [0.1, 0.5], "y": [0.2]}},
        "of one length",
    ),
    (
        {**GOOD, "method": "isotonic", "params": {"x": [0.5, 0.1], "y": [0.2, 0.4]}},
        "non-decreasing",
    ),
    ({**GOOD, "method": "isotonic", "params": {"x": [0.5], "y": [1.5]}}, r"\[0, 1\]"),
    ({**GOOD, "method": "isotonic", "params": {"x": 0.5, "y": [0.5]}}, "flat list"),
    ({k: v for k, v in GOOD.items() if k != "params"}, r"missing \['params'\]"),
    ({**GOOD, "fitted_on": "fold 3"}, r"unknown keys \['fitted_on'\]"),
    ({**GOOD, "n_positive": 11}, "cannot exceed"),
    ({**GOOD, "n_videos": -1}, "n_videos must be a non-negative integer"),
    ({**GOOD, "n_videos": 10.0}, "n_videos must be a non-negative integer"),
    ([("method", "platt")], "must be a mapping"),
]


@pytest.mark.parametrize(("d", "message"), BAD_DICTS)
def test_from_dict_rejects_bad_input(d, message):
    with pytest.raises(ValueError, match=message):
        Calibrator.from_dict(d)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
@pytest.mark.parametrize(
    ("y_true", "y_prob", "why"),
    [
        ([0, 0, 0], [0.1, 0.5, 0.9], "only class 0"),
        ([1, 1], [0.2, 0.7], "only class 1"),
        ([1], [0.3], "1 row"),
        ([], [], "0 row"),
    ],
)
def test_unfittable_input_gives_identity_with_warning(method, y_true, y_prob, why):
    with pytest.warns(MetricWarning, match=f"{why}.*identity"):
        calibrator = fit_calibrator(y_true, y_prob, method)
    assert calibrator == Calibrator("identity", {}, len(y_true), int(np.sum(y_true)))
    np.testing.assert_array_equal(calibrator.apply(y_prob), y_prob)


def test_fit_identity_and_unknown_method():
    assert no_warning(fit_calibrator, [0, 0], [0.1, 0.2], "identity").method == "identity"
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        fit_calibrator([0, 0], [0.1, 0.2], "beta")  # before the one-class fallback


def test_platt_on_separable_classes_warns_and_stays_finite():
    y_prob = np.linspace(0.05, 0.95, 40)
    y_true = (y_prob > 0.5).astype(np.int64)
    with pytest.warns(MetricWarning, match="separates the classes"):
        calibrator = fit_calibrator(y_true, y_prob, "platt")
    assert np.isfinite(calibrator.params["a"]) and calibrator.params["a"] > 5
    json.dumps(calibrator.to_dict())


# ---- cross-fitting ---------------------------------------------------------------------


def test_cross_fitted_uses_only_the_other_folds():
    # Fold 0 is anti-calibrated (low p malignant), fold 1 well ordered. Each fold's rows get
    # the isotonic fit of the other fold: fold 0 the step of fold 1, which is wrong for
    # every row of fold 0; fold 1 the flat 0.5 of fold 0 (pooled, as it decreases). A
    # calibrator that saw a row's own fold could not give either.
    y_prob = np.array([0.2, 0.2, 0.8, 0.8, 0.3, 0.3, 0.7, 0.7])
    y_true = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    got = no_warning(cross_fitted, y_true, y_prob, folds, "isotonic")
    np.testing.assert_allclose(got, [0, 0, 1, 1, 0.5, 0.5, 0.5, 0.5], atol=TOL)
    in_sample = fit_calibrator(y_true, y_prob, "isotonic").apply(y_prob)
    assert not np.allclose(got, in_sample)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_cross_fitted_ignores_a_rows_own_labels(method):
    y_true, y_prob = random_case(250, 7, decimals=2)
    folds = np.random.default_rng(0).integers(0, 5, y_true.size)  # (N,)
    got = no_warning(cross_fitted, y_true, y_prob, folds, method)
    for fold in range(5):
        own = folds == fold
        flipped = np.where(own, 1 - y_true, y_true)  # change only this fold's labels
        again = no_warning(cross_fitted, flipped, y_prob, folds, method)
        np.testing.assert_array_equal(again[own], got[own])  # its rows do not move
        assert not np.array_equal(again[~own], got[~own])  # the others' calibrators do
        expected = fit_calibrator(y_true[~own], y_prob[~own], method).apply(y_prob[own])
        np.testing.assert_array_equal(got[own], expected)


def test_cross_fitted_platt_improves_an_overconfident_model():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 1.0, 3000)
    y_true = (rng.random(z.size) < sigmoid(z)).astype(np.int64)
    overconfident = sigmoid(3.0 * z)  # (N,) right ranking, far too sure
    calibrated = cross_fitted(y_true, overconfident, np.arange(z.size) % 5, "platt")
    before = calibration_summary(y_true, overconfident)
    after = calibration_summary(y_true, calibrated)
    assert after["brier"] < before["brier"]
    assert after["ece_uniform"] < 0.5 * before["ece_uniform"]


def test_cross_fitted_single_fold_warns_and_returns_input():
    y_true, y_prob = random_case(30, 0)
    with pytest.warns(MetricWarning, match="at least 2 folds"):
        got = cross_fitted(y_true, y_prob, np.zeros(30, dtype=int))
    np.testing.assert_array_equal(got, y_prob)
    with pytest.warns(MetricWarning, match="at least 2 folds"):
        assert cross_fitted([], [], []).size == 0


def test_cross_fitted_one_class_complement_warns_and_keeps_that_fold():
    y_true = np.array([0, 0, 1, 1, 0, 1])
    y_prob = np.array([0.1, 0.2, 0.8, 0.3, 0.6, 0.9])
    folds = np.array([0, 0, 1, 1, 1, 1])
    with pytest.warns(MetricWarning, match="only class 0.*identity"):
        got = cross_fitted(y_true, y_prob, folds, "platt")
    # fold 1 is calibrated by fold 0's two benign rows alone: nothing to fit, the identity
    np.testing.assert_array_equal(got[2:], y_prob[2:])
    platt = fit_calibrator(y_true[2:], y_prob[2:], "platt")
    np.testing.assert_array_equal(got[:2], platt.apply(y_prob[:2]))


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ([0, 1, 0], "one entry per row"),
        ([[0, 1, 0, 1]], "folds must be 1-D"),
        ([0.0, 1.0, 0.0, 1.0], "folds must hold integers"),
    ],
)
def test_cross_fitted_bad_folds_raise(folds, message):
    with pytest.raises(ValueError, match=message):
        cross_fitted([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], folds)
    with pytest.raises(ValueError, match="unknown calibration method"):
        cross_fitted([0, 1], [0.1, 0.9], [0, 0], "beta")


# ---- operating point -------------------------------------------------------------------

OPERATING_TABLE = [
    # sensitivity at 0.9, 0.8, 0.7, 0.6, 0.4: 1/3, 2/3, 2/3, 1, 1
    ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.4], 0.6, 0.8),
    ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.4], 1.0, 0.6),
    ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.4], 1 / 3, 0.9),
    ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.4], 2 / 3, 0.8),
    ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.4], 0.67, 0.6),
    # ties form one threshold: at 0.5 two of three positives
    ([1, 0, 1, 1], [0.5, 0.5, 0.5, 0.2], 0.5, 0.5),
    ([1, 0, 1, 1], [0.5, 0.5, 0.5, 0.2], 0.7, 0.2),
    ([1], [0.3], 0.01, 0.3),
    # 7 of 10 is exactly 0.7 (7 >= 0.7 * 10 would fail in floating point)
    ([1] * 10 + [0], [*np.linspace(1.0, 0.1, 10), 0.95], 0.7, 0.4),
]


@pytest.mark.parametrize(("y_true", "y_prob", "target", "expected"), OPERATING_TABLE)
def test_operating_point_table(y_true, y_prob, target, expected):
    got = no_warning(operating_point, y_true, y_prob, target)
    assert got == pytest.approx(expected, abs=TOL)
    assert sensitivity(y_true, y_prob, got) >= target


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_operating_point_is_the_highest_threshold_that_reaches_the_target(seed, target):
    y_true, y_prob = random_case(200, seed, decimals=2)
    got = operating_point(y_true, y_prob, target)
    assert got in set(y_prob)
    assert sensitivity(y_true, y_prob, got) >= target
    higher = np.unique(y_prob[y_prob > got])
    assert all(sensitivity(y_true, y_prob, t) < target for t in higher)


def test_operating_point_undefined_and_bad_target():
    for y_true, y_prob in [([0, 0], [0.1, 0.9]), ([], [])]:
        with pytest.warns(MetricWarning, match="without positives"):
            assert np.isnan(operating_point(y_true, y_prob, 0.9))
    for target in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"target_sensitivity must lie in \(0, 1\]"):
            operating_point([0, 1], [0.1, 0.9], target)
