"""usv_ray.evaluate.delong against hand tables, an O(P N) reference, sklearn and a bootstrap."""

import dataclasses
import math
import time
import warnings

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from usv_ray.evaluate.delong import (
    DelongComparison,
    DelongResult,
    _sorted_midranks,
    delong_auc,
    delong_test,
)
from usv_ray.evaluate.metrics import MetricWarning

TOL = 1e-12


def correlated_case(
    n: int,
    seed: int,
    *,
    prevalence: float = 0.4,
    shift_a: float = 1.0,
    shift_b: float = 1.0,
    shared: float = 0.7,
    decimals: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true (n,), scores_a (n,), scores_b (n,))``: both scores see one latent signal
    (weight ``shared``, so they are positively correlated) plus their own noise; the
    positives are shifted up by ``shift_a`` and ``shift_b``. Both classes are present."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(n) < prevalence).astype(np.int64)
    y_true[:2] = [0, 1]
    latent = rng.normal(size=n)
    own = math.sqrt(1.0 - shared**2)
    scores_a = shift_a * y_true + shared * latent + own * rng.normal(size=n)
    scores_b = shift_b * y_true + shared * latent + own * rng.normal(size=n)
    if decimals is not None:
        scores_a, scores_b = np.round(scores_a, decimals), np.round(scores_b, decimals)
    return y_true, scores_a, scores_b


def psi(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(P, N)`` DeLong's kernel: 1 if the positive scores above the negative, 1/2 if tied."""
    positives = scores[y_true == 1][:, None]
    negatives = scores[y_true == 0][None, :]
    return (positives > negatives) + 0.5 * (positives == negatives)


def reference(y_true, scores_a, scores_b) -> dict[str, float]:
    """The textbook O(P N) DeLong (DeLong, DeLong & Clarke-Pearson 1988, eqs. 3-5)."""
    psi_a, psi_b = psi(y_true, scores_a), psi(y_true, scores_b)
    n_pos, n_neg = psi_a.shape
    s10 = np.cov(psi_a.mean(axis=1), psi_b.mean(axis=1))  # (2, 2) over positives, V10
    s01 = np.cov(psi_a.mean(axis=0), psi_b.mean(axis=0))  # (2, 2) over negatives, V01
    s = s10 / n_pos + s01 / n_neg
    return {
        "auc_a": psi_a.mean(),
        "auc_b": psi_b.mean(),
        "variance_a": s[0, 0],
        "variance_b": s[1, 1],
        "covariance": s[0, 1],
        "variance": s[0, 0] + s[1, 1] - 2 * s[0, 1],
    }


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with every warning an error: the defined cases must warn of nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ---- hand-checkable tables -----------------------------------------------------------

# y = [1, 1, 0, 0] throughout: positives x1, x2 (rows 0, 1), negatives y1, y2 (rows 2, 3).
# HAND_AUC rows: (scores, auc, variance), worked from psi, V10_i = mean_j psi(x_i, y_j),
# V01_j = mean_i psi(x_i, y_j), S = sample variance (ddof 1), Var = S10 / 2 + S01 / 2.
HAND_AUC = [
    # x = (0.9, 0.4), y = (0.6, 0.1): psi = [[1, 1], [0, 1]], AUC = 3/4.
    # V10 = (1, 1/2), V01 = (1/2, 1); S10 = S01 = 2 * (1/4)^2 / 1 = 1/8.
    # Var = 1/16 + 1/16 = 1/8.
    ([0.9, 0.4, 0.6, 0.1], 0.75, 0.125),
    # x = (0.5, 0.5), y = (0.5, 0.2): psi = [[1/2, 1], [1/2, 1]], AUC = 3/4.
    # V10 = (3/4, 3/4) -> S10 = 0; V01 = (1/2, 1) -> S01 = 1/8. Var = 0 + 1/16.
    ([0.5, 0.5, 0.5, 0.2], 0.75, 0.0625),
    # perfect separation: psi all 1, every component 1, Var = 0.
    ([0.9, 0.8, 0.2, 0.1], 1.0, 0.0),
    # every score tied: psi all 1/2, AUC 1/2, Var = 0.
    ([3, 3, 3, 3], 0.5, 0.0),
    # perfectly wrong, scores outside [0, 1]: psi all 0.
    ([-2.0, -1.0, 1.0, 2.0], 0.0, 0.0),
]


@pytest.mark.parametrize(("scores", "auc", "variance"), HAND_AUC)
def test_auc_hand_table(scores, auc, variance):
    result = quiet(delong_auc, [1, 1, 0, 0], scores)
    assert result.auc == pytest.approx(auc, abs=TOL)
    assert result.variance == pytest.approx(variance, abs=TOL)
    half = 1.959963984540054 * math.sqrt(variance)
    assert result.low == pytest.approx(max(0.0, auc - half), abs=1e-12)
    assert result.high == pytest.approx(min(1.0, auc + half), abs=1e-12)


# (scores_a, scores_b, covariance, variance of the difference, z, p), y = [1, 1, 0, 0].
# a = (0.9, 0.4 | 0.6, 0.1): V10a = (1, 1/2), V01a = (1/2, 1), Var a = 1/8 (HAND_AUC).
HAND_TEST = [
    # b perfect: V10b = V01b = (1, 1), Var b = 0, Cov = 0. Difference 3/4 - 1 = -1/4,
    # Var diff = 1/8, z = -(1/4) / sqrt(1/8) = -1/sqrt(2), p = erfc(1/2).
    ([0.9, 0.4, 0.6, 0.1], [0.9, 0.8, 0.2, 0.1], 0.0, 0.125, -1 / math.sqrt(2), math.erfc(0.5)),
    # b = (0.4, 0.9 | 0.1, 0.6): V10b = (1/2, 1), V01b = (1, 1/2), AUC 3/4, Var b = 1/8.
    # Cov10 = ((1/4)(-1/4) + (-1/4)(1/4)) / 1 = -1/8 = Cov01; Cov = -1/16 - 1/16 = -1/8.
    # Var diff = 1/8 + 1/8 + 2/8 = 1/2; difference 0: z = 0, p = 1.
    ([0.9, 0.4, 0.6, 0.1], [0.4, 0.9, 0.1, 0.6], -0.125, 0.5, 0.0, 1.0),
    # b ranks the rows exactly as a does: same components, Cov = Var = 1/8, Var diff = 0
    # and difference 0: p = 1 by convention.
    ([0.9, 0.4, 0.6, 0.1], [0.7, 0.2, 0.6, 0.1], 0.125, 0.0, 0.0, 1.0),
]


@pytest.mark.parametrize(("scores_a", "scores_b", "covariance", "variance", "z", "p"), HAND_TEST)
def test_paired_hand_table(scores_a, scores_b, covariance, variance, z, p):
    result = quiet(delong_test, [1, 1, 0, 0], scores_a, scores_b)
    assert result.covariance == pytest.approx(covariance, abs=TOL)
    assert result.variance == pytest.approx(variance, abs=TOL)
    assert result.z == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)


# ---- against an O(P N) reference and scikit-learn ------------------------------------


@pytest.mark.parametrize(
    ("n", "prevalence", "decimals"),
    [(4, 0.5, None), (7, 0.5, 0), (20, 0.3, 1), (60, 0.5, None), (60, 0.1, 1), (150, 0.8, 1)],
)
@pytest.mark.parametrize("seed", range(3))
def test_matches_pairwise_reference(n, prevalence, decimals, seed):
    y_true, scores_a, scores_b = correlated_case(
        n, seed, prevalence=prevalence, shift_b=0.5, decimals=decimals
    )
    if min(y_true.sum(), (1 - y_true).sum()) < 2:
        y_true[2:4] = [0, 1]  # a variance needs two of each class
    expected = reference(y_true, scores_a, scores_b)
    result = quiet(delong_test, y_true, scores_a, scores_b)
    for field, value in expected.items():
        assert getattr(result, field) == pytest.approx(value, abs=TOL), field
    single = quiet(delong_auc, y_true, scores_b)
    assert single.auc == pytest.approx(expected["auc_b"], abs=TOL)
    assert single.variance == pytest.approx(expected["variance_b"], abs=TOL)


@pytest.mark.parametrize(
    ("n", "prevalence", "decimals"),
    [
        (10, 0.5, None),
        (300, 0.5, 1),  # heavy ties
        (300, 0.05, 1),  # unbalanced and tied
        (2000, 0.9, None),
        (2000, 0.02, 0),  # almost everything tied
        (5000, 0.3, 2),
    ],
)
@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_sklearn(n, prevalence, decimals, seed):
    y_true, scores_a, scores_b = correlated_case(
        n, seed, prevalence=prevalence, shift_a=0.8, shift_b=-0.3, decimals=decimals
    )
    result = delong_test(y_true, scores_a, scores_b)
    assert result.auc_a == pytest.approx(roc_auc_score(y_true, scores_a), abs=TOL)
    assert result.auc_b == pytest.approx(roc_auc_score(y_true, scores_b), abs=TOL)
    assert delong_auc(y_true, scores_a).auc == result.auc_a


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_midranks_match_scipy(decimals):
    values = np.sort(np.random.default_rng(5).normal(size=500) * 3)
    if decimals is not None:
        values = np.round(values, decimals)
    expected = rankdata(values, method="average")
    np.testing.assert_array_equal(_sorted_midranks(values), expected)


# ---- against a bootstrap -------------------------------------------------------------


def stratified_bootstrap(y_true, scores_a, scores_b, n_boot: int, seed: int):
    """``(B,)`` AUC of a and of a - b over resamples that draw P positives and N negatives
    with replacement. The AUC of a resample is ``w_pos psi w_neg / (P N)`` with the
    resample's draw counts ``w``, so no resample is materialised."""
    rng = np.random.default_rng(seed)
    psi_a, psi_b = psi(y_true, scores_a), psi(y_true, scores_b)  # (P, N)
    n_pos, n_neg = psi_a.shape
    weights_pos = np.stack(
        [np.bincount(d, minlength=n_pos) for d in rng.integers(0, n_pos, (n_boot, n_pos))]
    )  # (B, P)
    weights_neg = np.stack(
        [np.bincount(d, minlength=n_neg) for d in rng.integers(0, n_neg, (n_boot, n_neg))]
    )  # (B, N)
    auc_a = np.einsum("bi,ij,bj->b", weights_pos, psi_a, weights_neg) / (n_pos * n_neg)
    difference = np.einsum("bi,ij,bj->b", weights_pos, psi_a - psi_b, weights_neg)
    return auc_a, difference / (n_pos * n_neg)


@pytest.mark.parametrize(
    ("n", "prevalence", "shift_b", "shared", "decimals"),
    [
        (400, 0.4, 0.6, 0.7, None),  # correlated scores, a better
        (300, 0.2, 1.0, 0.9, None),  # strongly correlated, unbalanced, same expected AUC
        (400, 0.5, 0.3, 0.5, 1),  # ties
    ],
)
def test_variances_agree_with_bootstrap(n, prevalence, shift_b, shared, decimals):
    y_true, scores_a, scores_b = correlated_case(
        n, 11, prevalence=prevalence, shift_b=shift_b, shared=shared, decimals=decimals
    )
    result = quiet(delong_test, y_true, scores_a, scores_b)
    boot_auc, boot_difference = stratified_bootstrap(y_true, scores_a, scores_b, 2000, seed=3)
    # 2000 resamples estimate a variance to about +-3% (sd sqrt(2 / 2000)).
    assert 0.8 < result.variance / boot_difference.var() < 1.25
    assert 0.8 < result.variance_a / boot_auc.var() < 1.25
    assert 0.8 < delong_auc(y_true, scores_a).variance / boot_auc.var() < 1.25


# ---- the test itself -----------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 50, 1000])
def test_identical_scores_give_p_one_without_warnings(n):
    y_true, scores, _ = correlated_case(n, 2)
    result = quiet(delong_test, y_true, scores, scores.copy())
    assert result.difference == 0.0
    assert result.variance == 0.0
    assert result.z == 0.0
    assert result.p_value == 1.0
    assert (result.low, result.high) == (0.0, 0.0)
    assert result.variance_a == result.variance_b == pytest.approx(result.covariance, rel=1e-12)


def test_zero_variance_with_a_difference_is_certain():
    # a separates perfectly, b ties everything: every component of a - b is 1/2.
    result = quiet(delong_test, [1, 1, 0, 0], [4, 3, 2, 1], [0, 0, 0, 0])
    assert (result.difference, result.variance) == (0.5, 0.0)
    assert (result.z, result.p_value) == (math.inf, 0.0)
    assert (result.low, result.high) == (0.5, 0.5)


def test_strongly_different_scores_give_tiny_p():
    y_true, scores_a, scores_b = correlated_case(300, 4, shift_a=3.0, shift_b=0.0)
    result = quiet(delong_test, y_true, scores_a, scores_b)
    assert result.difference > 0.3
    assert result.p_value < 1e-10
    assert result.low > 0.0


def test_swapping_the_scores_negates_the_difference():
    y_true, scores_a, scores_b = correlated_case(200, 6, shift_b=0.4)
    ab = delong_test(y_true, scores_a, scores_b)
    ba = delong_test(y_true, scores_b, scores_a)
    assert ba.difference == -ab.difference
    assert ba.z == pytest.approx(-ab.z, abs=TOL)
    assert ba.p_value == pytest.approx(ab.p_value, abs=TOL)
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low), abs=TOL)
    flipped = delong_auc(1 - y_true, scores_a)  # benign scored high: AUC 1 - AUC
    assert flipped.auc == pytest.approx(1 - ab.auc_a, abs=TOL)
    assert flipped.variance == pytest.approx(ab.variance_a, abs=TOL)


def test_p_value_is_roughly_uniform_under_the_null():
    # Two noisy copies of one signal, independent noise: equal AUCs in expectation.
    p_values = np.array(
        [
            delong_test(*correlated_case(200, seed, prevalence=0.5, shared=0.6)).p_value
            for seed in range(200)
        ]
    )
    assert 0.01 <= np.mean(p_values < 0.05) <= 0.10
    assert 0.35 <= np.mean(p_values < 0.5) <= 0.65


def test_level_sets_the_interval():
    y_true, scores_a, scores_b = correlated_case(200, 8)
    narrow, wide = delong_auc(y_true, scores_a, level=0.5), delong_auc(y_true, scores_a)
    assert wide.low < narrow.low < narrow.auc < narrow.high < wide.high
    sd = math.sqrt(wide.variance)
    assert narrow.high - narrow.auc == pytest.approx(0.6744897501960817 * sd, rel=1e-9)
    paired = delong_test(y_true, scores_a, scores_b, level=0.99)
    half = 2.5758293035489004 * math.sqrt(paired.variance)
    assert (paired.low, paired.high) == pytest.approx(
        (paired.difference - half, paired.difference + half), abs=TOL
    )


def test_100k_pairs_well_under_a_second():
    y_true, scores_a, scores_b = correlated_case(100_000, 0, prevalence=0.3)
    best = math.inf
    for _ in range(3):  # best of 3: the machine is shared
        started = time.perf_counter()
        delong_test(y_true, scores_a, scores_b)
        best = min(best, time.perf_counter() - started)
    assert best < 0.5


# ---- undefined and bad inputs --------------------------------------------------------


def is_nan(result) -> list[bool]:
    return [math.isnan(value) for value in dataclasses.astuple(result)]


@pytest.mark.parametrize(
    ("y_true", "scores"),
    [([], []), ([1, 1, 1], [0.1, 0.5, 0.9]), ([0], [0.3]), ([False, False], [2.0, -1.0])],
)
def test_one_class_or_empty_gives_nan_and_warns(y_true, scores):
    with pytest.warns(MetricWarning, match="undefined"):
        result = delong_auc(y_true, scores)
    assert isinstance(result, DelongResult)
    assert all(is_nan(result))
    with pytest.warns(MetricWarning, match="undefined"):
        paired = delong_test(y_true, scores, scores)
    assert isinstance(paired, DelongComparison)
    assert all(is_nan(paired))


@pytest.mark.parametrize(
    ("y_true", "scores", "auc"),
    [([1, 0], [0.7, 0.2], 1.0), ([1, 0, 0, 0], [0.3, 0.5, 0.1, 0.3], 1.5 / 3)],
)
def test_one_of_a_class_gives_auc_but_nan_variance(y_true, scores, auc):
    with pytest.warns(MetricWarning, match="at least 2 positives and 2 negatives"):
        result = delong_auc(y_true, scores)
    assert result.auc == pytest.approx(auc, abs=TOL)
    assert is_nan(result) == [False, True, True, True]
    with pytest.warns(MetricWarning, match="at least 2 positives and 2 negatives"):
        paired = delong_test(y_true, scores, np.zeros(len(scores)))
    assert (paired.auc_a, paired.auc_b, paired.difference) == pytest.approx((auc, 0.5, auc - 0.5))
    assert sum(is_nan(paired)) == 8


GOOD_Y = [0, 1, 0, 1]
GOOD_S = [0.1, 0.8, 0.3, 0.6]


@pytest.mark.parametrize(
    ("y_true", "scores", "match"),
    [
        ([[0, 1], [0, 1]], GOOD_S, "y_true must be 1-D"),
        (GOOD_Y, [[0.1, 0.8], [0.3, 0.6]], "scores(_a)? must be 1-D"),
        (GOOD_Y, GOOD_S[:3], "same length"),
        ([0, 1, 2, 1], GOOD_S, "0 or 1"),
        ([0, 1, -1, 1], GOOD_S, "0 or 1"),
        ([0.0, 1.0, 0.0, 1.0], GOOD_S, "integer or boolean"),
        (GOOD_Y, [0.1, np.nan, 0.3, 0.6], "finite"),
        (GOOD_Y, [0.1, np.inf, 0.3, 0.6], "finite"),
        (GOOD_Y, ["a", "b", "c", "d"], "real numbers"),
        (GOOD_Y, [0.1, 0.8, 0.3, 1j], "real numbers"),
    ],
)
def test_bad_inputs_raise(y_true, scores, match):
    with pytest.raises(ValueError, match=match):
        delong_auc(y_true, scores)
    with pytest.raises(ValueError, match=match):
        delong_test(y_true, scores, scores)


@pytest.mark.parametrize(
    ("scores_b", "match"),
    [
        (GOOD_S[:3], "y_true and scores_b must have the same length"),
        ([0.1, 0.8, 0.3, -np.inf], "scores_b must be finite"),
        (np.array(GOOD_S)[None, :], "scores_b must be 1-D"),
    ],
)
def test_bad_second_scores_raise(scores_b, match):
    with pytest.raises(ValueError, match=match):
        delong_test(GOOD_Y, GOOD_S, scores_b)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 95, math.nan])
def test_bad_level_raises(level):
    with pytest.raises(ValueError, match="level"):
        delong_auc(GOOD_Y, GOOD_S, level=level)
    with pytest.raises(ValueError, match="level"):
        delong_test(GOOD_Y, GOOD_S, GOOD_S, level=level)


def test_accepts_bool_labels_and_integer_scores():
    result = quiet(delong_auc, np.array([True, True, False, False]), np.array([3, 1, 2, 0]))
    assert result.auc == 0.75
