"""usv_ray.evaluate.plots: every figure is a valid PNG for normal, one-class and empty input."""

import warnings

import numpy as np
import pytest
from PIL import Image

from usv_ray.evaluate.plots import (
    confusion_plot,
    normalised_confusion,
    pr_plot,
    probability_plot,
    reliability_plot,
    roc_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBTITLE = "synthetic predictions, 5-fold CV, configs/test.yaml (threshold 0.5)"


def informative_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true (n,), y_prob (n,))`` with malignant videos scoring higher on average."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(n) < 0.5).astype(np.int64)
    y_true[:2] = [0, 1]
    y_prob = np.clip(rng.normal(0.3 + 0.4 * y_true, 0.2), 0.0, 1.0)
    return y_true, y_prob


NORMAL = informative_case(200, seed=0)
BENIGN_ONLY = (np.zeros(7, dtype=np.int64), np.linspace(0.05, 0.95, 7))
MALIGNANT_ONLY = (np.ones(5, dtype=np.int64), np.linspace(0.1, 0.9, 5))
EMPTY = (np.empty(0, dtype=np.int64), np.empty(0))

CASES = {
    "normal": NORMAL,
    "benign_only": BENIGN_ONLY,
    "malignant_only": MALIGNANT_ONLY,
    "empty": EMPTY,
}


def assert_png(path) -> None:
    """A PNG by its magic bytes, that PIL decodes, of more than a trivial size."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 300
        image.load()  # decodes every pixel: a truncated file fails here
        # Not a blank canvas: some pixels differ from the background.
        assert len(image.convert("L").getcolors(maxcolors=2**16) or [0, 0]) > 2


@pytest.mark.filterwarnings("error")  # no MetricWarning or matplotlib warning leaks out
@pytest.mark.parametrize("case", CASES)
def test_single_curve_plots_are_pngs(tmp_path, case):
    y_true, y_prob = CASES[case]
    for plot in (roc_plot, pr_plot):
        path = tmp_path / f"{plot.__name__}.png"
        assert plot({"method A": (y_true, y_prob)}, path, SUBTITLE) == path
        assert_png(path)
    for plot in (confusion_plot, probability_plot):
        path = tmp_path / f"{plot.__name__}.png"
        assert plot(y_true, y_prob, path, SUBTITLE, threshold=0.5) == path
        assert_png(path)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("plot", [roc_plot, pr_plot])
def test_curve_plots_mix_methods_and_cases(tmp_path, plot):
    """Several methods, some defined, some one-class, one empty, on one axes."""
    curves = {
        "Variable-frame CNNLSTM": NORMAL,
        "CNN_Vote": informative_case(150, seed=1),
        "benign only": BENIGN_ONLY,
        "malignant only": MALIGNANT_ONLY,
        "nothing": EMPTY,
    }
    path = plot(curves, str(tmp_path / "nested" / "curves.png"), SUBTITLE)
    assert_png(path)


@pytest.mark.parametrize("plot", [roc_plot, pr_plot])
def test_curve_plots_without_methods(tmp_path, plot):
    assert_png(plot({}, tmp_path / "none.png", SUBTITLE))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0])
def test_threshold_plots_accept_any_threshold(tmp_path, threshold):
    assert_png(confusion_plot(*NORMAL, tmp_path / "c.png", SUBTITLE, threshold=threshold))
    assert_png(probability_plot(*NORMAL, tmp_path / "p.png", SUBTITLE, threshold=threshold))


@pytest.mark.parametrize(
    ("y_true", "y_prob"),
    [([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.5]), ([0, 1], [0.1]), ([0, 1], [0.1, np.nan])],
)
def test_bad_input_raises(tmp_path, y_true, y_prob):
    with pytest.raises(ValueError):
        roc_plot({"m": (y_true, y_prob)}, tmp_path / "r.png", SUBTITLE)
    with pytest.raises(ValueError):
        confusion_plot(y_true, y_prob, tmp_path / "c.png", SUBTITLE)
    with pytest.raises(ValueError):
        probability_plot(y_true, y_prob, tmp_path / "p.png", SUBTITLE)


@pytest.mark.parametrize(
    ("y_true", "y_prob", "rates", "counts"),
    [
        # tn=1, fp=1 / fn=1, tp=3
        (
            [0, 0, 1, 1, 1, 1],
            [0.1, 0.6, 0.4, 0.5, 0.7, 0.9],
            [[0.5, 0.5], [0.25, 0.75]],
            [[1, 1], [1, 3]],
        ),
        ([0, 0, 0], [0.2, 0.7, 0.9], [[1 / 3, 2 / 3], [np.nan, np.nan]], [[1, 2], [0, 0]]),
        ([], [], [[np.nan, np.nan], [np.nan, np.nan]], [[0, 0], [0, 0]]),
    ],
)
def test_normalised_confusion_rows_sum_to_one(y_true, y_prob, rates, counts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got_rates, got_counts = normalised_confusion(y_true, y_prob, 0.5)
    np.testing.assert_allclose(got_rates, rates)
    np.testing.assert_array_equal(got_counts, counts)
    defined = ~np.isnan(got_rates).any(axis=1)
    np.testing.assert_allclose(got_rates[defined].sum(axis=1), 1.0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", CASES)
def test_reliability_plot_is_png(tmp_path, case):
    """Before / after calibration on one axes; one-class and empty curves do not raise."""
    y_true, y_prob = CASES[case]
    curves = {
        "before calibration": (y_true, y_prob),
        "after calibration": (y_true, np.sqrt(y_prob)),
        "nothing": EMPTY,
    }
    path = tmp_path / "nested" / "reliability.png"
    assert reliability_plot(curves, path, SUBTITLE, n_bins=8) == path
    assert_png(path)
    assert_png(reliability_plot({}, tmp_path / "none.png", SUBTITLE))


def test_import_does_not_load_pyplot():
    """matplotlib stays out of ``import usv_ray.evaluate.plots`` (fast package import)."""
    import subprocess
    import sys

    code = "import sys, usv_ray.evaluate.plots; sys.exit(1 if 'matplotlib' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
