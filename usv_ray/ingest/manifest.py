"""Read ``manifest.csv`` into ingest tasks, turning every bad row into an error row.

The raw patient ID is read here and leaves only as its keyed hash; a video's source path is
kept as written in the manifest, with any occurrence of the patient ID redacted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from usv_ray.config import IngestConfig, output_settings
from usv_ray.errors import UsvRayError
from usv_ray.ingest.annotations import is_inline
from usv_ray.privacy import keyed_hash, patient_key
from usv_ray.schemas import LABELS, UNKNOWN_LABEL

REQUIRED_COLUMNS = ("video",)
KNOWN_COLUMNS = ("video", "patient_id", "study_id", "label", "annotations")
REDACTED = "<patient>"


class ManifestError(UsvRayError, ValueError):
    """The manifest as a whole cannot be read (missing file or required column)."""


@dataclass(frozen=True)
class VideoTask:
    """One manifest row, ready for a Ray task. Holds no raw patient identifier."""

    video_id: str
    source: str  # the path as written in the manifest, patient ID redacted
    path: str  # absolute path to read; never written to any output
    patient_key: str | None  # None: take PatientID from the DICOM header
    study_id_hash: str | None  # keyed hash of (patient ID, study ID) when both are known
    study_id_raw: str | None  # only when patient_id is unknown until the DICOM is read
    label: int
    annotations: str | None  # absolute path of the annotations JSON, or the JSON itself
    fingerprint: str  # same fingerprint as a journal entry: the work is already done
    # the fingerprint without a detector, when ``fingerprint`` names one: that work also
    # stands for an ingest without the detector, which keeps its automatic tracklets
    plain_fingerprint: str | None = None


def redact(text: str, patient_id: str | None) -> str:
    """``text`` with every occurrence of ``patient_id`` replaced by a placeholder."""
    if patient_id and patient_id.strip():
        return text.replace(patient_id.strip(), REDACTED)
    return text


def study_key(key: bytes, patient_id: str, study_id: str | None) -> str | None:
    """Keyed hash of a study; None when the manifest gives no study."""
    if not study_id:
        return None
    return keyed_hash(key, "study", patient_id.strip(), study_id.strip())


def parse_label(raw: str | None) -> int | None:
    """0 / 1 for benign / malignant (or "0" / "1"), -1 for empty, None for anything else."""
    text = (raw or "").strip().lower()
    if not text:
        return UNKNOWN_LABEL
    return LABELS.get(text)


def _file_stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _fingerprint(cfg: IngestConfig, *parts: str) -> str:
    """The work's fingerprint: the settings that change what ingest writes
    (:func:`~usv_ray.config.output_settings`) and ``parts``. How it runs (workers, CPUs,
    threads, row groups, a GPU) redoes nothing; the detector counts for videos without
    annotations only (ingest.pipeline._detected)."""
    settings = json.dumps(output_settings(cfg), sort_keys=True)
    return hashlib.sha256("\x1f".join((settings, *parts)).encode()).hexdigest()[:32]


def error_row(source: str, video_id: str | None, stage: str, kind: str, message: str) -> dict:
    """A row of the ``errors`` table."""
    return {
        "source": source,
        "video_id": video_id,
        "stage": stage,
        "kind": kind,
        "message": message,
    }


def error_video_row(task: VideoTask, kind: str, message: str) -> dict:
    """A ``videos`` row for a video that could not be ingested."""
    return {
        "video_id": task.video_id,
        "patient_key": task.patient_key,
        "study_key": task.study_id_hash,
        "label": task.label,
        "source": task.source,
        "n_frames": None,
        "fps": None,
        "width": None,
        "height": None,
        "codec": None,
        "status": "error",
        "error": f"{kind}: {message}",
    }


def read_manifest(
    manifest: str | Path, key: bytes, cfg: IngestConfig
) -> tuple[list[VideoTask], list[dict], list[tuple[VideoTask, str, str]]]:
    """Parse the manifest.

    Returns ``(tasks, row_errors, rejected)``: the videos to decode; error rows for rows
    that name no video at all (empty path, duplicate); and tasks rejected before decoding
    with their ``(kind, message)`` (missing file, bad label), which still get a videos row.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    root = manifest.resolve().parent
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"{manifest}: missing column {missing[0]!r} (columns: {', '.join(columns)}; "
                f"expected {', '.join(KNOWN_COLUMNS)})"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]

    tasks: list[VideoTask] = []
    row_errors: list[dict] = []
    rejected: list[tuple[VideoTask, str, str]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        video = row.get("video", "")
        patient_id = row.get("patient_id") or None
        source = redact(video, patient_id) or f"{manifest.name}:{line}"
        if not video:
            row_errors.append(error_row(source, None, "manifest", "no_video", f"line {line}"))
            continue
        path = Path(video) if os.path.isabs(video) else root / video
        path = Path(os.path.normpath(path))
        if str(path) in seen:
            row_errors.append(
                error_row(
                    source,
                    None,
                    "manifest",
                    "duplicate_row",
                    f"line {line} repeats the video of line {seen[str(path)]}; kept the first",
                )
            )
            continue
        seen[str(path)] = line
        annotations = row.get("annotations") or None
        annotations_path, annotations_stamp = None, ""
        if annotations and is_inline(annotations):  # the JSON in the cell itself
            annotations_path = annotations
            annotations_stamp = hashlib.sha256(annotations.encode()).hexdigest()
        elif annotations:
            annotations_path = str(
                Path(annotations) if os.path.isabs(annotations) else root / annotations
            )
            annotations_stamp = _file_stamp(Path(annotations_path))
        label = parse_label(row.get("label"))
        study_id = row.get("study_id") or None
        task = VideoTask(
            video_id=keyed_hash(key, "video", os.path.normpath(video)),
            source=source,
            path=str(path),
            patient_key=patient_key(key, patient_id) if patient_id else None,
            study_id_hash=study_key(key, patient_id, study_id) if patient_id else None,
            study_id_raw=None if patient_id else study_id,
            label=UNKNOWN_LABEL if label is None else label,
            annotations=annotations_path,
            fingerprint=_fingerprint(
                cfg,
                str(path),
                _file_stamp(path),
                row.get("label", ""),
                patient_key(key, patient_id) if patient_id else "",
                study_id or "",
                annotations_stamp,
            ),
        )
        if label is None:
            rejected.append(
                (
                    task,
                    "bad_label",
                    f"label {row.get('label')!r} is not benign, malignant, 0, 1 or empty",
                )
            )
        elif not path.exists():
            rejected.append((task, "missing_file", "the file does not exist"))
        else:
            tasks.append(task)
    return tasks, row_errors, rejected
