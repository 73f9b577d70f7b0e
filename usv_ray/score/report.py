"""Score's section of the report: the night, the ways to score a nodule, the tracker and
the index from automatic tracklets, each against a synthetic archive's hidden truth."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import RunFolder, ScoreFolder

PART = RunFolder.part("score")
TITLE, ORDER = PART.title, PART.order
FIRST = (
    "night_metrics",
    "night_videos",
    "night_nodules",
    "nodule_scoring",
    "index_pairs",
    "index_nodules",
    "tracking",
    "index_gap",
)
TITLES = {
    "tracking": "Automatic tracklets against the true boxes of every frame of every video the "
    "tracker ran on: of the patients the detector never saw, and of all",
    "index_pairs": "The nodule index against the truth over every tracklet it holds: pairs of "
    "one patient's tracklets, all of them and by source (95% intervals over patients)",
    "index_nodules": "The nodule index against the truth: patients with the right nodule "
    "count, and tonight, nodules that joined their earlier uid or were merged into another",
    "index_gap": "The nodule index from automatic tracklets against the index from annotated "
    "ones, on the same videos (the detector's test patients)",
    "night_videos": "Tonight's videos: each diagnosis beside the hidden truth",
    "night_metrics": "Tonight's readings at the bundle's threshold",
    "night_nodules": "Nodules seen tonight: P(malignant) at their first exam and now, and the "
    "hidden truth",
    "nodule_scoring": "Scoring a nodule: per-nodule ROC AUC of pooling its tracklets' or its "
    "videos' P(malignant), from models that never saw the patient where there are such",
}
PAIRS = {
    "tracklets": "Tracklets",
    "indexed": "Indexed",
    "on_a_nodule": "On a true nodule",
    "patients": "Patients",
    "pairs": "True pairs",
    "precision": "Pairwise precision, %",
    "precision_ci": "95% CI",
    "recall": "Pairwise recall, %",
    "recall_ci": "95% CI",
    "f": "Pairwise F, %",
    "f_ci": "95% CI",
}
HEADINGS = {
    "night_videos": {
        "patient": "Patient",
        "video": "Video",
        "prob": "P(malignant), %",
        "spread": "Models' spread, %",
        "reading": "Reading",
        "truth": "Truth",
    },
    "night_metrics": {"videos": "Videos", "threshold": "Threshold of calibrated P"},
    "tracking": {
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
    "index_pairs": PAIRS,
    "index_nodules": {
        "figure": "Figure",
        "share": "Share, %",
        "share_ci": "95% CI",
        "count": "Count",
    },
    "index_gap": {
        "tracklets_from": "Tracklets from",
        **PAIRS,
        "right_count": "Right nodule count, %",
        "right_count_ci": "95% CI",
        "f_difference": "F vs annotated, points",
        "f_difference_low": "low",
        "f_difference_high": "high",
    },
    "night_nodules": {
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
    "nodule_scoring": {
        "nodules_of": "Nodules of",
        "scoring": "Scored from",
        "nodules": "Nodules",
        "malignant": "Malignant",
        "roc_auc": "ROC AUC, %",
        "p_value": "p, tracklets vs videos (paired DeLong)",
    },
}


def _counts(folder: ScoreFolder) -> tuple[str, str] | None:
    """What the score compared (its summary.json): a full line and a short tag."""
    summary = sections.read_json(folder.summary)
    if summary is None:
        return None
    version = summary.get("model_version", "not recorded")
    return (
        f"the synthetic archive's hidden truth (its truth.json) against tonight's "
        f"{summary.get('night_videos', '?')} videos and the index; diagnoses by {version}",
        f"truth.json · {version}",
    )


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write score's report section (``out/report.json``, ``out`` the run's ``score/``)
    from its tables and ``summary.json``; ``data``: the run's data folder. Returns the
    path. Score calls it at the end of its run, after the summary. Score keeps no
    fingerprint record: the model version it names made what it scored."""
    folder = ScoreFolder(out)
    section = sections.stage_section(
        TITLE,
        ORDER,
        data=data,
        counts=_counts(folder),
        record=None,
        keeps_record=False,
        items=sections.tables(folder.tables, folder.root, TITLES, HEADINGS, FIRST),
    )
    return sections.write_section(section, folder.report)
