"""The night's share read malignant against the share the bundle expects at its
threshold: printed beside each other, and a warning when tonight's is far off."""

from pathlib import Path

import pytest
from scipy.stats import binomtest

from usv_ray.predict.pipeline import PredictSummary, share_is_far

EXPECTED = {"value": 0.5, "low": 0.4, "high": 0.6}  # the bundle's cross-fitted share, 95% CI


def _summary(malignant: int, tonight: int, expected=EXPECTED) -> PredictSummary:
    return PredictSummary(
        Path("out"), "diagnosis-v1", tonight, tonight, 0, 0, 0, 0, 0, 0, malignant, 0, True,
        1.0, tonight, malignant, expected,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("malignant", "videos", "far"),
    [
        (50, 100, False),  # inside the interval
        (65, 100, False),  # outside, but 100 videos at 0.6 give 65 often enough
        (145, 150, True),  # the night that read almost every video malignant
        (2, 40, True),  # almost none
        (1, 3, False),  # three videos tell nothing
        (0, 0, False),  # no video tonight
    ],
)
def test_a_share_is_far_only_beyond_the_interval_and_tonights_chance(malignant, videos, far):
    assert share_is_far(malignant, videos, EXPECTED) is far
    if videos and not EXPECTED["low"] <= malignant / videos <= EXPECTED["high"]:
        end = EXPECTED["high"] if malignant / videos > EXPECTED["high"] else EXPECTED["low"]
        assert bool(binomtest(malignant, videos, end).pvalue < 0.001) is far


def test_predict_prints_tonights_share_beside_the_bundles_and_warns_when_far():
    near = _summary(48, 100)
    assert near.share_warning() is None
    assert "tonight: 48 of 100 read malignant (48%); the bundle expects 50% (40-60)" in near.text()
    far = _summary(145, 150)
    warning = far.share_warning()
    assert warning is not None and "\n" not in warning
    assert "145 of 150 videos tonight (97%)" in warning and "50% (95% CI 40-60)" in warning
    # a bundle that records no expected share: tonight's share alone, no warning
    alone = _summary(145, 150, expected=None)
    assert alone.share_warning() is None and "the bundle expects" not in alone.text()
    assert "tonight: 145 of 150 read malignant" in alone.text()
    assert "tonight" not in _summary(0, 0).text()  # nothing diagnosed tonight
