"""The report of a run: one HTML page and two Markdown files from what the stages wrote.

``write_report(out)`` reads an output folder laid out as ``usv-ray demo`` lays it out
(``data/``, ``classify/``, ``reid/``, ``predict/``, ``index/``, ``score/``, ``tune/``: a
demo's, or a real archive's stages run by hand into one folder) and writes
``out/report.html``, a single self-contained page (images embedded as base64 data URIs,
so the file can be mailed), ``out/report.md`` (images linked relative to ``out``) and
``out/results.md``, the tables alone with no path or time in them (``make demo`` copies it
to ``docs/demo-results.md``).
It only reads files: a stage that did not run gets a "not run" section instead of an
error, and a rerun rewrites all three.

The header says what the folder is (a demo on a synthetic archive, or a run on an
archive's data) and how its patients were keyed, as ingest recorded it in
``data/keying.json`` (the public development key or a private key; never the key).
Tables read as a clinician reads them: each value with its 95% interval in one cell,
"74.3 (61.7–85.7)", columns and titles named by what they hold.

Every table and figure is labelled with the data and the configuration it came from: the
data folder with its counts, and the stage's JSON record (``<stage>.json``, written through
``usv_ray.io.claim_folder``: the settings' fingerprint and the settings themselves).
Everything read from a file is HTML-escaped before it reaches either page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import mimetypes
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from usv_ray.errors import UsvRayError
from usv_ray.io import atomic_path

__all__ = ["ReportError", "write_report"]

HTML_NAME = "report.html"
MD_NAME = "report.md"
RESULTS_NAME = "results.md"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
KEYED = (
    "Patients appear only as patient_key, a keyed hash (HMAC-SHA256) of the patient ID; no "
    "table, figure or file name here holds a raw identifier. "
)
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
UNRECORDED_KEY = (
    "Which key ingest used is not recorded here (no data/keying.json: no data/ folder, or "
    "ingested by an older usv-ray); check it before sharing these results."
)

CLASSIFY_TITLE = "Classification (benign / malignant per video)"
REID_TITLE = "Nodule re-identification (same nodule or not, within a patient)"
DETECT_TITLE = "Nodule detection (the detector that makes automatic tracklets)"
INDEX_TITLE = "Nodule index (tracklets clustered into nodules per patient)"
# the stages whose summary.json the report shows, under this title
SUMMARIES = {"index": "Index summary", "predict": "Diagnoses summary"}
NIGHT_STAGES = ("predict", "index", "score")  # no fingerprint record: versions name their inputs
PREDICT_TITLE = "Diagnoses (the diagnosis bundle applied to every ingested video)"
SCORE_TITLE = "The night against the hidden truth (synthetic archives only)"
# Titles of the tables and figures the stages are known to write, named by what they
# show (the stages' file names follow the papers' table numbers); anything else found in
# their folders is still shown, under its file name.
TITLES = {
    ("classify", "table3"): "Diagnosis per video: frame-level baselines vs the "
    "variable-frame CNN-LSTM",
    ("classify", "table4"): "Diagnosis per video: methods compared",
    ("classify", "frame_counts"): "Diagnosis per video: the equal-frame CNN-LSTM by number "
    "of frames N",
    ("classify", "roc"): "ROC curves",
    ("classify", "pr"): "Precision-recall curves",
    ("reid", "table3"): "Same nodule or not, for pairs of tracklets of one patient: the two "
    "re-ID models compared",
    ("reid", "delong"): "Do the two re-ID models differ? DeLong test of their AUC difference",
    ("reid", "roc_val"): "ROC curves, validation pairs",
    ("reid", "roc_test"): "ROC curves, test pairs",
    ("reid", "table4_clustering"): "Grouping a patient's tracklets into nodules: clustering "
    "methods compared (test patients, each method tuned on the validation patients)",
    ("classify", "calibration"): "Calibration of P(malignant): Brier score and expected "
    "calibration errors of the out-of-fold predictions, before and after calibration "
    "(cross-fitted: each fold calibrated on the others)",
    ("classify", "operating_point"): "Operating point of the diagnosis bundle: the threshold of "
    "calibrated P(malignant) at the target sensitivity, and the specificity it costs",
    ("detect", "detection"): "Detection of nodules in frames: AP at IoU 0.5 and over IoU "
    "0.5:0.95 (COCO's evaluation), on the validation and test patients",
    ("detect", "pr"): "Detection: precision-recall at IoU 0.5",
    ("detect", "examples"): "Detection: test frames with their true boxes and the detections",
    ("score", "tracking"): "Automatic tracklets against the true boxes of every frame of every "
    "video the tracker ran on: of the patients the detector never saw, and of all",
    ("score", "index_gap"): "The nodule index from automatic tracklets against the index from "
    "annotated ones, on the same videos (the detector's test patients)",
    ("score", "night_videos"): "Tonight's videos: each diagnosis beside the hidden truth",
    ("score", "night_metrics"): "Tonight's readings at the bundle's threshold",
    ("score", "night_nodules"): "Nodules seen tonight: P(malignant) at their first exam and "
    "now, and the hidden truth",
    ("score", "nodule_scoring"): "Scoring a nodule: per-nodule ROC AUC of pooling its "
    "tracklets' or its videos' P(malignant), from models that never saw the patient where "
    "there are such",
    ("tune", "results"): "Sweep results, one row per trial",
}
# Column headings in words; a column with a ``<name>_ci`` partner gets " (95% CI)" and the
# interval in its cells. Per table where one name means two things.
HEADINGS = {
    "method": "Method",
    "n_videos": "Videos",
    "accuracy": "Accuracy, %",
    "precision": "PPV (precision), %",
    "sensitivity": "Sensitivity, %",
    "specificity": "Specificity, %",
    "f1": "F1, %",
    "roc_auc": "ROC AUC, %",
    "average_precision": "Average precision, %",
    "model": "Model",
    "split": "Patients",
    "pairs": "Pairs",
    "same": "Same-nodule pairs",
    "threshold": "Decision threshold",
    "ACC": "Accuracy, %",
    "SE": "Sensitivity, %",
    "SP": "Specificity, %",
    "AUC": "ROC AUC, %",
    "models": "Models",
    "p_value": "p",
}
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
TABLE_HEADINGS = {
    ("reid", "table4_clustering"): {
        "parameter": "Tuned parameter",
        "value": "Value",
        "val_f_score": "Pairwise F on validation, %",
        "precision": "Pairwise precision, %",
        "recall": "Pairwise recall, %",
        "f_score": "Pairwise F, %",
        "time_ms": "Time, ms",
        "not_converged": "Patients not converged",
    },
    ("classify", "calibration"): {
        "calibration": "Calibrator",
        "brier_before": "Brier score, before",
        "brier_after": "Brier score, after",
        "ece_uniform_before": "ECE (equal-width bins), before",
        "ece_uniform_after": "ECE (equal-width bins), after",
        "ece_quantile_before": "ECE (equal-mass bins), before",
        "ece_quantile_after": "ECE (equal-mass bins), after",
    },
    ("classify", "operating_point"): {
        "target_sensitivity": "Target sensitivity, %",
        "threshold": "Threshold of calibrated P",
        "sensitivity_cross_fitted": "Sensitivity, cross-fitted, %",
        "specificity_cross_fitted": "Specificity, cross-fitted, %",
    },
    ("score", "night_videos"): {
        "patient": "Patient",
        "video": "Video",
        "prob": "P(malignant), %",
        "spread": "Models' spread, %",
        "reading": "Reading",
        "truth": "Truth",
    },
    ("score", "night_metrics"): {"videos": "Videos", "threshold": "Threshold of calibrated P"},
    ("detect", "detection"): {
        "videos": "Videos",
        "frames": "Frames",
        "nodule_boxes": "Nodule boxes",
        "ap50": "AP at IoU 0.5, %",
        "ap": "AP at IoU 0.5:0.95, %",
    },
    ("score", "tracking"): {
        "patients": "Patients",
        "videos": "Videos",
        "tracklets": "Tracklets",
        "true_boxes": "True boxes",
        "frame_recall": "Frame recall, %",
        "frame_precision": "Frame precision, %",
        "purity": "Tracklet purity, %",
        "idf1": "IDF1, %",
        "idp": "IDP, %",
        "idr": "IDR, %",
        "id_switches": "ID switches",
        "mota": "MOTA, %",
    },
    ("score", "index_gap"): {
        "tracklets_from": "Tracklets from",
        "tracklets": "Tracklets",
        "tracklets_on_a_nodule": "On a true nodule",
        "nodules_listed": "Nodules listed",
        "nodules_true": "True nodules",
        "pairwise_precision": "Pairwise precision, %",
        "pairwise_recall": "Pairwise recall, %",
        "pairwise_f": "Pairwise F, %",
        "patients": "Patients",
        "patients_right_count": "Right nodule count",
        "count_error": "Mean count error",
    },
    ("score", "night_nodules"): {
        "patient": "Patient",
        "nodule": "Nodule",
        "exams": "Exams",
        "videos": "Videos",
        "tracklets": "Tracklets",
        "prob_first": "P(malignant) at first exam, %",
        "prob_latest": "P(malignant) now, %",
        "turned_suspicious": "Turned suspicious",
        "truth": "Truth",
    },
    ("score", "nodule_scoring"): {
        "nodules_of": "Nodules of",
        "scoring": "Scored from",
        "nodules": "Nodules",
        "malignant": "Malignant",
        "roc_auc": "ROC AUC, %",
        "p_value": "p, tracklets vs videos (paired DeLong)",
    },
    # a sweep's columns depend on its target: its own names, but for tau's pairwise scores
    ("tune", "results"): {
        "precision": "Pairwise precision",
        "recall": "Pairwise recall",
        "f_score": "Pairwise F",
        "clusters": "Clusters",
        "status": "Status",
    },
}
PREFIX_TITLES = {
    "confusion_": "Confusion matrix: ",
    "probabilities_": "Predicted probabilities: ",
    "reliability_": "Reliability diagram: ",
}
# Figure order within a stage: summary curves first, then per-method plots.
FIGURE_ORDER = (
    "roc", "pr", "roc_val", "roc_test", "confusion_", "probabilities_", "reliability_",
)  # fmt: skip


class ReportError(UsvRayError, ValueError):
    """The report cannot be written: no output folder, or a stage record that is not JSON."""


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Table:
    """A table from a stage: a CSV (preferred) and/or its Markdown rendering."""

    title: str
    source: str  # path relative to the output folder, e.g. "classify/tables/table4.csv"
    frame: pd.DataFrame | None  # from the CSV
    markdown: str | None  # the stage's own .md, used by report.md when present


@dataclass(frozen=True)
class Figure:
    title: str
    path: Path
    source: str


@dataclass(frozen=True)
class Text:
    """A file shown as it is (e.g. tune's best.yaml)."""

    title: str
    source: str
    text: str


@dataclass
class Section:
    """One stage's part of the report."""

    title: str
    status: str  # "" when the stage ran, else why nothing is shown ("not run", ...)
    provenance: list[str] = field(default_factory=list)  # where it came from, in full
    tags: list[str] = field(default_factory=list)  # the same, short: on every table and figure
    settings: dict[str, str] = field(default_factory=dict)  # flattened record settings
    items: list[Table | Figure | Text] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading


def _rel(path: Path, out: Path) -> str:
    try:
        return path.relative_to(out).as_posix()
    except ValueError:
        return str(path)


def _title(stage: str, stem: str) -> str:
    if (stage, stem) in TITLES:
        return TITLES[(stage, stem)]
    for prefix, title in PREFIX_TITLES.items():
        if stem.startswith(prefix):
            return title + stem[len(prefix) :]
    return stem


def _figure_rank(path: Path) -> tuple[int, str]:
    for rank, key in enumerate(FIGURE_ORDER):
        if path.stem == key or (key.endswith("_") and path.stem.startswith(key)):
            return rank, path.stem
    return len(FIGURE_ORDER), path.stem


def _tables(folder: Path, stage: str, out: Path, first: tuple[str, ...] = ()) -> list[Table]:
    """Every table in ``folder`` (a stem with a .csv and/or .md): ``first`` ones first."""
    if not folder.is_dir():
        return []
    stems = sorted({p.stem for p in folder.iterdir() if p.suffix in (".csv", ".md")})
    stems.sort(key=lambda stem: first.index(stem) if stem in first else len(first))
    tables = []
    for stem in stems:
        csv, md = folder / f"{stem}.csv", folder / f"{stem}.md"
        frame = clinical_table(pd.read_csv(csv), stage, stem) if csv.is_file() else None
        markdown = md.read_text(encoding="utf-8").strip() if md.is_file() else None
        source = _rel(csv if csv.is_file() else md, out)
        tables.append(Table(_title(stage, stem), source, frame, markdown))
    return tables


_INTERVAL = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*-\s*(-?\d+(?:\.\d*)?)\s*$")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_interval(value: Any, low: Any = None, high: Any = None) -> str:
    """``74.3 (61.7–85.7)``: a value and its 95% interval, one decimal; ``n/a`` for none.

    ``low`` may be the stages' ``"61.70-85.71"`` string, with ``high`` left out.
    """
    if _is_missing(value):
        return "n/a"
    if isinstance(low, str) and high is None:
        match = _INTERVAL.match(low)
        if match is None:
            return f"{float(value):.1f} ({low})"
        low, high = (float(bound) for bound in match.groups())
    if _is_missing(low) or _is_missing(high):
        return f"{float(value):.1f}"
    return f"{float(value):.1f} ({float(low):.1f}\u2013{float(high):.1f})"


def clinical_table(frame: pd.DataFrame, stage: str, stem: str) -> pd.DataFrame:
    """A stage's CSV as a clinician reads it: each value with its 95% interval in one cell
    and columns named in words; a table the mapping does not know keeps its names."""
    general = {} if stage == "tune" else HEADINGS
    headings = {**general, **TABLE_HEADINGS.get((stage, stem), {})}
    bounds = {"difference", "low", "high"} <= set(frame.columns)
    shown: dict[str, Any] = {}
    for column in frame.columns:
        partner = str(column)[:-3] if str(column).endswith("_ci") else None
        if (partner in frame.columns) or (bounds and column in ("low", "high")):
            continue  # shown in its value's cell
        name = headings.get(column, column)
        if f"{column}_ci" in frame.columns:
            intervals = frame[f"{column}_ci"].where(frame[f"{column}_ci"].notna(), None)
            cells = [with_interval(v, ci) for v, ci in zip(frame[column], intervals, strict=True)]
            shown[f"{name} (95% CI)"] = cells
        elif bounds and column == "difference":  # DeLong: an AUC difference in [-1, 1]
            cells = [
                with_interval(100 * d, 100 * lo, 100 * hi)
                for d, lo, hi in zip(frame["difference"], frame["low"], frame["high"], strict=True)
            ]
            shown["AUC difference, points (95% CI)"] = cells
        elif column == "p_value":
            shown[name] = [p_value(v) for v in frame[column]]
        elif column == "split":
            shown[name] = [SPLIT_NAMES.get(v, v) for v in frame[column]]
        else:
            shown[name] = frame[column]
    return pd.DataFrame(shown)


def p_value(value: Any) -> str:
    """A p-value as papers print it: two significant digits, ``< 0.001`` below that."""
    if _is_missing(value):
        return "n/a"
    value = float(value)
    if value < 0.001:
        return "< 0.001"
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def _figures(folder: Path, stage: str, out: Path) -> list[Figure]:
    if not folder.is_dir():
        return []
    paths = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_figure_rank
    )
    return [Figure(_title(stage, p.stem), p, _rel(p, out)) for p in paths]


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists joined with commas."""
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:.6g}"
    elif value is None or isinstance(value, bool):
        value = json.dumps(value)  # as the record spells it: null, true, false
    return {prefix.rstrip("."): str(value)}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing; a clear error when it is not JSON."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _record(folder: Path, stage: str) -> tuple[Path, dict[str, Any]] | None:
    """The stage's config record: ``<stage>.json``, else any JSON there with a fingerprint."""
    candidates = [folder / f"{stage}.json", *sorted(folder.glob("*.json"))]
    for path in candidates:
        data = _read_json(path)
        if data is not None and "fingerprint" in data:
            return path, data
    return None


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _when(path: Path) -> str:
    """The local date and time ``path`` was written."""
    return _stamp(path.stat().st_mtime)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _add_record(
    section: Section, found: tuple[Path, dict[str, Any]] | None, where: Path, out: Path
) -> None:
    """Label ``section`` with the stage's record: fingerprint, when, how long, settings."""
    if found is None:
        section.provenance.append(
            f"config: no record (JSON with a fingerprint) in {_rel(where, out)}"
        )
        section.tags.append("config: not recorded")
        return
    path, data = found
    line = f"config: {_rel(path, out)}, fingerprint {str(data['fingerprint'])[:12]}"
    line += f", written {_when(path)}"
    if isinstance(data.get("seconds"), int | float):
        line += f", took {_duration(float(data['seconds']))}"
    section.provenance.append(line)
    section.tags.append(f"config {_rel(path, out)} {str(data['fingerprint'])[:12]}")
    section.settings = _flatten(
        {k: v for k, v in data.items() if k not in ("fingerprint", "seconds", "data")}
    )


def _parquet_columns(path: Path, columns: list[str]) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    return pq.read_table(path, columns=columns).to_pandas()


def _data_line(record_data: Any, out: Path) -> str:
    """The data folder a stage read: its record's ``data`` entry, else the demo's ``out/data``."""
    if isinstance(record_data, str):
        return f"data: {record_data}"
    if (out / "data").is_dir():
        return f"data: {(out / 'data').resolve()}"
    return "data: not recorded"


def _data_section(out: Path) -> Section:
    folder = out / "data"
    section = Section("Data", "" if folder.is_dir() else "not run (no data/ folder)")
    if not folder.is_dir():
        return section
    section.provenance.append(f"data: {folder.resolve()}")
    manifest = out / "archive" / "manifest.csv"
    if manifest.is_file():
        section.provenance.append(f"archive: {manifest.resolve()} (synthetic, written by synth)")
    videos = _parquet_columns(folder / "videos.parquet", ["patient_key", "label", "status"])
    if videos is not None:
        ok = videos[videos["status"] == "ok"]
        section.provenance.append(
            f"videos.parquet: {len(videos)} videos of {videos['patient_key'].nunique()} patients, "
            f"{len(ok)} ingested ok, {len(videos) - len(ok)} failed; "
            f"{int((ok['label'] == 1).sum())} malignant, {int((ok['label'] == 0).sum())} benign, "
            f"{int((ok['label'] < 0).sum())} unlabelled"
        )
    errors = _parquet_columns(folder / "errors.parquet", ["stage"])
    if errors is not None:
        section.provenance.append(f"errors.parquet: {len(errors)} error rows")
    return section


def _classify_counts(folder: Path) -> tuple[str, str] | None:
    """What classify cross-validated (its folds table): a full line and a short tag."""
    folds = _parquet_columns(folder / "folds.parquet", ["patient_key", "label", "fold"])
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


def _reid_counts(folder: Path) -> tuple[str, str] | None:
    """What re-ID trained and evaluated on (its splits table): a full line and a short tag."""
    splits = _parquet_columns(folder / "splits.parquet", ["patient_key", "nodule_id", "split"])
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


def _index_counts(folder: Path) -> tuple[str, str] | None:
    """What the index holds (its summary.json): a full line and a short tag."""
    summary = _read_json(folder / "summary.json")
    if summary is None:
        return None
    patients, tracklets = summary.get("patients", "?"), summary.get("tracklets", "?")
    version = summary.get("index_version", "not recorded")
    return (
        f"index: {summary.get('nodules', '?')} nodules of {patients} patients from {tracklets} "
        f"tracklets; index_version {version} (the model, clip shape, tau and method)",
        f"{tracklets} tracklets of {patients} patients · index_version {version}",
    )


def _detect_counts(folder: Path) -> tuple[str, str] | None:
    """What the detector trained and was tested on (its splits table)."""
    splits = _parquet_columns(folder / "splits.parquet", ["patient_key", "split"])
    if splits is None:
        return None
    parts = [
        f"{split} {int((splits['split'] == split).sum())} videos of "
        f"{splits.loc[splits['split'] == split, 'patient_key'].nunique()} patients"
        for split in ("train", "val", "test")
    ]
    return (
        "annotated videos split by patient: " + "; ".join(parts),
        f"{len(splits)} annotated videos",
    )


def _predict_counts(folder: Path) -> tuple[str, str] | None:
    """What the diagnoses hold (predict's summary.json): a full line and a short tag."""
    summary = _read_json(folder / "summary.json")
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


def _score_counts(folder: Path) -> tuple[str, str] | None:
    """What the score compared (its summary.json): a full line and a short tag."""
    summary = _read_json(folder / "summary.json")
    if summary is None:
        return None
    version = summary.get("model_version", "not recorded")
    return (
        f"the synthetic archive's hidden truth (its truth.json) against tonight's "
        f"{summary.get('night_videos', '?')} videos and the index; diagnoses by {version}",
        f"truth.json · {version}",
    )


def _summary_table(folder: Path, out: Path, title: str) -> list[Table]:
    """A stage's summary.json as a table of fields."""
    summary = _read_json(folder / "summary.json")
    if summary is None:
        return []
    flat = _flatten(summary)
    frame = pd.DataFrame({"field": list(flat), "value": list(flat.values())})
    return [Table(title, _rel(folder / "summary.json", out), frame, None)]


def _stage_section(out: Path, stage: str, title: str, first: tuple[str, ...]) -> Section:
    """A stage's section: provenance, its tables (``first`` ones first), then its plots."""
    folder = out / stage
    if not folder.is_dir():
        return Section(title, f"not run (no {stage}/ folder)")
    section = Section(title, "")
    record = _record(folder, stage)
    data = _data_line(record[1].get("data") if record else None, out)
    section.provenance.append(data)
    section.tags.append(data)
    counting = {
        "classify": _classify_counts,
        "reid": _reid_counts,
        "detect": _detect_counts,
        "predict": _predict_counts,
        "index": _index_counts,
        "score": _score_counts,
    }
    counts = counting[stage](folder)
    if counts is not None:
        section.provenance.append(counts[0])
        section.tags.append(counts[1])
    # the night's stages keep no fingerprint record: their versions (above) name what made them
    if record is not None or stage not in NIGHT_STAGES or counts is None:
        _add_record(section, record, folder, out)
    if stage in SUMMARIES:
        section.items += _summary_table(folder, out, SUMMARIES[stage])
    section.items += _tables(folder / "tables", stage, out, first)
    section.items += _figures(folder / "plots", stage, out)
    if not section.items:
        section.status = "no results yet (the stage did not finish)"
    return section


def _tune_sections(out: Path) -> list[Section]:
    """One section per sweep target folder under ``tune/`` (the demo sweeps ``tau``)."""
    folder = out / "tune"
    if not folder.is_dir():
        return [Section("Tuning sweeps", "not run (no tune/ folder)")]
    sections = []
    for target in sorted(p for p in folder.iterdir() if p.is_dir()):
        section = Section(f"Tuning sweep: {target.name}", "")
        # the sweep's own record, else one for the whole tune folder
        record = _record(target, "tune") or _record(folder, "tune")
        data = _data_line(record[1].get("data") if record else None, out)
        section.provenance.append(data)
        section.tags.append(data)
        _add_record(section, record, target, out)
        section.items += _tables(target, "tune", out, ("results",))
        best = target / "best.yaml"
        if best.is_file():
            title = "Best configuration (a YAML the other commands accept with --config)"
            section.items.append(Text(title, _rel(best, out), best.read_text(encoding="utf-8")))
        section.items += _figures(target, "tune", out)
        if not section.items:
            section.status = "no results yet (the sweep did not finish)"
        sections.append(section)
    return sections or [Section("Tuning sweeps", "not run (tune/ holds no sweep)")]


# ---------------------------------------------------------------------------- rendering


def _number(value: float) -> str:
    """Two decimals; values under 0.1 (p-values, tau) with two significant digits; NaN as
    n/a."""
    if math.isnan(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.2g}"
    return f"{value:.2f}"


def _md_text(text: str) -> str:
    """File text in Markdown prose or tables: raw HTML is escaped, so it shows as text."""
    return html.escape(text, quote=False)


def _md_fence(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _md_table(frame: pd.DataFrame) -> str:
    from usv_ray.evaluate.tables import to_markdown

    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            continue
        shown[column] = shown[column].map(lambda v: _md_text(str(v)) if isinstance(v, str) else v)
    return to_markdown(shown, float_format=_number)  # as the HTML page shows them


def _label(section: Section, source: str) -> str:
    return " · ".join([f"source: {source}", *section.tags])


def _md_item_table(item: Table) -> str:
    """A table's Markdown: from its CSV (as a clinician reads it), else the stage's own."""
    return _md_table(item.frame) if item.frame is not None else _md_text(item.markdown or "")


def render_markdown(
    sections: list[Section], header: list[tuple[str, str]], out: Path, title: str
) -> str:
    """The Markdown report; images are linked relative to ``out``."""
    lines = [f"# {_md_text(title)}", ""]
    lines += [f"- **{name}**: {_md_text(value)}" for name, value in header]
    for section in sections:
        lines += ["", f"## {_md_text(section.title)}", ""]
        if section.status:
            lines += [f"*{_md_text(section.status)}*"]
            continue
        lines += [f"- {_md_text(line)}" for line in section.provenance]
        if section.settings:
            settings = pd.DataFrame(
                {"setting": list(section.settings), "value": list(section.settings.values())}
            )
            lines += ["", "<details><summary>settings</summary>", "", _md_table(settings)]
            lines += ["", "</details>"]
        for item in section.items:
            lines += ["", f"### {_md_text(item.title)}", ""]
            lines += [f"*{_md_text(_label(section, item.source))}*", ""]
            if isinstance(item, Table):
                lines += [_md_item_table(item)]
            elif isinstance(item, Figure):
                link = urllib.parse.quote(_rel(item.path, out))
                alt = _md_text(item.title).replace("]", "\\]").replace("[", "\\[")
                lines += [f"![{alt}]({link})"]
            else:
                lines += [_md_fence(item.text)]
    return "\n".join(lines) + "\n"


def render_results(sections: list[Section], header: list[tuple[str, str]], title: str) -> str:
    """The tables alone, as Markdown with no absolute path and no time in it: a page that
    a rerun with the same results leaves unchanged (``make demo`` commits it)."""
    lines = [f"# {_md_text(title)}", ""]
    lines += [f"- **{name}**: {_md_text(value)}" for name, value in header]
    for section in sections:
        tables = [item for item in section.items if isinstance(item, Table)]
        if not tables and not section.status:
            continue
        lines += ["", f"## {_md_text(section.title)}"]
        if section.status:
            lines += ["", f"*{_md_text(section.status)}*"]
            continue
        tags = [tag for tag in section.tags if not tag.startswith("data: ")]  # a local path
        for item in tables:
            label = " · ".join([f"source: {item.source}", *tags])
            lines += ["", f"### {_md_text(item.title)}", "", f"*{_md_text(label)}*", ""]
            lines += [_md_item_table(item)]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.header td { padding: .1em 1em .1em 0; vertical-align: top; }
.header td:first-child { white-space: nowrap; }
.label { color: #555; font-size: .85em; margin: .2em 0 .6em; }
.status { color: #a40; font-style: italic; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-size: .85em; }
table.data th, table.data td { border: 1px solid #ccc; padding: .2em .5em; }
table.data td { text-align: right; white-space: nowrap; }
table.data td:first-child { text-align: left; } table.data th { background: #f2f2f2; }
figure { display: inline-block; width: 48%; margin: .5em 0; vertical-align: top; }
figure img { width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _html_table(frame: pd.DataFrame) -> str:
    # to_html escapes every cell and header (escape=True is its default; said for the reader)
    return frame.to_html(
        index=False, escape=True, na_rep="n/a", float_format=_number, border=0, classes="data"
    )


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(sections: list[Section], header: list[tuple[str, str]], title: str) -> str:
    """The HTML report: one self-contained page, images embedded as data URIs."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<table class="header">',
        *(f"<tr><td><b>{e(name)}</b></td><td>{e(value)}</td></tr>" for name, value in header),
        "</table>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{e(section.title)}</h2>")
        if section.status:
            parts.append(f'<p class="status">{e(section.status)}</p></section>')
            continue
        parts.append(
            "<ul>" + "".join(f"<li>{e(line)}</li>" for line in section.provenance) + "</ul>"
        )
        if section.settings:
            settings = pd.DataFrame(
                {"setting": list(section.settings), "value": list(section.settings.values())}
            )
            parts.append(f"<details><summary>settings</summary>{_html_table(settings)}</details>")
        for item in section.items:
            label = f'<p class="label">{e(_label(section, item.source))}</p>'
            if isinstance(item, Table):
                body = (
                    _html_table(item.frame)
                    if item.frame is not None
                    else f"<pre>{e(item.markdown or '')}</pre>"
                )
                parts.append(f'<h3>{e(item.title)}</h3>{label}<div class="scroll">{body}</div>')
            elif isinstance(item, Figure):
                parts.append(
                    f'<figure><img src="{_data_uri(item.path)}" alt="{e(item.title)}">'
                    f"<figcaption><b>{e(item.title)}</b>{label}</figcaption></figure>"
                )
            else:
                parts.append(f"<h3>{e(item.title)}</h3>{label}<pre>{e(item.text)}</pre>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- entry point


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("usv_ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _keying(out: Path) -> dict[str, list[str]] | None:
    """What ingest recorded about the key of this folder's patients (never the key)."""
    from usv_ray.privacy import KEYING_NAME

    record = _read_json(out / "data" / KEYING_NAME)
    if record is None or not isinstance(record.get("keys"), list):
        return None
    return {
        "keys": sorted(str(k) for k in record["keys"]),
        "sources": sorted(str(s) for s in record.get("sources", [])),
    }


def describe_folder(out: Path) -> tuple[str, str, str]:
    """``(title, what the folder is, how its patients were keyed)``.

    A demo is what ``usv-ray demo`` writes: the synthetic archive it made (``archive/``,
    from synth) beside the stages' folders. Anything else is a run on an archive's data.
    """
    keying = _keying(out)
    demo = (out / "archive" / "manifest.csv").is_file()
    if demo:
        title = "usv-ray demo report"
        what = "a `usv-ray demo` run: every stage on a synthetic archive that synth wrote"
    else:
        title = "usv-ray report"
        what = "a run on an archive's data: the stages' folders found in this output folder"
    if keying is None:
        return title, what, KEYED + UNRECORDED_KEY
    note = KEY_NOTES.get(tuple(keying["keys"]))
    if note is None:  # a record written by a newer usv-ray, with a kind not known here
        note = f"Ingest recorded these kinds of key: {', '.join(keying['keys'])}."
    note = note.format(sources=" and ".join(keying["sources"]) or "not recorded")
    if keying["keys"] == ["development"] and not demo:
        note += " This folder is not a demo: if it holds real patients, re-ingest it."
    return title, what, KEYED + note


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``out/report.html``, ``out/report.md`` and ``out/results.md`` from the stages'
    outputs in ``out``.

    Sections: data, classify, reid, detect, predict, index, score, tune (one per sweep); a stage
    without a folder is "not run". Returns ``(html_path, md_path)``; results.md (the tables
    alone, with no path or time in them) lies beside them. All three are written atomically.
    """
    out = Path(out)
    if not out.is_dir():
        raise ReportError(
            f"{out} is not a folder: give the folder that `usv-ray demo --out` or the "
            "stages (data/, classify/, reid/, ...) wrote"
        )
    sections = [
        _data_section(out),
        _stage_section(out, "classify", CLASSIFY_TITLE, ("table3", "table4")),
        _stage_section(out, "reid", REID_TITLE, ("table3", "delong", "table4_clustering")),
        _stage_section(out, "detect", DETECT_TITLE, ("detection",)),
        _stage_section(out, "predict", PREDICT_TITLE, ()),
        _stage_section(out, "index", INDEX_TITLE, ()),
        _stage_section(
            out,
            "score",
            SCORE_TITLE,
            (
                "night_metrics",
                "night_videos",
                "night_nodules",
                "nodule_scoring",
                "tracking",
                "index_gap",
            ),
        ),
        *_tune_sections(out),
    ]
    records = [_record(out / stage, stage) for stage in ("classify", "reid", "detect", "index")]
    records += [_record(p, "tune") for p in sorted((out / "tune").glob("*/"))]
    written = [found[0] for found in records if found is not None]
    written += [
        path
        for stage in ("predict", "index", "score")
        if (path := out / stage / "summary.json").is_file()
    ]
    stamps = [path.stat().st_mtime for path in written]
    title, what, privacy = describe_folder(out)
    portable = [("folder", what), ("usv_ray version", _version()), ("privacy", privacy)]
    header = [
        ("folder", what),
        ("run", _stamp(max(stamps)) if stamps else "no stage record found"),
        ("report written", _stamp(dt.datetime.now().timestamp())),
        ("usv_ray version", _version()),
        ("output folder", str(out.resolve())),
        ("privacy", privacy),
    ]
    html_path, md_path = out / HTML_NAME, out / MD_NAME
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(sections, header, title), encoding="utf-8")
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(sections, header, out, title), encoding="utf-8")
    results_title = title.replace(" report", ": results")
    with atomic_path(out / RESULTS_NAME) as tmp:
        tmp.write_text(render_results(sections, portable, results_title), encoding="utf-8")
    return html_path, md_path
