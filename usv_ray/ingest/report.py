"""Ingest's section of the report: what the data folder holds, and how it was keyed.

Ingest adds no table of its own: its section counts the videos and errors of the folder,
and gives the report's header its privacy row, from what ingest recorded in
``keying.json`` (the public development key or a private key; never the key).
"""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import IngestFolder, RunFolder

PART = RunFolder.part("data")
TITLE, ORDER = PART.title, PART.order
# the privacy row of the header, by the kinds of key ingest recorded
KEY_NOTES = {
    ("development",): "Ingest keyed them with the public development key (privacy.dev_key), "
    "fine for synthetic data only: a real archive needs a private key (USV_RAY_SECRET or "
    "privacy.key_file).",
    ("private",): "Ingest keyed them with a private key (from {sources}); the same patient "
    "gets the same patient_key only under that key, so keep it with the data.",
    ("development", "private"): "Warning: ingest runs into this data folder used both the "
    "public development key and a private key (from {sources}), so one patient can have two "
    "patient_keys; re-ingest into a new folder with the private key alone.",
}
NOT_DEMO = " This folder is not a demo: if it holds real patients, re-ingest it."


def _keying(folder: IngestFolder) -> sections.Note | None:
    """The privacy note from ``keying.json``; None when ingest recorded nothing."""
    record = sections.read_json(folder.keying)
    if record is None or not isinstance(record.get("keys"), list):
        return None
    keys = sorted(str(k) for k in record["keys"])
    sources = sorted(str(s) for s in record.get("sources", []))
    note = KEY_NOTES.get(tuple(keys))
    if note is None:  # a record written by a newer usv-ray, with a kind not known here
        note = f"Ingest recorded these kinds of key: {', '.join(keys)}."
    note = note.format(sources=" and ".join(sources) or "not recorded")
    # the development key is fine for a demo's synthetic patients, a risk anywhere else
    return sections.Note("privacy", note, NOT_DEMO if keys == ["development"] else "")


def _counts(folder: IngestFolder) -> list[str]:
    """The videos and errors the folder holds, as provenance lines."""
    lines = []
    videos = sections.parquet_columns(folder.videos, ["patient_key", "label", "status"])
    if videos is not None:
        ok = videos[videos["status"] == "ok"]
        lines.append(
            f"videos.parquet: {len(videos)} videos of {videos['patient_key'].nunique()} patients, "
            f"{len(ok)} ingested ok, {len(videos) - len(ok)} failed; "
            f"{int((ok['label'] == 1).sum())} malignant, {int((ok['label'] == 0).sum())} benign, "
            f"{int((ok['label'] < 0).sum())} unlabelled"
        )
    errors = sections.parquet_columns(folder.errors, ["stage"])
    if errors is not None:
        lines.append(f"errors.parquet: {len(errors)} error rows")
    return lines


def describe(out: str | Path) -> Path:
    """Write the data folder ``out``'s report section (``out/report.json``) from its tables
    and ``keying.json``; returns its path. Ingest calls it at the end of every run."""
    folder = IngestFolder(out)
    note = _keying(folder)
    section = sections.Section(
        TITLE,
        ORDER,
        data=str(folder.root.resolve()),
        provenance=tuple(_counts(folder)),
        notes=() if note is None else (note,),
    )
    return sections.write_section(section, folder.root / sections.REPORT_NAME)
