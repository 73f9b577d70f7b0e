"""Re-ID's section of the report: the two models compared on pairs of tracklets, and the
clustering of a patient's tracklets into nodules; counts from ``splits.parquet``."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import ReidFolder, RunFolder

PART = RunFolder.part("reid")
TITLE, ORDER = PART.title, PART.order
FIRST = ("table3", "delong", "table4_clustering")
TITLES = {
    "table3": "Same nodule or not, for pairs of tracklets of one patient: the two re-ID "
    "models compared",
    "delong": "Do the two re-ID models differ? DeLong test of their AUC difference",
    "roc_val": "ROC curves, validation pairs",
    "roc_test": "ROC curves, test pairs",
    "table4_clustering": "Grouping a patient's tracklets into nodules: clustering methods "
    "compared (test patients, each method tuned on the validation patients)",
}
HEADINGS = {
    "table4_clustering": {
        "parameter": "Tuned parameter",
        "value": "Value",
        "val_f_score": "Pairwise F on validation, %",
        "precision": "Pairwise precision, %",
        "recall": "Pairwise recall, %",
        "f_score": "Pairwise F, %",
        "time_ms": "Time, ms",
        "not_converged": "Patients not converged",
    },
}


def _counts(folder: ReidFolder) -> tuple[str, str] | None:
    """What re-ID trained and evaluated on (its splits table): a full line and a short tag."""
    splits = sections.parquet_columns(folder.splits, ["patient_key", "nodule_id", "split"])
    if splits is None:
        return None
    parts = []
    for split in ("train", "val", "test"):
        part = splits[splits["split"] == split]
        parts.append(
            f"{split} {len(part)} tracklets, {part['nodule_id'].nunique()} nodules, "
            f"{part['patient_key'].nunique()} patients"
        )
    return (
        "split by patient: " + "; ".join(parts),
        f"{len(splits)} tracklets of {splits['patient_key'].nunique()} patients",
    )


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write re-ID's report section (``out/report.json``) from what ``out`` holds: its
    tables, plots, splits and record; ``data``, the data folder it read, else the record's.
    Returns the path. Re-ID calls it at the end of its run, after its record."""
    folder = ReidFolder(out)
    names = (TITLES, HEADINGS, FIRST)
    return sections.write_training_section(folder, TITLE, ORDER, names, _counts(folder), data)
