"""The reference of every folder (``docs/folders.md``): what each path of a folder is and
holds, drawn from the folder classes of :mod:`usv_ray.layout.folders` (a test checks that
every path listed is one the class knows, and the docs page is this module's output).

Run ``python -m usv_ray.layout.reference > docs/folders.md`` after changing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from usv_ray.layout.folders import (
    ClassifyFolder,
    DetectFolder,
    ExportFolder,
    Folder,
    IndexFolder,
    IngestFolder,
    PredictFolder,
    PretrainFolder,
    ReidFolder,
    ScoreFolder,
    TuneFolder,
)


@dataclass(frozen=True)
class Entry:
    """One path of a folder, for its reference: what it is and what it holds."""

    path: str  # relative to the folder; <video_id>, <k> and the like stand for many
    per: str  # "one row per ..." for a table, else what the path is
    holds: str


# what each folder holds, in the order a night meets them
ENTRIES: dict[type[Folder], tuple[Entry, ...]] = {
    IngestFolder: (
        Entry(
            "videos.parquet",
            "video",
            "video_id, patient_key, study_key, label, source, n_frames, fps, size, codec, "
            "status (`ok` / `error`), error, view (the source region its frames show), "
            "annotated (its annotations are whole)",
        ),
        Entry(
            "errors.parquet",
            "problem",
            "source, video_id, stage, kind (`missing_file`, `not_video`, `bad_label`, "
            "`duplicate_row`, `partial_decode`, `bad_annotations`, `too_short`, ...), message",
        ),
        Entry(
            "frames/<video_id>.parquet",
            "kept frame",
            "gray uint8 image (`ingest.frame_size` square), frame_index in the source, "
            "seq_index / seq_len, the annotated boxes in it (what the detector trains on)",
        ),
        Entry(
            "tracklets/<video_id>.parquet",
            "tracklet",
            "tracklet_id, nodule_id (keyed hash; null for an automatic one), T x "
            "`patch_height` x `patch_width` clip, source (`annotated` / `automatic`), score "
            "(the mean detection score), its box on every frame",
        ),
        Entry(
            "ingest.json",
            "folder",
            "the frame and patch settings every video was made with: a folder holds one set, "
            "and a run with others is refused",
        ),
        Entry("keying.json", "folder", "which kind of key keyed it (never the key)"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
        Entry("journal/<video_id>.json", "video", "what makes a rerun skip it"),
    ),
    ClassifyFolder: (
        Entry(
            "predictions/predictions.parquet",
            "video, method and fold",
            "video_id, patient_key, fold, method, prob (P(malignant)), label",
        ),
        Entry(
            "tables/table3.{md,csv}",
            "method",
            "the ablation: CNN_Vote, CNN_Aver, variable-frame CNN-LSTM",
        ),
        Entry(
            "tables/table4.{md,csv}",
            "method",
            "the comparison: C3D_BN, R3D, R(2+1)D, Key_Frame, equal- and variable-frame CNN-LSTM",
        ),
        Entry(
            "tables/frame_counts.{md,csv}",
            "frame set",
            "equal-frame sets of 10 to 20 frames against the variable-frame set",
        ),
        Entry(
            "tables/calibration.{md,csv}",
            "method",
            "Brier score and expected calibration error (equal-width and equal-mass bins) of "
            "the out-of-fold P, before and after calibration",
        ),
        Entry(
            "tables/operating_point.{md,csv}",
            "method",
            "the trade-off: per target sensitivity (`classify.target_sensitivity` among "
            "them, marked chosen) the threshold, its sensitivity and specificity and the "
            "share read malignant (95% CIs), on the out-of-fold predictions and cross-fitted",
        ),
        Entry(
            "plots/",
            "figure",
            "ROC and PR curves; per method a confusion matrix, the probabilities of TP / TN "
            "/ FP / FN, and a reliability diagram; `operating_curve.png`, the bundle's "
            "sensitivity against specificity with its chosen point",
        ),
        Entry("bundle/", "folder", "the diagnosis bundle (README: Bundles)"),
        Entry("features/fold=<k>/", "frame", "the feature cache: 512-d feature and P(malignant)"),
        Entry(
            "runs/",
            "Train run",
            "checkpoints, and the finished models (`runs/cnn/models/fold=<k>.pt`)",
        ),
        Entry("folds.parquet", "video", "video_id, patient_key, label, fold"),
        Entry(
            "calibration_share.parquet",
            "video",
            "with `classify.calibration_share`: the held-out videos the calibrator and "
            "threshold were fitted on (video_id, patient_key, label, the members' P and mean)",
        ),
        Entry("classify.json", "folder", "the settings and data it was made from; its summary"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    ReidFolder: (
        Entry(
            "tables/table3.{md,csv}",
            "model and split",
            "ACC, SE, SP, AUC (95% intervals), on validation and test pairs, with the threshold",
        ),
        Entry(
            "tables/delong.{md,csv}",
            "split",
            "CM against VM: AUC difference, its interval, z and p",
        ),
        Entry(
            "tables/table4_clustering.{md,csv}",
            "method",
            "Algorithm 1, the closure, DBSCAN, MeanShift, AffinityPropagation on the test patients",
        ),
        Entry("plots/roc_val.png, plots/roc_test.png", "figure", "ROC curves of both models"),
        Entry(
            "embeddings/",
            "tracklet",
            "tracklet_id, patient_key, study_key, embedding (512 float32, unit norm), model",
        ),
        Entry(
            "bundle/",
            "folder",
            "the re-ID bundle: every model, the patch settings it reads, its test metrics, "
            "and the tau the sweep recorded for it",
        ),
        Entry(
            "runs/reid_<model>/",
            "Train run",
            "checkpoints, and the finished model (`models/<model>.pt`)",
        ),
        Entry("splits.parquet", "tracklet", "tracklet_id, patient_key, nodule_id, split"),
        Entry("reid.json", "folder", "the settings and data it was made from; its summary"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    DetectFolder: (
        Entry(
            "tables/detection.{md,csv}",
            "split",
            "AP at IoU 0.5 and AP over IoU 0.5:0.95 (pycocotools, COCO's own evaluation) on "
            "the validation and test patients' frames",
        ),
        Entry(
            "plots/pr.png, plots/examples.png",
            "figure",
            "precision-recall at IoU 0.5; test frames with their true boxes and the detections",
        ),
        Entry(
            "bundle/",
            "folder",
            "the detector bundle ingest runs (`--set ingest.detector=DET/bundle`)",
        ),
        Entry("splits.parquet", "video", "the patient split of the annotated videos"),
        Entry("runs/detector/", "Train run", "checkpoints, and `models/detector.pt`"),
        Entry("detect.json", "folder", "the settings and data it was made from; its summary"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    PretrainFolder: (
        Entry(
            "bundle/",
            "folder",
            "the trunk bundle (`trunk.pt`, the frame settings, the method and its settings, "
            "the data fingerprint): `--set classify.pretrained=PRE/bundle` or "
            "`detect.pretrained=PRE/bundle`",
        ),
        Entry(
            "tables/pretraining.{md,csv}",
            "epoch",
            "training loss, and on the held-out patients' videos the contrastive loss and "
            "the pair accuracy (the share of views whose nearest view is their pair)",
        ),
        Entry("plots/losses.png", "figure", "the same losses, drawn, the kept epoch marked"),
        Entry("splits.parquet", "video", "video_id, patient_key, split (train / val)"),
        Entry("runs/trunk/", "Train run", "checkpoints, and `models/trunk.pt` (with its head)"),
        Entry("pretrain.json", "folder", "the settings and data it was made from; its summary"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    PredictFolder: (
        Entry(
            "diagnoses.parquet",
            "video and model version",
            "prob (calibrated P(malignant)), prob_raw (the members' mean), spread (their "
            "standard deviation), member_probs, reading (`malignant` / `benign` at the "
            "bundle's threshold), threshold, frames read, status (`ok` / `error`) and why, "
            "diagnosed_at",
        ),
        Entry(
            "tracklet_diagnoses.parquet",
            "tracklet and model version",
            "the same P for the stored frames the tracklet spans, read on their own",
        ),
        Entry(
            "summary.json",
            "model version",
            "videos, errors, malignant readings; the version predict ran last, and what its "
            "last run did: tonight's videos and how many read malignant, beside the share "
            "the bundle expects (`expected_share`)",
        ),
        Entry(
            "parts/<version>/",
            "part",
            "the rows a run has committed so far: a run stopped midway keeps them; merged "
            "into the tables at its end",
        ),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    IndexFolder: (
        Entry(
            "nodules.parquet",
            "nodule",
            "patient_key, nodule_uid (stable across nights), tracklet_ids, study_keys, "
            "centroid, n_tracklets, n_videos, n_studies, first_study, last_study, "
            "updated_at, index_version; with `--diagnoses`: malignancy (calibrated "
            "P(malignant) of the nodule), malignancy_first and malignancy_latest (at its "
            "first and its latest exam), turned_suspicious (below the bundle's threshold at "
            "the first, at or above at the latest), nodule_scoring, diagnosis_version",
        ),
        Entry("embeddings/<NNNNN>/", "tracklet", "the embeddings each run added"),
        Entry(
            "errors.parquet",
            "problem",
            "tracklets that could not be embedded (`bad_tracklet`), patients that failed "
            "(`patient_failed`)",
        ),
        Entry(
            "summary.json",
            "folder",
            "patients, tracklets, nodules, what this run embedded, nodules scored and turned "
            "suspicious; where nodules are annotated, pairwise precision / recall / F and for "
            "how many patients the nodule count is right",
        ),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    ExportFolder: (
        Entry(
            "sr/<study>.dcm",
            "exam",
            "a DICOM Comprehensive 3D SR (TID 1500): per nodule its tracking UID and "
            "P(malignant), per video its reading; filed with the source study where the exam's "
            "videos are DICOM. Holds the patient's ID and name, for the PACS",
        ),
        Entry(
            "fhir/<study>.json",
            "exam",
            "a FHIR R4B collection Bundle: a DiagnosticReport, an Observation per nodule and "
            "per video, a Device for the algorithm. Holds the patient's ID, for the EHR",
        ),
        Entry("summary.json", "folder", "documents and exams written, the bundle versions"),
    ),
    ScoreFolder: (
        Entry(
            "tables/night_videos.{md,csv}",
            "video of tonight",
            "its diagnosis and the truth",
        ),
        Entry(
            "tables/night_metrics.{md,csv}",
            "night",
            "accuracy, sensitivity, specificity, ... of tonight's readings",
        ),
        Entry(
            "tables/night_nodules.{md,csv}",
            "nodule seen tonight",
            "P(malignant) at its first exam and now, the truth",
        ),
        Entry(
            "tables/nodule_scoring.{md,csv}",
            "way of scoring",
            "per-nodule AUC of each way to score a nodule",
        ),
        Entry(
            "tables/index_pairs.{md,csv}",
            "set of tracklets",
            "the index over every tracklet: pairwise scores (all, annotated, automatic)",
        ),
        Entry(
            "tables/index_nodules.{md,csv}",
            "figure",
            "the index: right nodule counts; tonight, uids kept and wrong merges",
        ),
        Entry(
            "tables/tracking.{md,csv}",
            "set of videos",
            "the automatic tracklets against the true boxes",
        ),
        Entry(
            "tables/index_gap.{md,csv}",
            "source of tracklets",
            "the index from automatic tracklets against the index from annotated ones",
        ),
        Entry("gap/", "folder", "the ingest and the two indexes of that comparison"),
        Entry("summary.json", "folder", "the headline figures"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
    TuneFolder: (
        Entry("results.{md,csv}", "trial", "its parameters and metrics, best first"),
        Entry(
            "best.yaml",
            "folder",
            "the full config with the best values: use it as `--config`",
        ),
        Entry(
            "tau_interval.{md,csv}",
            "folder",
            "the tau target: the chosen tau, and the tau and F each patient resample chooses",
        ),
        Entry(
            "link.{md,csv}",
            "folder",
            "the tau target: the link model at its threshold, cross-fitted over folds of "
            "validation patients, F with its interval",
        ),
        Entry("tune.json", "folder", "the sweep's settings and data"),
        Entry("sweep/", "folder", "the Tune experiment, which a rerun resumes"),
        Entry("runs/", "folder", "the trials' Train runs"),
        Entry("report.json", "folder", "its section of the report (`usv-ray report`)"),
    ),
}


def reference() -> str:
    """``docs/folders.md``: every folder's layout, drawn from :data:`ENTRIES`."""
    lines = [
        "# Folders: what each stage writes",
        "",
        "Drawn from `usv_ray/layout/reference.py` (`python -m usv_ray.layout.reference > "
        "docs/folders.md`); a test keeps the two the same.",
    ]
    for folder, entries in ENTRIES.items():
        lines += ["", f"## {folder.TITLE}", "", folder.__doc__.strip(), ""]
        lines += ["| path | one per | holds |", "|---|---|---|"]
        lines += [f"| `{e.path}` | {e.per} | {e.holds} |" for e in entries]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
