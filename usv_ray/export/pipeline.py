"""``usv-ray export``: the night's results, one document per exam, as a PACS and an EHR read
them.

Reads the night's de-identified tables (the ingest folder's videos, predict's diagnoses by
the bundle it ran last, the nodule index) and, with the key, the manifests and the source
files' DICOM headers (:mod:`usv_ray.export.sources`), and writes per exam a DICOM SR
(``sr/``) and a FHIR R4B Bundle (``fhir/``) (:mod:`usv_ray.export.documents`). Exams are
ordered by their source study date where a DICOM header gives one, and a nodule's first
exam is the earliest of them by that date.

The documents hold the patient's ID, name and the source study's UIDs, as a PACS or EHR
needs to file them: the export runs inside the hospital, with the key. Its file names,
``summary.json`` and its log hold none of them, and no de-identified table gains one.
A rerun rewrites every document (a nodule's P changes as nights add exams; its tracking
UID does not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.parquet as pq

from usv_ray.config import Config
from usv_ray.errors import UsvRayError

log = logging.getLogger(__name__)

Format = Literal["sr", "fhir"]
PROGRESS_EVERY = 500  # exams between progress lines


class ExportError(UsvRayError, ValueError):
    """The folders lack what the export reads (a stage that did not run)."""


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    studies: int  # exams with a document
    documents: int
    videos: int  # video readings written
    nodules: int  # nodule entries written (a nodule once per exam that shows it)
    unmatched: int  # exams of the tables that no manifest row names (no document)
    seconds: float

    def text(self) -> str:
        return (
            f"export: {self.documents} documents for {self.studies} exams ({self.videos} video "
            f"readings, {self.nodules} nodule entries) in {self.seconds:.1f} s"
            + (
                f"; {self.unmatched} exams of the tables are in no manifest given (no document)"
                if self.unmatched
                else ""
            )
            + f"\n  documents: {self.out}"
        )


def _latest_diagnoses(predict: Path) -> tuple[str, pd.DataFrame]:
    from usv_ray.layout import PredictFolder

    folder = PredictFolder(predict)
    if not folder.summary.exists():
        raise ExportError(f"{folder.summary} not found: run `usv-ray predict` first")
    return folder.latest()


def run_export(
    cfg: Config,
    data: str | Path,
    predict: str | Path,
    index: str | Path,
    manifests: Sequence[str | Path],
    out: str | Path,
    formats: Sequence[Format] = ("sr", "fhir"),
) -> ExportSummary:
    """Write one document per exam and format of ``formats`` into ``out``."""
    from usv_ray.export.documents import Results, fhir_bundle, iso_date, structured_report
    from usv_ray.export.sources import study_sources
    from usv_ray.io import atomic_path, write_json
    from usv_ray.layout import ExportFolder, IndexFolder, IngestFolder
    from usv_ray.privacy import check_keying, load_key

    started = time.perf_counter()
    # highdicom logs, at INFO, the UID of each source study it copies from: not in our logs
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    data, folder = IngestFolder(data), ExportFolder(out)
    key = load_key(cfg.privacy)
    check_keying(data.root, cfg.privacy, key)
    version, diagnoses = _latest_diagnoses(Path(predict))
    nodules_path = IndexFolder(index).nodules
    if not nodules_path.exists():
        raise ExportError(f"{nodules_path} not found: run `usv-ray index` first")
    nodules = pq.read_table(nodules_path).to_pandas()
    videos = data.read_videos()
    sources = study_sources(manifests, key, videos)
    dates = {k: s.study_date for k, s in sources.items() if s.study_date}
    index_version = nodules["index_version"].iloc[0] if len(nodules) else None
    shows = nodules.explode("study_keys")

    def first_date(study_keys) -> str | None:
        return iso_date(min((dates[k] for k in study_keys if k in dates), default=None))

    nodules["first_date"] = nodules["study_keys"].map(first_date)
    videos_of = dict(tuple(diagnoses.groupby("study_key")))  # study_key -> its diagnoses
    nodules_of = shows.groupby("study_keys")["nodule_uid"].agg(set)  # study_key -> its uids
    tables = set(videos_of) | set(nodules_of.index)
    ordered = sorted(sources.values(), key=lambda s: (s.study_date or "99999999", s.study_key))
    written = n_videos = n_nodules = 0
    log.info("export: %d exams named by the manifests", len(ordered))
    for done, study in enumerate(ordered, start=1):
        if done % PROGRESS_EVERY == 0:
            log.info("export: %d of %d exams, %d documents so far", done, len(ordered), written)
        results = Results(
            videos_of.get(study.study_key, diagnoses.iloc[:0]),
            nodules[nodules["nodule_uid"].isin(nodules_of.get(study.study_key, set()))],
            version,
            index_version,
        )
        if results.videos.empty and results.nodules.empty:
            continue
        n_videos += len(results.videos)
        n_nodules += len(results.nodules)
        if "sr" in formats:
            with atomic_path(folder.sr(study.study_key)) as tmp:
                structured_report(study, results).save_as(tmp, enforce_file_format=True)
            written += 1
        if "fhir" in formats:
            write_json(fhir_bundle(study, results), folder.fhir(study.study_key))
            written += 1
    studies = sum(1 for s in ordered if s.study_key in tables)
    unmatched = len(tables - set(sources))
    summary = ExportSummary(
        folder.root,
        studies,
        written,
        n_videos,
        n_nodules,
        unmatched,
        time.perf_counter() - started,
    )
    write_json(
        {
            "formats": list(formats),
            "diagnosis_version": version,
            "index_version": index_version,
            "studies": studies,
            "documents": written,
            "videos": n_videos,
            "nodules": n_nodules,
            "unmatched_studies": unmatched,
        },
        folder.summary,
    )
    log.info("export: %d documents for %d exams", written, studies)
    return summary
