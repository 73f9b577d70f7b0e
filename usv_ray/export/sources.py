"""The link from a keyed study back to its source exam, re-read at export time.

The de-identified tables hold no source UID, no name and no date, and never will: the
export re-reads them from the manifests and the source files, under the key, inside the
hospital, and keeps them only in the documents it writes. Nothing is stored that maps a
``study_key`` back to a patient, so losing the tables loses no identity (the alternative,
a table of source UIDs encrypted under the key, would be one more secret to keep).

Per keyed study: the raw patient ID (the manifest's, else the DICOM header's), its date
(the DICOM header's, else the manifest's study_id where that is a date), and from the DICOM
headers of its videos (read without their pixels) the study's UID, accession number and
patient name, and each instance's SOP class and UID and series, which an SR references.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass
class StudySource:
    """One exam as the hospital's systems know it. Holds raw identifiers: never logged."""

    study_key: str
    patient_key: str
    patient_id: str | None = None
    patient_name: str | None = None
    study_uid: str | None = None
    study_date: str | None = None  # YYYYMMDD, from a DICOM header
    accession: str | None = None
    headers: list[Any] = field(default_factory=list)  # DICOM datasets, no pixel data


def _date(study_id: str | None) -> str | None:
    """A manifest's study_id as a DICOM date (YYYYMMDD) where it is one (``2024-05-01`` or
    ``20240501``), else None."""
    from datetime import date

    text = (study_id or "").strip()
    for candidate in (text, text[:10]):
        try:
            return date.fromisoformat(candidate).strftime("%Y%m%d")
        except ValueError:
            continue
    return None


def _rows(manifest: Path) -> Iterable[tuple[str, str | None, str | None, Path]]:
    """(video cell, patient_id, study date, absolute path) of each row of ``manifest``."""
    root = manifest.resolve().parent
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            video = row.get("video", "")
            if video:
                path = Path(video) if os.path.isabs(video) else root / video
                yield (
                    video,
                    row.get("patient_id") or None,
                    _date(row.get("study_id")),
                    Path(os.path.normpath(path)),
                )


def study_sources(
    manifests: Iterable[str | Path], key: bytes, videos: pd.DataFrame
) -> dict[str, StudySource]:
    """Every keyed study of ``videos`` (the ingest folder's videos table) that a row of
    ``manifests`` names, with what its source files say of it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from usv_ray.privacy import keyed_hash

    known = videos.dropna(subset=["study_key"]).set_index("video_id")
    sources: dict[str, StudySource] = {}
    for manifest in manifests:
        for video, patient_id, date, path in _rows(Path(manifest)):
            video_id = keyed_hash(key, "video", os.path.normpath(video))
            if video_id not in known.index:
                continue
            row = known.loc[video_id]
            study = sources.setdefault(
                row["study_key"], StudySource(row["study_key"], row["patient_key"])
            )
            study.patient_id = study.patient_id or patient_id
            study.study_date = study.study_date or date
            try:  # a video file is not DICOM: pydicom stops at its first 132 bytes
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue  # not DICOM, or damaged: ingest recorded what was wrong with it
            if all(k in header for k in REFERENCED):  # an instance an SR can reference
                study.headers.append(header)
            study.patient_id = study.patient_id or (str(header.get("PatientID", "")) or None)
            study.patient_name = study.patient_name or (str(header.get("PatientName", "")) or None)
            study.study_uid = study.study_uid or (str(header.get("StudyInstanceUID", "")) or None)
            study.study_date = str(header.get("StudyDate", "")) or study.study_date  # DICOM's first
            study.accession = study.accession or (str(header.get("AccessionNumber", "")) or None)
    return sources
