"""Classify's section of the report: its tables and figures, titled by what they show.

The tables' file names follow the papers' table numbers; their titles here say what they
hold. The section counts what was cross-validated from ``folds.parquet``.
"""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import ClassifyFolder, RunFolder

PART = RunFolder.part("classify")
TITLE, ORDER = PART.title, PART.order
FIRST = ("table3", "table4")  # the papers' tables lead; the others follow by name
TITLES = {
    "table3": "Diagnosis per video: frame-level baselines vs the variable-frame CNN-LSTM",
    "table4": "Diagnosis per video: methods compared",
    "frame_counts": "Diagnosis per video: the equal-frame CNN-LSTM by number of frames N",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "calibration": "Calibration of P(malignant): Brier score and expected calibration errors "
    "of the out-of-fold predictions, before and after calibration (cross-fitted: each fold "
    "calibrated on the others)",
    "operating_point": "Operating point of the diagnosis bundle: the threshold of calibrated "
    "P(malignant) at each target sensitivity, the specificity it costs and the share of videos "
    "it reads malignant (cross-fitted: each fold read at the threshold the others chose); the "
    "bundle reads at the chosen row",
    "operating_curve": "Operating point of the diagnosis bundle: sensitivity against "
    "specificity, cross-fitted, with the bundle's own point",
}
HEADINGS = {
    "calibration": {
        "calibration": "Calibrator",
        "brier_before": "Brier score, before",
        "brier_after": "Brier score, after",
        "ece_uniform_before": "ECE (equal-width bins), before",
        "ece_uniform_after": "ECE (equal-width bins), after",
        "ece_quantile_before": "ECE (equal-mass bins), before",
        "ece_quantile_after": "ECE (equal-mass bins), after",
    },
    "operating_point": {
        "chosen": "The bundle reads here",
        "target_sensitivity": "Target sensitivity, %",
        "threshold": "Threshold of calibrated P",
        "sensitivity_cross_fitted": "Sensitivity, cross-fitted, %",
        "specificity_cross_fitted": "Specificity, cross-fitted, %",
        "positive_share_cross_fitted": "Read malignant, cross-fitted, %",
    },
}


def _counts(folder: ClassifyFolder) -> tuple[str, str] | None:
    """What classify cross-validated (its folds table): a full line and a short tag."""
    folds = sections.parquet_columns(folder.folds, ["patient_key", "label", "fold"])
    if folds is None:
        return None
    videos, patients = len(folds), folds["patient_key"].nunique()
    folds_n = folds["fold"].nunique()
    return (
        f"cross-validated: {videos} labelled videos of {patients} patients "
        f"({int(folds['label'].sum())} malignant) in {folds_n} patient-level folds; "
        "predictions pooled over folds; 95% patient-bootstrap CIs",
        f"{videos} videos of {patients} patients, {folds_n} folds",
    )


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write classify's report section (``out/report.json``) from what ``out`` holds: its
    tables, plots, folds and record; ``data``, the data folder it read, else the record's.
    Returns the path. Classify calls it at the end of its run, after its record."""
    folder = ClassifyFolder(out)
    names = (TITLES, HEADINGS, FIRST)
    return sections.write_training_section(folder, TITLE, ORDER, names, _counts(folder), data)
