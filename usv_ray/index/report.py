"""The index's section of the report: its nodules, patients and tracklets, and its
``summary.json``. The index keeps no fingerprint record: its index_version names the model,
clip shape, tau and method that made it."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import IndexFolder, RunFolder

PART = RunFolder.part("index")
TITLE, ORDER = PART.title, PART.order
SUMMARY_TITLE = "Index summary"


def _counts(folder: IndexFolder) -> tuple[str, str] | None:
    """What the index holds (its summary.json): a full line and a short tag."""
    summary = sections.read_json(folder.summary)
    if summary is None:
        return None
    patients, tracklets = summary.get("patients", "?"), summary.get("tracklets", "?")
    version = summary.get("index_version", "not recorded")
    return (
        f"index: {summary.get('nodules', '?')} nodules of {patients} patients from {tracklets} "
        f"tracklets; index_version {version} (the model, clip shape, tau and method)",
        f"{tracklets} tracklets of {patients} patients · index_version {version}",
    )


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write the index's report section (``out/report.json``) from its ``summary.json``;
    ``data``: the data folder whose tracklets it indexed. Returns the path. The index
    calls it whenever it ends (also when nothing changed)."""
    folder = IndexFolder(out)
    return sections.write_summary_section(
        folder, TITLE, ORDER, SUMMARY_TITLE, _counts(folder), data
    )
