"""Figures of per-video benign/malignant predictions: ROC, PR, confusion, probability, reliability.

Every function is pure apart from writing one PNG: it takes arrays (``y_true (N,)`` labels
in {0, 1}, ``y_prob (N,)`` probabilities of malignant), a path and a ``subtitle`` naming the
data and config the figure came from, writes the figure and returns the path.

Inputs are validated by :mod:`usv_ray.evaluate.metrics` (bad shapes, labels or
probabilities raise ``ValueError``). Undefined cases do not raise: with one class present
the ROC / PR curve that cannot be drawn is left out and its legend entry says
"undefined: one class"; an empty input gives a figure that says "no predictions".

:func:`new_figure`, :func:`unit_square` and :func:`save_figure` are the frame every figure
of the project shares (the detector's too).

matplotlib is imported inside the functions (``import usv_ray`` stays fast), and figures are
drawn on their own Agg canvas rather than through pyplot, so no global backend is switched
and no figure is left open.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from usv_ray.evaluate.calibration import brier_score, expected_calibration_error, reliability
from usv_ray.evaluate.metrics import (
    MetricWarning,
    average_precision,
    confusion,
    pr_curve,
    roc_auc,
    roc_curve,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "confusion_plot",
    "new_figure",
    "normalised_confusion",
    "pr_plot",
    "probability_plot",
    "reliability_plot",
    "roc_plot",
    "save_figure",
    "unit_square",
]

Curves = Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]

CLASS_NAMES = ("benign", "malignant")  # label 0, label 1
# Outcome -> colour (Okabe-Ito, readable for colour-blind readers).
OUTCOME_COLOURS = {"TP": "#009E73", "TN": "#0072B2", "FP": "#E69F00", "FN": "#D55E00"}
FIGSIZE = (6.4, 5.6)
DPI = 120
SUBTITLE_WIDTH = 80  # characters per caption line before wrapping


def new_figure(title: str, subtitle: str) -> tuple[Figure, Axes]:
    """A figure with one axes on its own Agg canvas, titled, the subtitle as a caption line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout keeps titles, labels and legends inside the canvas.
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    ax = fig.add_subplot()
    caption = textwrap.fill(subtitle, SUBTITLE_WIDTH) if subtitle else ""
    ax.set_title(caption, fontsize=8.5, color="0.3")
    return fig, ax


def _no_predictions(ax: Axes) -> None:
    ax.text(
        0.5,
        0.5,
        "no predictions",
        ha="center",
        va="center",
        fontsize=16,
        color="0.4",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _validated(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64 (N,), probs float64 (N,))``; ValueError from the metrics' checks."""
    confusion(y_true, y_prob)  # validates, raising ValueError on bad input
    return np.asarray(y_true).astype(np.int64), np.asarray(y_prob).astype(np.float64)


def _one_class(labels: np.ndarray) -> bool:
    return labels.size > 0 and labels.min() == labels.max()


def unit_square(ax: Axes, xlabel: str, ylabel: str, top: float = 1.01) -> None:
    """Axes of a curve in the unit square (ROC, PR): limits, equal aspect, labels, grid."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, top)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def roc_plot(curves: Curves, path: str | os.PathLike[str], subtitle: str) -> Path:
    """ROC curves of several methods on one axes, AUC in the legend, and the chance diagonal.

    ``curves``: method name -> ``(y_true (N,), y_prob (N,))``, drawn in the mapping's order.
    A method with one class present has no ROC curve; its legend entry says so.
    """
    fig, ax = new_figure("ROC curve", subtitle)
    validated = {name: _validated(*pair) for name, pair in curves.items()}
    if not any(labels.size for labels, _ in validated.values()):
        _no_predictions(ax)
        return save_figure(fig, path)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC 0.500)")
    for name, (labels, probs) in validated.items():
        if labels.size == 0:
            ax.plot([], [], label=f"{name}: no predictions")
            continue
        if _one_class(labels):
            ax.plot([], [], label=f"{name}: undefined: one class (n={labels.size})")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            fpr, tpr, _ = roc_curve(labels, probs)
            auc = roc_auc(labels, probs)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC {auc:.3f}, n={labels.size})")
    unit_square(ax, "false positive rate (1 - specificity)", "true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def pr_plot(curves: Curves, path: str | os.PathLike[str], subtitle: str) -> Path:
    """Precision-recall curves with average precision in the legend, and the positive rate.

    ``curves``: method name -> ``(y_true (N,), y_prob (N,))``. The baseline is the fraction
    of malignant videos (the precision of a random ranking): one line when every method saw
    the same fraction, else one dotted line per method in its colour. Without malignant
    videos recall is undefined and no curve is drawn; with only malignant ones the curve
    (precision 1) is drawn but average precision is undefined.
    """
    fig, ax = new_figure("Precision-recall curve", subtitle)
    validated = {name: _validated(*pair) for name, pair in curves.items()}
    filled = {name: pair for name, pair in validated.items() if pair[0].size}
    if not filled:
        _no_predictions(ax)
        return save_figure(fig, path)
    rates = {name: float(labels.mean()) for name, (labels, _) in filled.items()}
    shared_rate = len({round(rate, 6) for rate in rates.values()}) == 1
    if shared_rate:
        rate = next(iter(rates.values()))
        ax.axhline(
            rate, linestyle="--", color="0.6", linewidth=1, label=f"positive rate {rate:.3f}"
        )
    for name, (labels, probs) in validated.items():
        if labels.size == 0:
            ax.plot([], [], label=f"{name}: no predictions")
            continue
        n = labels.size
        if _one_class(labels) and labels[0] == 0:
            (line,) = ax.plot([], [], label=f"{name}: undefined: one class (n={n})")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricWarning)
                prec, rec, _ = pr_curve(labels, probs)
                ap = average_precision(labels, probs)
            label = (
                f"{name} (AP undefined: one class, n={n})"
                if math.isnan(ap)
                else f"{name} (AP {ap:.3f}, n={n})"
            )
            # Step-wise, as average precision sums it.
            (line,) = ax.step(rec, prec, where="post", linewidth=1.8, label=label)
        if not shared_rate:
            ax.axhline(
                rates[name],
                linestyle=":",
                color=line.get_color(),
                linewidth=1,
                label=f"positive rate {rates[name]:.3f} ({name})",
            )
    unit_square(ax, "recall (sensitivity)", "precision (positive predictive value)", top=1.05)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def normalised_confusion(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``(rates (2, 2), counts (2, 2))``: rows are the true class, columns the predicted one.

    Index 0 is benign, 1 malignant, so ``rates = [[spec, 1 - spec], [1 - sens, sens]]``.
    Each row of ``rates`` sums to 1; a true class without videos gives a row of NaN.
    """
    tn, fp, fn, tp = confusion(y_true, y_prob, threshold)
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.int64)  # (2, 2) true x predicted
    totals = counts.sum(axis=1, keepdims=True)  # (2, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    return rates, counts


def confusion_plot(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    path: str | os.PathLike[str],
    subtitle: str,
    threshold: float = 0.5,
) -> Path:
    """2 x 2 confusion matrix normalised by true class (rows sum to 1), counts in the cells.

    Each cell reads ``"0.93\\n(n=120)"``; a true class without videos reads ``"n/a"``.
    """
    fig, ax = new_figure(f"Confusion matrix (threshold {threshold:g})", subtitle)
    rates, counts = normalised_confusion(y_true, y_prob, threshold)
    if counts.sum() == 0:
        _no_predictions(ax)
        return save_figure(fig, path)
    from matplotlib import colormaps

    # A true class without videos (NaN row) is drawn grey, not as a rate of 0.
    cmap = colormaps["Blues"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0)
    for true_class in range(2):
        for predicted in range(2):
            rate = rates[true_class, predicted]
            count = counts[true_class, predicted]
            text = "n/a\n(n=0)" if math.isnan(rate) else f"{rate:.2f}\n(n={count})"
            ax.text(
                predicted,
                true_class,
                text,
                ha="center",
                va="center",
                fontsize=13,
                color="white" if rate > 0.5 else "black",
            )
    ax.set_xticks(
        [0, 1], [f"{name}\n(n={n})" for name, n in zip(CLASS_NAMES, counts.sum(0), strict=True)]
    )
    ax.set_yticks(
        [0, 1], [f"{name}\n(n={n})" for name, n in zip(CLASS_NAMES, counts.sum(1), strict=True)]
    )
    ax.set_xlabel(f"predicted class (malignant if probability ≥ {threshold:g})")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    return save_figure(fig, path)


def probability_plot(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    path: str | os.PathLike[str],
    subtitle: str,
    threshold: float = 0.5,
) -> Path:
    """Stacked histogram of the predicted probability for TP, TN, FP and FN, and the threshold.

    Counts are in the legend; the bins are 0.05 wide over [0, 1].
    """
    fig, ax = new_figure("Predicted probability of malignancy by outcome", subtitle)
    labels, probs = _validated(y_true, y_prob)
    if labels.size == 0:
        _no_predictions(ax)
        return save_figure(fig, path)
    predicted = probs >= float(threshold)  # (N,) bool
    positive = labels.astype(bool)
    masks = {
        "TP": predicted & positive,
        "TN": ~predicted & ~positive,
        "FP": predicted & ~positive,
        "FN": ~predicted & positive,
    }
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist(
        [probs[mask] for mask in masks.values()],
        bins=bins,
        stacked=True,
        color=list(OUTCOME_COLOURS.values()),
        edgecolor="white",
        linewidth=0.5,
        label=[f"{outcome} (n={int(mask.sum())})" for outcome, mask in masks.items()],
    )
    ax.axvline(
        threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}"
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("predicted probability of malignancy")
    ax.set_ylabel("number of videos")
    ax.grid(axis="y", alpha=0.3)
    # Outside the axes, so it never hides a bar.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9)
    return save_figure(fig, path)


def reliability_plot(
    curves: Curves, path: str | os.PathLike[str], subtitle: str, n_bins: int = 10
) -> Path:
    """Reliability diagram of several curves on one axes, ECE and Brier in the legend.

    ``curves``: name -> ``(y_true (N,), y_prob (N,))``, e.g. "before calibration" and
    "after calibration", drawn in the mapping's order. Per curve, a line with a marker at
    (mean predicted probability, observed fraction of malignant videos) of each non-empty
    one of ``n_bins`` equal-width bins; the legend gives its ECE (on the same bins) and
    Brier score. The diagonal is perfect calibration.
    """
    fig, ax = new_figure("Reliability diagram", subtitle)
    validated = {name: _validated(*pair) for name, pair in curves.items()}
    if not any(labels.size for labels, _ in validated.values()):
        _no_predictions(ax)
        return save_figure(fig, path)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
    for name, (labels, probs) in validated.items():
        if labels.size == 0:
            ax.plot([], [], label=f"{name}: no predictions")
            continue
        prob_true, prob_pred, _ = reliability(labels, probs, n_bins, "uniform")
        ece = expected_calibration_error(labels, probs, n_bins, "uniform")
        brier = brier_score(labels, probs)
        ax.plot(
            prob_pred,
            prob_true,
            marker="o",
            markersize=5,
            linewidth=1.8,
            label=f"{name} (ECE {ece:.3f}, Brier {brier:.3f}, n={labels.size})",
        )
    unit_square(
        ax,
        f"mean predicted probability of malignancy ({n_bins} equal-width bins)",
        "observed fraction of malignant videos",
    )
    # Below the axes: a badly calibrated curve can reach any corner of the square.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8)
    return save_figure(fig, path)


def operating_curve_plot(
    point: Mapping, min_specificity: float, path: str | os.PathLike[str], subtitle: str
) -> Path:
    """The diagnosis bundle's trade-off: cross-fitted sensitivity against specificity at
    each target sensitivity of ``point["curve"]`` (patient-bootstrap 95% CIs as bars), the
    bundle's own point marked with its threshold, and ``min_specificity`` as a line.

    ``point`` is the bundle's operating point (:func:`usv_ray.classify.bundle.operating_point`).
    """
    fig, ax = new_figure("Operating point: sensitivity against specificity", subtitle)
    rows = point["curve"]
    spec = np.array([row["specificity_cross_fitted"]["value"] for row in rows])
    sens = np.array([row["sensitivity_cross_fitted"]["value"] for row in rows])
    if not np.isfinite(spec).any() or not np.isfinite(sens).any():
        _no_predictions(ax)
        return save_figure(fig, path)

    def bars(name: str, values: np.ndarray) -> np.ndarray:  # (2, T) distances to the CI
        low = np.array([row[name]["low"] for row in rows])
        high = np.array([row[name]["high"] for row in rows])
        return np.nan_to_num(np.stack([values - low, high - values]).clip(min=0))

    ax.errorbar(
        spec,
        sens,
        xerr=bars("specificity_cross_fitted", spec),
        yerr=bars("sensitivity_cross_fitted", sens),
        marker="o",
        markersize=4,
        linewidth=1.5,
        capsize=2,
        color="#0072B2",
        label=f"cross-fitted, {point['n_videos']} videos (95% CIs)",
    )
    own = point["specificity_cross_fitted"]["value"], point["sensitivity_cross_fitted"]["value"]
    ax.plot(
        *own,
        marker="*",
        markersize=16,
        color="#D55E00",
        linestyle="none",
        label=f"the bundle: P >= {point['threshold']:.3f} (target sensitivity "
        f"{100 * point['target_sensitivity']:g}%)",
    )
    ax.axvline(
        min_specificity,
        color="0.4",
        linestyle="--",
        linewidth=1,
        label=f"classify.min_specificity {100 * min_specificity:g}%",
    )
    unit_square(ax, "specificity (cross-fitted)", "sensitivity (cross-fitted)")
    ax.set_xlim(1.01, -0.01)  # as a ROC curve runs: specificity falls to the right
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def loss_curve_plot(
    epochs: npt.ArrayLike,
    curves: Mapping[str, npt.ArrayLike],
    best_epoch: int,
    path: str | os.PathLike[str],
    title: str,
    subtitle: str,
) -> Path:
    """Losses per epoch (``curves``: name -> one value per epoch of ``epochs``), the epoch a
    model kept (``best_epoch``, counted as ``epochs`` are) marked with a line."""
    fig, ax = new_figure(title, subtitle)
    epochs = np.asarray(epochs)
    if epochs.size == 0:
        _no_predictions(ax)
        return save_figure(fig, path)
    for name, values in curves.items():
        ax.plot(epochs, np.asarray(values, dtype=float), marker="o", markersize=4, label=name)
    ax.axvline(
        best_epoch, color="0.4", linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}"
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
