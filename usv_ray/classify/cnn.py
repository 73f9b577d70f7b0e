"""Train the frame CNN of every fold on Ray Train (DDP), in one run, resumable from its checkpoints.

The worker function follows Ray's own examples: for each fold it reads its shard of that
fold's training frames, prepares the model for DDP, validates on rank 0, and reports every
epoch with a checkpoint (rank 0 only) holding the fold's latest state, for resuming, and
its best weights so far. One run for all folds: each Ray Train run costs ~20 s of process
start-up on 2 cores. A rerun with the same run name resumes from the last checkpoint
instead of starting over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from usv_ray.config import ClassifyConfig
from usv_ray.imaging import augment, normalise
from usv_ray.train import (
    EpochReporter,
    cpu_weights,
    fit,
    in_order,
    last_state,
    model_path,
    numpy_collate,
    resume_state,
    save_model,
    seed_epoch,
    train_epoch,
    unwrap,
)

FRAME_COLUMNS = ["image", "label", "height", "width"]


def frame_shards(data: Path, video_ids: Iterable[str]) -> list[str]:
    """Paths of the ``frames`` shards of ``video_ids`` under an ingest output folder."""
    return [str(Path(data) / "frames" / f"{video_id}.parquet") for video_id in sorted(video_ids)]


def collate_frames(batch: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """Ray Data batch -> (images uint8 (B, 1, H, W), labels int64 (B,))."""
    images = batch["image"]  # (B,) bytes, each H * W
    height, width = int(batch["height"][0]), int(batch["width"][0])
    pixels = np.frombuffer(b"".join(images), np.uint8).reshape(len(images), 1, height, width)
    return torch.from_numpy(pixels.copy()), torch.from_numpy(batch["label"].astype(np.int64))


def augmented(images: Tensor, generator: torch.Generator) -> Tensor:
    """A uint8 training batch (B, 1, H, W) as the model sees it: normalised, augmented."""
    return augment(normalise(images), generator)


@dataclass(frozen=True)
class CnnFold:
    """One CNN to train: fold ``fold``'s, on ``train_ids``' frames, validated on ``val_ids``'."""

    fold: int
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]

    @property
    def key(self) -> str:
        """The file name of its finished weights: ``fold=3``."""
        return f"fold={self.fold}"


def _fresh_state() -> dict:
    return {
        "done": {},  # fold -> its CnnRun figures (the weights: model_path, not here)
        "current": None,  # the unfinished fold: fold, model, optimizer, epoch, best, ...
        "step": -1,  # reports so far - 1, across folds, epochs and restarts
    }


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker: trains each fold not finished yet, one after another."""
    import ray.train
    import ray.train.torch

    from usv_ray.classify.models import FrameCNN, cached_imagenet_weights, load_imagenet

    cfg: ClassifyConfig = config["cfg"]
    models: Path = config["models"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    state = resume_state() or _fresh_state()
    report = EpochReporter(cfg.checkpoint_every_s)
    loss_fn = torch.nn.CrossEntropyLoss()
    for fold in config["folds"]:
        if fold.fold in state["done"] and model_path(models, fold.key).exists():
            continue  # finished before a restart
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = FrameCNN()
        if cfg.pretrained == "imagenet":
            load_imagenet(model, cached_imagenet_weights())
        current = state["current"]
        if current is not None and current["fold"] == fold.fold:  # resume it
            model.load_state_dict(current["model"])
            start_epoch = current["epoch"] + 1
        else:
            current = {"fold": fold.fold, "best_val": math.inf, "best": None, "rates": []}
            start_epoch = 0
        model = ray.train.torch.prepare_model(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.cnn_lr)
        if "optimizer" in current:
            optimizer.load_state_dict(current["optimizer"])
        train_shard = ray.train.get_dataset_shard(f"train_{fold.fold}")
        val_data = ray.train.get_dataset_shard(f"val_{fold.fold}")  # not split: rank 0 sees all
        for epoch in range(start_epoch, cfg.cnn_epochs):
            generator = seed_epoch(cfg.seed, epoch, rank)
            batches = train_shard.iter_torch_batches(
                batch_size=cfg.cnn_batch_size,
                collate_fn=numpy_collate(collate_frames),
                local_shuffle_buffer_size=4 * cfg.cnn_batch_size,
                local_shuffle_seed=cfg.seed + epoch,
            )  # (B, 1, H, W) uint8, (B,)
            train_loss, count, seconds = train_epoch(
                model,
                batches,
                optimizer,
                loss_fn,
                augmented,
                generator,
                device,
            )  # the training batches alone: not validation
            current["rates"].append(_run_images_per_s(count, seconds, device))
            metrics = {
                "fold": fold.fold,
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": current["best_val"],
                "images_per_s": current["rates"][-1],
            }
            validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.cnn_epochs
            if validate and rank == 0:
                val_loss, val_acc = _validate(unwrap(model), val_data, device, loss_fn)
                metrics.update(val_loss=val_loss, val_acc=val_acc)
                if val_loss < current["best_val"]:
                    current["best_val"] = val_loss
                    current["best"] = cpu_weights(unwrap(model).state_dict())
            metrics["best_val_loss"] = current["best_val"]
            state["step"] += 1
            finished = epoch + 1 == cfg.cnn_epochs
            if finished:
                if rank == 0:  # before the report, so a checkpoint never lists a missing file
                    best = current["best"] or cpu_weights(unwrap(model).state_dict())
                    save_model(models, fold.key, best)
                steady = current["rates"][1:] or current["rates"]  # the first pays warm-up
                state["done"][fold.fold] = {
                    "start_epoch": start_epoch,
                    "best_val_loss": current["best_val"],
                    "images_per_s": float(np.median(steady)),
                }
                state["current"] = None
            else:
                current.update(
                    model=cpu_weights(unwrap(model).state_dict()),
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                )
                state["current"] = current
            report(metrics, state, state["step"], finished=finished)
        del model, optimizer
    return state["done"]


def _run_images_per_s(images: int, seconds: float, device: torch.device) -> float:
    """Training images/s of the whole run in one epoch: every rank's images over the slowest
    rank's time (one rank's own figure when there is one worker). Every rank must call it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counted = torch.tensor([float(images), seconds], dtype=torch.float64, device=device)
        slowest = counted.clone()
        dist.all_reduce(counted)  # [sum of images, sum of seconds]
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # [_, slowest rank's seconds]
        images, seconds = int(counted[0].item()), float(slowest[1].item())
    return images / seconds if seconds > 0 else math.nan


@torch.no_grad()
def _validate(model, data, device, loss_fn) -> tuple[float, float]:
    """Frame-level loss and accuracy over the whole validation set."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    batches = data.iter_torch_batches(batch_size=64, collate_fn=numpy_collate(collate_frames))
    for images, labels in batches:
        logits = model(normalise(images.to(device)))  # (B, 2)
        labels = labels.to(device)
        total += loss_fn(logits, labels).item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    if count == 0:
        return math.inf, math.nan
    return total / count, correct / count


@dataclass(frozen=True)
class CnnRun:
    best: Path  # the best weights (a FrameCNN state dict)
    start_epoch: int  # 0, or the epoch a restarted or rerun run resumed this fold from
    best_val_loss: float
    # training images/s of the fold (all workers together): the median over its epochs after
    # the first (which pays for warm-up), or that one epoch's
    images_per_s: float = math.nan


def fit_cnns(
    cfg: ClassifyConfig, data: Path, folds: Sequence[CnnFold], storage: Path, name: str
) -> dict[int, CnnRun]:
    """Train the frame CNN of every fold of ``folds``, one after another, in one Ray Train run.

    Each reads its own training and validation frames (``train_k``, ``val_k``: read once,
    kept in the object store). ``storage / name`` holds the run: finished weights in
    ``models/fold=k.pt`` (rank 0, before the report), and a checkpoint every epoch that
    lists the finished folds and holds the current fold's state, so it stays the size of
    one model. Calling again with the same name resumes at the (fold, epoch) where the last
    call stopped; when every fold is finished it starts no Ray Train run at all.
    """
    import pyarrow.fs
    import ray.data

    from usv_ray.classify.models import imagenet_weights_path

    models = (Path(storage) / name / "models").resolve()
    state = last_state(storage, name)
    done = {} if state is None else state["done"]
    todo = [f for f in folds if f.fold not in done or not model_path(models, f.key).exists()]
    if todo:
        if cfg.pretrained == "imagenet":
            imagenet_weights_path()  # a missing cache fails here, not inside a worker
        # an explicit filesystem: path resolution would otherwise import fsspec's HTTP support
        local = pyarrow.fs.LocalFileSystem()

        def frames(video_ids) -> ray.data.Dataset:
            # read once, keep in the object store: re-reading the shards every epoch cost
            # ~20 s per epoch on a 2-core machine, whatever their size
            shards = frame_shards(data, video_ids)
            return in_order(ray.data.read_parquet(shards, filesystem=local)).select_columns(
                FRAME_COLUMNS
            )

        datasets = {}
        for fold in todo:
            datasets[f"train_{fold.fold}"] = frames(fold.train_ids).materialize()
            datasets[f"val_{fold.fold}"] = frames(fold.val_ids).materialize()
        loop_config = {"cfg": cfg, "folds": todo, "models": models}
        splits = [f"train_{fold.fold}" for fold in todo]
        state, _ = fit(_train_loop, loop_config, cfg, datasets, storage, name, split=splits)
        done = state["done"]
    return {f.fold: CnnRun(model_path(models, f.key), **done[f.fold]) for f in folds}
