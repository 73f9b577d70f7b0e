"""``usv-ray pretrain --data DATA --out PRE``: teach the frame trunk from every stored frame
of every ingested video, labelled or not, without reading a label or a box.

Contrastive pretraining (SimCLR's NT-Xent) of the gray ResNet-18 that the frame CNN and
the detector share, with nearby frames of one video as positive pairs
(:mod:`usv_ray.pretrain.task`), through the one training runner (Ray Train DDP, resume
after a kill, bf16 and channels-last on a GPU). A patient-level share of the videos
(``pretrain.val_fraction``) is held out; their contrastive loss picks the best epoch.
Output layout under ``out``::

    pretrain.json                 settings and data this folder was made from; its summary
    splits.parquet                video_id, patient_key, split (train / val)
    runs/trunk/                   the Ray Train run (checkpoints, models/trunk.pt)
    tables/pretraining.{md,csv}   the training curve, per epoch
    plots/losses.png              the same, drawn
    bundle/                       the trunk bundle (usv_ray.bundle.trunk)

A rerun with nothing new does nothing. New frames (a night's videos) make another data
set: the folder refuses it, and the trunk is refreshed into a new ``--out`` (the bundles
trained on the old trunk keep their own weights and go on working).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.config import Config, PretrainConfig, to_dict
from usv_ray.errors import UsvRayError
from usv_ray.layout import IngestFolder, LayoutError, PretrainFolder, StageRun, digest_rows, holds
from usv_ray.pretrain.report import describe

log = logging.getLogger(__name__)
METHOD = "contrastive: SimCLR NT-Xent, positives nearby frames of one video"


class PretrainError(UsvRayError, ValueError):
    """The data cannot pretrain a trunk as asked (no videos, one patient, ...)."""


@dataclass(frozen=True)
class PretrainSummary:
    out: Path
    videos: int  # videos it learnt from (training and validation)
    patients: int
    frames: int  # stored frames of the training videos
    bundle: dict  # the trunk bundle's record
    trained: bool  # False: nothing new, the folder was left as it was
    seconds: float

    def text(self) -> str:
        """What the command prints: the result in short and where it is."""
        best = self.bundle["metrics"]["validation"]
        scores = (
            f"validation loss {best['val_loss']:.3f}, "
            f"pair accuracy {100 * best['val_pair_acc']:.1f}%"
            if best
            else "no validation patients: the last epoch kept"
        )
        what = "trained" if self.trained else "nothing new, the trunk is unchanged"
        return (
            f"pretrain: {what}; {self.videos} videos of {self.patients} patients "
            f"({self.frames} training frames) in {self.seconds:.0f} s; best epoch "
            f"{self.bundle['best_epoch'] + 1}: {scores}\n"
            f"  tables: {self.out / 'tables'}\n"
            f"  bundle: {self.out / 'bundle'} ({self.bundle['version']}): start from it with "
            f"--set classify.pretrained={self.out / 'bundle'} (or detect.pretrained)"
        )


def pretrain_videos(data: IngestFolder, p: PretrainConfig) -> pd.DataFrame:
    """video_id, patient_key, split of the videos that teach the trunk: every video ingested
    with frames (or, with ``pretrain.videos: unlabelled``, those without a label), a
    patient-level ``pretrain.val_fraction`` of the patients held out (``val``).

    Raises:
        PretrainError: no such video, or a validation share that is not in [0, 1).
    """
    if not 0 <= p.val_fraction < 1:
        raise PretrainError(f"pretrain.val_fraction must be in [0, 1), got {p.val_fraction}")
    try:
        videos = data.read_videos(["video_id", "patient_key", "label", "status"])
    except LayoutError as exc:
        raise PretrainError(str(exc)) from exc
    videos = videos[videos["status"] == "ok"]
    if p.videos == "unlabelled":
        videos = videos[videos["label"] < 0]
    if videos.empty:
        raise PretrainError(
            f"no {'unlabelled ' if p.videos == 'unlabelled' else ''}video with frames in "
            f"{data.root}: ingest videos first"
        )
    patients = np.array(sorted(videos["patient_key"].unique()), dtype=object)
    held = math.ceil(p.val_fraction * len(patients)) if len(patients) > 1 else 0
    rng = np.random.default_rng(p.seed)
    val = set(rng.permutation(patients)[: min(held, len(patients) - 1)].tolist())
    split = np.where(videos["patient_key"].isin(val), "val", "train")
    return (
        videos.assign(split=split)[["video_id", "patient_key", "split"]]
        .sort_values("video_id")
        .reset_index(drop=True)
    )


def _curve(out: PretrainFolder, best_epoch: int) -> pd.DataFrame:
    """The run's training curve: one row per epoch of its last attempt at each epoch."""
    from usv_ray.runner import training_log

    rows = {row["epoch"]: row for row in training_log(out.runs, "trunk")}
    columns = ["epoch", "train_loss", "val_loss", "val_pair_acc"]
    table = pd.DataFrame([rows[e] for e in sorted(rows)]).reindex(columns=columns)
    table["epoch"] = table["epoch"].astype(int) + 1  # counted from 1, as the log prints
    return table.assign(best=table["epoch"] == best_epoch + 1)


@holds("pretrain")
def run_pretrain(cfg: Config, data: str | Path, out: str | Path) -> PretrainSummary:
    """Pretrain the frame trunk on every ingested video of ``data`` into ``out``, and write
    its trunk bundle; a rerun with nothing new does nothing.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    import time

    from usv_ray import bundle
    from usv_ray.bundle.trunk import FILE, FRAME_SETTINGS, KIND, TRUNK_META
    from usv_ray.evaluate.plots import loss_curve_plot
    from usv_ray.evaluate.tables import write_table as write_results
    from usv_ray.io import write_table
    from usv_ray.models.contrastive import trunk_weights
    from usv_ray.pretrain.task import FRAME_COLUMNS, PretrainTask
    from usv_ray.runner import RunSettings, frames_dataset, load_model, save_model, train_models
    from usv_ray.runtime import ensure_ray

    started = time.perf_counter()
    p = cfg.pretrain
    data, out = IngestFolder(data), PretrainFolder(out)
    try:
        settings = data.settings()
    except LayoutError as exc:
        raise PretrainError(str(exc)) from exc
    frames = {name: settings[name] for name in FRAME_SETTINGS}
    videos = pretrain_videos(data, p)
    digest = digest_rows(videos.itertuples(index=False))
    run = StageRun(out.record, {"pretrain": p}, data=digest, inputs=frames, data_folder=data.root)
    run.claim()
    train = videos.loc[videos["split"] == "train", "video_id"].tolist()
    val = videos.loc[videos["split"] == "val", "video_id"].tolist()
    patients = int(videos["patient_key"].nunique())
    try:
        existing = bundle.read(out.bundle, KIND)
    except bundle.BundleError:
        existing = None
    if existing is not None and existing.record["fingerprints"] == {
        "folder": run.fingerprint,
        "data": digest,
    }:
        log.info("pretrain: nothing new in %s, the trunk %s stands", data.root, existing.version)
        seconds = time.perf_counter() - started
        frames_read = existing.record["trained_on"]["frames"]
        return PretrainSummary(
            out.root, len(videos), patients, frames_read, existing.record, False, seconds
        )
    if len(train) < 2:
        raise PretrainError(
            f"{len(train)} training video: contrastive pretraining needs two; ingest more"
        )
    train_shards = data.frame_shards(train)  # checked against the journal: hashed once
    n_frames = sum(pq.read_metadata(shard).num_rows for shard in train_shards)
    write_table(pa.Table.from_pandas(videos, preserve_index=False), out.splits)
    log.info(
        "pretrain: %d videos of %d patients (%d held out), %d frames, %d epochs",
        len(videos),
        patients,
        len(val),
        n_frames,
        p.epochs,
    )
    ensure_ray(cfg.ray)
    task = PretrainTask(p, n_frames, validated=bool(val))

    def datasets(_):
        sets = {"train": frames_dataset(train_shards, FRAME_COLUMNS)}
        if val:
            sets["val"] = frames_dataset(data.frame_shards(val), FRAME_COLUMNS)
        return sets

    trained = train_models(
        [task], RunSettings.of(p, p, p.seed), out.runs, "trunk", datasets, lambda _: ["train"]
    )["trunk"]
    weights, _ = load_model(trained.path)
    trunk = save_model(out.bundle, FILE.removesuffix(".pt"), trunk_weights(weights), TRUNK_META)
    curve = _curve(out, trained.best_epoch)
    write_results(curve, out.tables / "pretraining", float_format="{:.3f}")
    loss_curve_plot(
        curve["epoch"],
        {"training": curve["train_loss"], "validation (held-out patients)": curve["val_loss"]},
        trained.best_epoch + 1,
        out.plots / "losses.png",
        "Contrastive pretraining of the frame trunk",
        f"{len(videos)} videos of {patients} patients from {data.root}; {p.epochs} epochs",
    )
    best = curve.loc[curve["best"], ["val_loss", "val_pair_acc"]]
    validation = {} if best.empty or best.isna().all(axis=None) else best.iloc[0].to_dict()
    record = bundle.write(
        out.bundle,
        KIND,
        {FILE: trunk},
        {
            "ingest": frames,
            "method": {"name": METHOD, "settings": to_dict(p)},
            "config": {"pretrain": to_dict(p)},
            "fingerprints": {"folder": run.fingerprint, "data": digest},
            "trained_on": {"videos": len(videos), "patients": patients, "frames": n_frames},
            "best_epoch": trained.best_epoch,
            "metrics": {"validation": validation},
        },
    ).record
    seconds = run.finish({"videos": len(videos), "patients": patients, "bundle": record["version"]})
    describe(out.root, data.root)
    return PretrainSummary(out.root, len(videos), patients, n_frames, record, True, seconds)
