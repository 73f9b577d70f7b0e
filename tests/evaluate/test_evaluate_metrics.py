"""usv_ray.evaluate.metrics against scikit-learn, hand tables and a brute-force bootstrap."""

import warnings
from functools import partial

import numpy as np
import pytest
from sklearn import metrics as skm

from usv_ray.evaluate.metrics import (
    METRICS,
    THRESHOLD_METRICS,
    MetricWarning,
    accuracy,
    average_precision,
    bootstrap_ci,
    confusion,
    f1,
    pr_curve,
    precision,
    ratio_ci,
    roc_auc,
    roc_curve,
    sensitivity,
    specificity,
    summarize,
)

TOL = 1e-12
THRESHOLD_FNS = {
    "accuracy": accuracy,
    "precision": precision,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "f1": f1,
}
SKLEARN_THRESHOLD = {
    "accuracy": skm.accuracy_score,
    "precision": partial(skm.precision_score, zero_division=np.nan),
    "sensitivity": partial(skm.recall_score, zero_division=np.nan),
    "specificity": partial(skm.recall_score, pos_label=0, zero_division=np.nan),
    "f1": partial(skm.f1_score, zero_division=np.nan),
}


def random_case(n: int, seed: int, decimals: int | None, both_classes: bool = False):
    """``(y_true, y_prob)``; ``decimals=1`` makes heavy ties, a skewed prevalence is likely."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.1, 0.9)
    y_true = (rng.random(n) < prevalence).astype(np.int64)
    if both_classes:
        y_true[:2] = [0, 1]
    # Informative scores: malignant videos score higher on average.
    y_prob = np.clip(rng.normal(0.35 + 0.3 * y_true, 0.25), 0.0, 1.0)
    if decimals is not None:
        y_prob = np.round(y_prob, decimals)
    return y_true, y_prob


def ours(fn, *args, **kwargs) -> float:
    """Call a metric; a MetricWarning must come exactly when the value is NaN."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    warned = any(issubclass(w.category, MetricWarning) for w in caught)
    assert warned == bool(np.isnan(value)), (fn.__name__, value, caught)
    return value


def sklearn_value(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(*args, **kwargs))


# ---- against scikit-learn ------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("n", [1, 2, 5, 20, 300])
@pytest.mark.parametrize("seed", range(6))
def test_threshold_metrics_match_sklearn(seed, n, decimals, threshold):
    y_true, y_prob = random_case(n, seed, decimals)
    y_pred = (y_prob >= threshold).astype(np.int64)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    assert confusion(y_true, y_prob, threshold) == (tn, fp, fn, tp)
    for name, fn_ in THRESHOLD_FNS.items():
        expected = sklearn_value(SKLEARN_THRESHOLD[name], y_true, y_pred)
        got = ours(fn_, y_true, y_prob, threshold)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("n", [2, 3, 10, 100, 2000])
@pytest.mark.parametrize("seed", range(8))
def test_ranking_metrics_match_sklearn(seed, n, decimals):
    y_true, y_prob = random_case(n, seed, decimals, both_classes=True)
    assert abs(ours(roc_auc, y_true, y_prob) - skm.roc_auc_score(y_true, y_prob)) <= TOL
    expected_ap = skm.average_precision_score(y_true, y_prob)
    assert abs(ours(average_precision, y_true, y_prob) - expected_ap) <= TOL


@pytest.mark.parametrize("seed", range(4))
def test_curves_are_sklearns(seed):
    y_true, y_prob = random_case(50, seed, 1, both_classes=True)
    for got, expected in zip(
        roc_curve(y_true, y_prob) + pr_curve(y_true, y_prob),
        skm.roc_curve(y_true, y_prob) + skm.precision_recall_curve(y_true, y_prob),
        strict=True,
    ):
        np.testing.assert_array_equal(got, expected)


# ---- hand-checkable tables -----------------------------------------------------------

# (y_true, y_prob, threshold, (tn, fp, fn, tp), accuracy, precision, sens, spec, f1)
THRESHOLD_TABLE = [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5, (2, 0, 1, 1), 0.75, 1.0, 0.5, 1.0, 2 / 3),
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.3, (1, 1, 0, 2), 0.75, 2 / 3, 1.0, 0.5, 0.8),
    # prob == threshold counts as positive
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, (0, 2, 0, 2), 0.5, 0.5, 1.0, 0.0, 2 / 3),
    ([True, False], [1.0, 0.0], 0.5, (1, 0, 0, 1), 1.0, 1.0, 1.0, 1.0, 1.0),
    ([1, 1, 0], [0.2, 0.1, 0.9], 0.5, (0, 1, 2, 0), 0.0, 0.0, 0.0, 0.0, 0.0),
    # no positive predictions: precision undefined, f1 is 0 (positives exist)
    ([0, 1, 1], [0.1, 0.2, 0.3], 0.5, (1, 0, 2, 0), 1 / 3, np.nan, 0.0, 1.0, 0.0),
    # only benign videos, all called benign: sensitivity, precision and f1 undefined
    ([0, 0, 0], [0.1, 0.2, 0.3], 0.5, (3, 0, 0, 0), 1.0, np.nan, np.nan, 1.0, np.nan),
    # only malignant videos: specificity undefined
    ([1, 1], [0.6, 0.3], 0.5, (0, 0, 1, 1), 0.5, 1.0, 0.5, np.nan, 2 / 3),
    ([], [], 0.5, (0, 0, 0, 0), np.nan, np.nan, np.nan, np.nan, np.nan),
]


@pytest.mark.parametrize(
    ("y_true", "y_prob", "threshold", "counts", "acc", "prec", "sens", "spec", "f1_"),
    THRESHOLD_TABLE,
)
def test_threshold_table(y_true, y_prob, threshold, counts, acc, prec, sens, spec, f1_):
    assert confusion(y_true, y_prob, threshold) == counts
    for fn_, expected in [
        (accuracy, acc),
        (precision, prec),
        (sensitivity, sens),
        (specificity, spec),
        (f1, f1_),
    ]:
        got = ours(fn_, y_true, y_prob, threshold)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, equal_nan=True)


# (y_true, y_prob, roc_auc, average_precision)
RANKING_TABLE = [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75, (1 + 2 / 3) / 2),
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, 0.5),  # all tied: ties count half
    ([0, 1], [0.3, 0.3], 0.5, 0.5),
    ([0, 0, 1], [0.2, 0.7, 0.7], 0.75, 0.5),  # one positive tied with one negative
    ([1, 0], [0.9, 0.1], 1.0, 1.0),
    ([1, 0], [0.1, 0.9], 0.0, 0.5),
]


@pytest.mark.parametrize(("y_true", "y_prob", "auc", "ap"), RANKING_TABLE)
def test_ranking_table(y_true, y_prob, auc, ap):
    assert ours(roc_auc, y_true, y_prob) == pytest.approx(auc, abs=TOL)
    assert ours(average_precision, y_true, y_prob) == pytest.approx(ap, abs=TOL)


# ---- undefined inputs: NaN and a warning, never a crash ------------------------------


@pytest.mark.parametrize(
    ("y_true", "y_prob"),
    [([0, 0, 0], [0.1, 0.5, 0.9]), ([1, 1], [0.2, 0.2]), ([1], [0.3]), ([], [])],
)
@pytest.mark.parametrize("metric", [roc_auc, average_precision])
def test_ranking_one_class_or_empty_is_nan(metric, y_true, y_prob):
    with pytest.warns(MetricWarning, match="undefined"):
        assert np.isnan(metric(y_true, y_prob))


@pytest.mark.parametrize(("y_true", "y_prob"), [([0, 0], [0.1, 0.9]), ([], [])])
@pytest.mark.parametrize("curve", [roc_curve, pr_curve])
def test_curves_warn_on_one_class_or_empty(curve, y_true, y_prob):
    with pytest.warns(MetricWarning):
        out = curve(y_true, y_prob)
    assert len(out) == 3


@pytest.mark.parametrize("name", list(THRESHOLD_FNS))
def test_threshold_metric_empty_is_nan(name):
    with pytest.warns(MetricWarning, match="undefined"):
        assert np.isnan(THRESHOLD_FNS[name](np.array([], dtype=int), np.array([])))


# ---- bad inputs: ValueError naming the problem ---------------------------------------

BAD_INPUTS = [
    ([[0, 1]], [[0.1, 0.2]], "y_true must be 1-D"),
    ([0, 1], [[0.1], [0.2]], "y_prob must be 1-D"),
    (0, 0.5, "y_true must be 1-D"),
    ([0, 1, 1], [0.1, 0.2], "same length"),
    ([0, 2], [0.1, 0.2], r"y_true must be 0 or 1, found \[2\]"),
    ([-1, 1], [0.1, 0.2], "y_true must be 0 or 1"),
    ([0.0, 1.0], [0.1, 0.2], "integer or boolean"),
    (["a", "b"], [0.1, 0.2], "integer or boolean"),
    ([0, 1], [0.1, np.nan], "finite"),
    ([0, 1], [0.1, np.inf], "finite"),
    ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
    ([0, 1], [-0.1, 0.2], r"\[0, 1\]"),
    ([0, 1], ["0.1", "0.2"], "real numbers"),
]


@pytest.mark.parametrize(("y_true", "y_prob", "message"), BAD_INPUTS)
@pytest.mark.parametrize("name", list(METRICS))
def test_bad_inputs_raise(name, y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        METRICS[name](y_true, y_prob)


@pytest.mark.parametrize(("y_true", "y_prob", "message"), BAD_INPUTS[:3])
def test_bad_inputs_raise_in_bootstrap_and_curves(y_true, y_prob, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(accuracy, y_true, y_prob, [0, 1], rng=rng)
    for curve in (roc_curve, pr_curve, confusion):
        with pytest.raises(ValueError, match=message):
            curve(y_true, y_prob)


def test_bad_threshold_groups_and_bootstrap_settings():
    y_true, y_prob = [0, 1, 1], [0.2, 0.6, 0.9]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="threshold must be finite"):
        accuracy(y_true, y_prob, threshold=np.nan)
    with pytest.raises(ValueError, match="groups must have one entry per row"):
        bootstrap_ci(accuracy, y_true, y_prob, [0, 1], rng=rng)
    with pytest.raises(ValueError, match="groups must be 1-D"):
        bootstrap_ci(accuracy, y_true, y_prob, [[0, 1, 2]], rng=rng)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(accuracy, y_true, y_prob, [0, 1, 2], n_boot=0, rng=rng)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(accuracy, y_true, y_prob, [0, 1, 2], level=1.0, rng=rng)


# ---- bootstrap over patients ---------------------------------------------------------


def patient_case(n_patients: int = 60, seed: int = 0):
    """Several videos per patient; a patient's videos share label and a patient effect."""
    rng = np.random.default_rng(seed)
    videos = rng.integers(1, 6, n_patients)  # (P,) videos per patient
    groups = np.repeat([f"patient-{i:03d}" for i in range(n_patients)], videos)  # (N,)
    patient_label = rng.integers(0, 2, n_patients)
    patient_effect = rng.normal(0.0, 0.15, n_patients)
    y_true = np.repeat(patient_label, videos)
    mean = np.repeat(0.35 + 0.3 * patient_label + patient_effect, videos)
    y_prob = np.clip(mean + rng.normal(0.0, 0.1, y_true.size), 0.0, 1.0)
    return y_true, y_prob, groups


def brute_force_ci(metric, y_true, y_prob, groups, n_boot, level, rng):
    """The documented resampling written as a plain loop, on the same rng draws."""
    keys = np.unique(groups)
    draws = rng.integers(0, keys.size, size=(n_boot, keys.size))
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for drawn in draws:
            rows = np.concatenate([np.flatnonzero(groups == keys[g]) for g in drawn])
            values.append(metric(y_true[rows], y_prob[rows]))
    values = np.array(values)
    values = values[~np.isnan(values)]
    tail = 50 * (1 - level)
    return tuple(np.percentile(values, [tail, 100 - tail]))


@pytest.mark.parametrize("name", list(METRICS))
def test_bootstrap_equals_brute_force_loop(name):
    y_true, y_prob, groups = patient_case(n_patients=25, seed=3)
    got = bootstrap_ci(
        METRICS[name], y_true, y_prob, groups, n_boot=200, level=0.9, rng=np.random.default_rng(7)
    )
    expected = brute_force_ci(
        METRICS[name], y_true, y_prob, groups, 200, 0.9, np.random.default_rng(7)
    )
    assert got == expected


@pytest.mark.parametrize("name", list(METRICS))
def test_bootstrap_contains_estimate_and_is_reproducible(name):
    y_true, y_prob, groups = patient_case()
    low, high = bootstrap_ci(METRICS[name], y_true, y_prob, groups, rng=np.random.default_rng(1))
    assert low <= METRICS[name](y_true, y_prob) <= high
    assert low < high
    again = bootstrap_ci(METRICS[name], y_true, y_prob, groups, rng=np.random.default_rng(1))
    assert again == (low, high)


def test_bootstrap_resamples_whole_patients():
    # 12 patients x 15 videos; each patient's videos are all right or all wrong, so the
    # effective sample size is 12 patients, not 180 videos.
    n_patients, videos = 12, 15
    correct = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    label = np.arange(n_patients) % 2
    y_true = np.repeat(label, videos)
    y_prob = np.repeat(np.where(correct, label, 1 - label) * 0.8 + 0.1, videos)
    groups = np.repeat(np.arange(n_patients), videos)

    by_patient = bootstrap_ci(accuracy, y_true, y_prob, groups, rng=np.random.default_rng(0))
    by_video = bootstrap_ci(
        accuracy, y_true, y_prob, np.arange(y_true.size), rng=np.random.default_rng(0)
    )
    assert accuracy(y_true, y_prob) == 0.75
    width_patient = by_patient[1] - by_patient[0]
    width_video = by_video[1] - by_video[0]
    # Binomial standard errors: sqrt(.75 * .25 / 12) = 0.125 vs sqrt(.75 * .25 / 180) = 0.032
    assert width_patient > 0.35 and width_video < 0.15
    # Every patient resample is a mean over whole patients: a multiple of 1/12.
    assert np.allclose(np.array(by_patient) * 12, np.round(np.array(by_patient) * 12))


def test_bootstrap_all_one_class_is_nan_with_warning():
    y_true, y_prob, groups = np.zeros(30, dtype=int), np.linspace(0, 1, 30), np.arange(30) // 3
    rng = np.random.default_rng(0)
    with pytest.warns(MetricWarning, match="bootstrap replicates"):
        assert np.isnan(bootstrap_ci(roc_auc, y_true, y_prob, groups, rng=rng)).all()
    with pytest.warns(MetricWarning):
        assert np.isnan(bootstrap_ci(accuracy, [], [], [], rng=np.random.default_rng(0))).all()


def test_bootstrap_drops_one_class_resamples_silently():
    # Two patients only, one benign and one malignant: half the resamples hold one class.
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([0.1, 0.6, 0.4, 0.9])
    groups = np.array(["a", "a", "b", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)
        low, high = bootstrap_ci(roc_auc, y_true, y_prob, groups, rng=np.random.default_rng(0))
    assert low == high == 0.75  # the only two-class resample is the data itself


def test_threshold_bootstrap_is_fast():
    import time

    rng = np.random.default_rng(0)
    y_true, y_prob = rng.integers(0, 2, 3000), rng.random(3000)
    groups = rng.integers(0, 800, 3000)
    start = time.perf_counter()
    bootstrap_ci(f1, y_true, y_prob, groups, n_boot=1000, rng=rng)
    assert time.perf_counter() - start < 1.0


# ---- summarize ------------------------------------------------------------------------


def test_metrics_in_paper_order():
    assert list(METRICS) == [
        "accuracy",
        "precision",
        "sensitivity",
        "specificity",
        "f1",
        "roc_auc",
        "average_precision",
    ]
    assert set(list(METRICS)[:5]) == THRESHOLD_METRICS


def test_summarize_matches_bootstrap_ci_per_metric():
    y_true, y_prob, groups = patient_case(n_patients=40, seed=2)
    summary = summarize(
        y_true, y_prob, groups, threshold=0.6, n_boot=200, rng=np.random.default_rng(5)
    )
    assert list(summary) == list(METRICS)
    for name, metric in METRICS.items():
        bound = partial(metric, threshold=0.6) if name in THRESHOLD_METRICS else metric
        low, high = bootstrap_ci(
            bound, y_true, y_prob, groups, n_boot=200, rng=np.random.default_rng(5)
        )
        assert summary[name] == {"value": bound(y_true, y_prob), "low": low, "high": high}
        assert low <= summary[name]["value"] <= high


def test_ratio_ci_is_the_ratio_of_sums_over_resampled_patients():
    hits = np.array([3, 0, 2, 5, 1, 4])  # per patient: pairs joined rightly, of all pairs
    pairs = np.array([4, 2, 2, 6, 3, 4])
    low, high = ratio_ci(hits, pairs, n_boot=400, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)
    weights = rng.multinomial(6, np.full(6, 1 / 6), size=400)  # the same draws, by hand
    values = [(w * hits).sum() / (w * pairs).sum() for w in weights]
    assert np.allclose((low, high), np.percentile(values, [2.5, 97.5]), rtol=0, atol=1e-12)
    assert low <= hits.sum() / pairs.sum() <= high


def test_ratio_ci_drops_resamples_without_a_denominator():
    # one patient of two has no pair: a quarter of resamples draw it twice and are dropped
    low, high = ratio_ci([1, 0], [2, 0], rng=np.random.default_rng(0))
    assert low == high == 0.5
    with pytest.warns(MetricWarning, match="denominator"):
        assert np.isnan(ratio_ci([0, 0], [0, 0], rng=np.random.default_rng(0))).all()
    with pytest.warns(MetricWarning, match="no group"):
        assert np.isnan(ratio_ci([], [], rng=np.random.default_rng(0))).all()
    with pytest.raises(ValueError, match="one numerator per denominator"):
        ratio_ci([1, 2], [3], rng=np.random.default_rng(0))
