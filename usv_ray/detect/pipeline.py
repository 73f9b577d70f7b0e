"""``usv-ray detect --data DATA --out DET``: train the nodule detector on the annotated videos.

The videos whose annotations are whole are split by patient (``detect.split``); the
detector trains on the training patients' stored frames and their boxes, keeps its best
epoch by validation AP at IoU 0.5, and is evaluated on the test patients by COCO's own
evaluation (pycocotools). Output layout under ``out``::

    detect.json                 settings and data this folder was made from; its summary
    splits.parquet              video_id, patient_key, split
    runs/detector/              the Ray Train run (checkpoints, models/detector.pt)
    tables/detection.{md,csv}   AP at IoU 0.5 and AP over 0.5:0.95, validation and test
    plots/pr.png                precision-recall at IoU 0.5
    plots/examples.png          test frames with their true boxes and the detections
    bundle/                     the detector bundle ingest runs (usv_ray.bundle.detector)

A rerun resumes the training and redoes the evaluation; a folder made with other settings
or data is refused rather than mixed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.config import Config, to_dict
from usv_ray.detect.report import describe
from usv_ray.layout import DetectFolder, IngestFolder, StageRun, digest_rows, holds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectSummary:
    out: Path
    videos: int  # annotated videos
    patients: int
    table: pd.DataFrame  # AP per split
    bundle: dict  # the detector bundle's record
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        from usv_ray.evaluate.tables import to_markdown

        return (
            f"detect: a {self.bundle['model']} detector on {self.videos} annotated videos of "
            f"{self.patients} patients in {self.seconds:.0f} s (AP in %, COCO's evaluation)\n"
            f"{to_markdown(self.table, float_format='{:.1f}')}\n"
            f"  tables: {self.out / 'tables'}\n"
            f"  plots: {self.out / 'plots'}\n"
            f"  bundle: {self.out / 'bundle'} ({self.bundle['version']}): ingest with "
            f"--set ingest.detector={self.out / 'bundle'} for automatic tracklets"
        )


def _test_batches(data: Path, video_ids: list[str], batch: int = 64):
    """The test frames and their boxes, collated in batches of ``batch``, read directly."""
    import torch

    from usv_ray.detect.data import FRAME_COLUMNS, collate

    shards = IngestFolder(data).frame_shards(video_ids)
    rows = pa.concat_tables(pq.read_table(s, columns=FRAME_COLUMNS) for s in shards)
    for start in range(0, rows.num_rows, batch):
        part = rows.slice(start, batch).to_pydict()
        images, boxes = collate({k: np.array(v, dtype=object) for k, v in part.items()})
        yield images, [torch.as_tensor(b) for b in boxes]


def _evaluate(
    cfg: Config, data: Path, out: DetectFolder, splits: pd.DataFrame, weights: Path, size: int
) -> pd.DataFrame:
    """AP on the validation and test patients' frames; the PR curves and examples."""
    import torch

    from usv_ray.detect.evaluate import detection_ap, examples_plot, pr_curve_plot
    from usv_ray.detect.training import detect_all, example_frames
    from usv_ray.evaluate.tables import write_table
    from usv_ray.models.detector import build_detector
    from usv_ray.runner import load_model

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
                out.plots / "examples.png",
                subtitle,
            )
    pr_curve_plot(curves, out.plots / "pr.png", subtitle)
    table = pd.DataFrame(rows)
    write_table(table, out.tables / "detection")
    return table


@holds("detect")
def run_detect(cfg: Config, data: str | Path, out: str | Path) -> DetectSummary:
    """Train and evaluate the nodule detector on the annotated videos of ``data`` into
    ``out``, and write its bundle.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray import bundle
    from usv_ray.bundle.detector import FILE, FRAME_SETTINGS, KIND
    from usv_ray.bundle.trunk import check_pretrained
    from usv_ray.detect.data import annotated_videos, split_videos
    from usv_ray.detect.training import DetectorTask, frames_dataset
    from usv_ray.io import write_table
    from usv_ray.runner import RunSettings, train_models
    from usv_ray.runtime import ensure_ray

    data, out = Path(data), DetectFolder(out)
    ingest = IngestFolder(data).settings()
    check_pretrained(cfg.detect.pretrained, data, "detect.pretrained")
    frames = {name: ingest[name] for name in FRAME_SETTINGS}
    splits = split_videos(annotated_videos(data), cfg.detect)
    videos = digest_rows(splits[["video_id", "patient_key", "split"]].itertuples(index=False))
    run = StageRun(out.record, {"detect": cfg.detect}, data=videos, inputs=frames, data_folder=data)
    run.claim()
    write_table(pa.Table.from_pandas(splits, preserve_index=False), out.splits)
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
    settings = RunSettings.of(cfg.detect, cfg.detect, cfg.detect.seed)
    trained = train_models([task], settings, out.runs, "detector", datasets, lambda _: ["train"])[
        "detector"
    ]
    table = _evaluate(cfg, data, out, splits, trained.path, size)
    test = table.set_index("split").loc["test"] if "test" in set(table["split"]) else None
    scores = None if test is None else {"ap50": float(test["ap50"]), "ap": float(test["ap"])}
    record = bundle.write(
        out.bundle,
        KIND,
        {FILE: trained.path},
        {
            "ingest": frames,
            "model": cfg.detect.model,
            "input_size": size,
            "config": {"detect": to_dict(cfg.detect)},
            "fingerprints": {"folder": run.fingerprint, "data": videos},
            "best_epoch": trained.best_epoch,
            "metrics": {"test, percent": scores},
        },
    ).record
    patients = int(splits["patient_key"].nunique())
    seconds = run.finish({"videos": len(splits), "patients": patients, "test": scores})
    describe(out.root, data)
    return DetectSummary(out.root, len(splits), patients, table, record, seconds)
