"""Predict's section of the report: the diagnoses it holds, by model version, from its
``summary.json``. Predict keeps no fingerprint record: the model version names what made
its rows."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import PredictFolder, RunFolder

PART = RunFolder.part("predict")
TITLE, ORDER = PART.title, PART.order
SUMMARY_TITLE = "Diagnoses summary"


def _counts(folder: PredictFolder) -> tuple[str, str] | None:
    """What the diagnoses hold (the summary's latest version): a full line and a short tag."""
    summary = sections.read_json(folder.summary)
    if summary is None or summary.get("latest") not in summary.get("versions", {}):
        return None
    version = summary["latest"]
    latest = summary["versions"][version]
    return (
        f"diagnoses: {latest['videos']} videos by {version} ({latest['malignant']} read "
        f"malignant at the bundle's threshold, {latest['errors']} not diagnosed); "
        f"{len(summary['versions'])} model version(s) in the table",
        f"{latest['videos']} videos · {version}",
    )


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write predict's report section (``out/report.json``) from its ``summary.json``;
    ``data``: the data folder it diagnosed. Returns the path. Predict calls it whenever it
    ends, after the summary (also when there was nothing new to diagnose)."""
    folder = PredictFolder(out)
    return sections.write_summary_section(
        folder, TITLE, ORDER, SUMMARY_TITLE, _counts(folder), data
    )
