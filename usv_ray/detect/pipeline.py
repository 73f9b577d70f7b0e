"""``usv-ray detect --data DATA --out DET``: train the nodule detector on the annotated videos.

The videos whose annotations are whole are split by patient (``detect.split``); the
detector trains on the training patients' stored frames and their boxes, keeps its best
epoch by validation AP at IoU 0.5, and is evaluated on the test patients by COCO's own
evaluation (pycocotools). Output layout under ``out``::

    detect.json                 settings and data this folder was made from
    splits.parquet              video_id, patient_key, split
    runs/detector/              the Ray Train run (checkpoints, models/detector.pt)
    tables/detection.{md,csv}   AP at IoU 0.5 and AP over 0.5:0.95, validation and test
    plots/pr.png                precision-recall at IoU 0.5
    plots/examples.png          test frames with their true boxes and the detections
    bundle/                     the detector bundle ingest runs (usv_ray.detect.bundle)

A rerun resumes the training and redoes the evaluation; a folder made with other settings
or data is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.config import Config, to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectSummary:
    out: Path
    videos: int  # annotated videos
    patients: int
    table: pd.DataFrame  # AP per split
    bundle: dict  # the detector bundle's record
    seconds: float


def _fingerprint(cfg: Config, splits: pd.DataFrame, frames: dict) -> str:
    """What the folder depends on: the detector's training settings, the settings its
    ``frames`` were ingested with, and the videos."""
    settings = {k: v for k, v in to_dict(cfg.detect).items() if k in TRAINING_SETTINGS}
    digest = hashlib.sha256(json.dumps([settings, frames], sort_keys=True).encode())
    for row in splits.itertuples(index=False):
        digest.update(f"{row.video_id},{row.patient_key},{row.split};".encode())
    return digest.hexdigest()


# the detect settings its training depends on (the rest set how ingest runs it)
TRAINING_SETTINGS = (
    "model",
    "seed",
    "split",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "val_every",
    "best",
    "precision",
    "score_threshold",
)


def _test_batches(data: Path, video_ids: list[str], batch: int = 64):
    """The test frames and their boxes, collated in batches of ``batch``, read directly."""
    import torch

    from usv_ray.classify.cnn import frame_shards
    from usv_ray.detect.data import FRAME_COLUMNS, collate

    rows = pa.concat_tables(
        pq.read_table(s, columns=FRAME_COLUMNS) for s in frame_shards(data, video_ids)
    )
    for start in range(0, rows.num_rows, batch):
        part = rows.slice(start, batch).to_pydict()
        images, boxes = collate({k: np.array(v, dtype=object) for k, v in part.items()})
        yield images, [torch.as_tensor(b) for b in boxes]


def _evaluate(
    cfg: Config, data: Path, out: Path, splits: pd.DataFrame, weights: Path, size: int
) -> pd.DataFrame:
    """AP on the validation and test patients' frames; the PR curves and examples."""
    import torch

    from usv_ray.detect.evaluate import detection_ap, examples_plot, pr_curve_plot
    from usv_ray.detect.models import build_detector
    from usv_ray.detect.training import detect_all, example_frames
    from usv_ray.evaluate.tables import write_table
    from usv_ray.train import load_model

    state, meta = load_model(weights)
    model = build_detector(meta)
    model.load_state_dict(state)
    rows, curves = [], {}
    subtitle = (
        f"{cfg.detect.model}, {size} px frames, {cfg.detect.epochs} epochs (best epoch "
        f"{meta['best_epoch'] + 1} by validation AP50); patients split {cfg.detect.split}"
    )
    for split in ("val", "test"):
        ids = splits.loc[splits["split"] == split, "video_id"].tolist()
        if not ids:
            continue
        truth, found = detect_all(model, _test_batches(data, ids), torch.device("cpu"))
        scores = detection_ap(truth, found)
        curves[{"val": "validation", "test": "test"}[split]] = scores
        rows.append(
            {
                "split": split,
                "videos": len(ids),
                "frames": scores["frames"],
                "nodule_boxes": scores["boxes"],
                "ap50": 100 * scores["ap50"],
                "ap": 100 * scores["ap"],
            }
        )
        if split == "test":
            chosen = example_frames(truth)
            frames = np.concatenate(
                [images[:, 0].numpy() for images, _ in _test_batches(data, ids)]
            )
            examples_plot(
                frames[chosen],
                [truth[i] for i in chosen],
                [found[i] for i in chosen],
                out / "plots" / "examples.png",
                subtitle,
            )
    pr_curve_plot(curves, out / "plots" / "pr.png", subtitle)
    table = pd.DataFrame(rows)
    write_table(table, out / "tables" / "detection")
    return table


def run_detect(cfg: Config, data: str | Path, out: str | Path) -> DetectSummary:
    """Train and evaluate the nodule detector on the annotated videos of ``data`` into
    ``out``, and write its bundle."""
    from usv_ray.bundle import read_ingest_record, write_bundle
    from usv_ray.detect.bundle import FILE, FRAME_SETTINGS, KIND
    from usv_ray.detect.data import annotated_videos, split_videos
    from usv_ray.detect.training import DetectorTask, frames_dataset
    from usv_ray.io import claim_folder, write_table
    from usv_ray.runtime import ensure_ray
    from usv_ray.train import stage_settings, train_models

    started = time.perf_counter()
    data, out = Path(data), Path(out)
    ingest = read_ingest_record(data)
    frames = {name: ingest[name] for name in FRAME_SETTINGS}
    splits = split_videos(annotated_videos(data), cfg.detect)
    fingerprint = _fingerprint(cfg, splits, frames)
    if claim_folder(out / "detect.json", fingerprint, {"detect": to_dict(cfg.detect)}):
        log.info("resuming the detector run in %s", out)
    write_table(pa.Table.from_pandas(splits, preserve_index=False), out / "splits.parquet")
    for split in ("train", "val", "test"):
        part = splits[splits["split"] == split]
        log.info(
            "detect %s: %d videos of %d patients", split, len(part), part["patient_key"].nunique()
        )
    size = int(ingest["frame_size"])
    ensure_ray(cfg.ray)
    task = DetectorTask(cfg.detect, size)

    def datasets(_):
        ids = {s: splits.loc[splits["split"] == s, "video_id"] for s in ("train", "val")}
        return {name: frames_dataset(data, video_ids) for name, video_ids in ids.items()}

    log.info(
        "training the %s detector on %d px frames for %d epochs",
        cfg.detect.model,
        size,
        cfg.detect.epochs,
    )
    trained = train_models(
        [task], stage_settings(cfg.detect), out / "runs", "detector", datasets, lambda _: ["train"]
    )["detector"]
    table = _evaluate(cfg, data, out, splits, trained.path, size)
    test = table.set_index("split").loc["test"] if "test" in set(table["split"]) else None
    bundle = write_bundle(
        out / "bundle",
        KIND,
        {FILE: trained.path},
        {
            "ingest": frames,
            "model": cfg.detect.model,
            "input_size": size,
            "config": {"detect": to_dict(cfg.detect)},
            "fingerprint": fingerprint,
            "best_epoch": trained.best_epoch,
            "metrics": {
                "test, percent": None
                if test is None
                else {"ap50": float(test["ap50"]), "ap": float(test["ap"])}
            },
        },
    )
    return DetectSummary(
        out,
        len(splits),
        int(splits["patient_key"].nunique()),
        table,
        bundle,
        time.perf_counter() - started,
    )
