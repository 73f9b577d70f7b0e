"""Train the frame CNN of one fold on Ray Train (DDP), resumable from its checkpoints.

The worker function follows Ray's own examples: it reads its shard of the training frames,
prepares the model for DDP, validates on rank 0, and reports every epoch with a checkpoint
(rank 0 only) holding the latest state, for resuming, and the best weights so far. A rerun
with the same run name resumes from the last checkpoint instead of starting over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from usv_ray.config import ClassifyConfig
from usv_ray.imaging import augment, normalise
from usv_ray.train import fit, report_epoch, resume_state, train_epoch, unwrap

FRAME_COLUMNS = ["image", "label", "height", "width"]
BEST_FILE = "best_model.pt"  # the best weights alone, written once the run is done


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


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from usv_ray.classify.models import FrameCNN, cached_imagenet_weights, load_imagenet

    cfg: ClassifyConfig = config["cfg"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = FrameCNN()
    if cfg.pretrained == "imagenet":
        load_imagenet(model, cached_imagenet_weights())
    optimizer_state = None
    start_epoch, best_val, best_model = 0, math.inf, None
    state = resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer_state = state["optimizer"]
        start_epoch, best_val, best_model = state["epoch"] + 1, state["best_val"], state["best"]
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.cnn_lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = torch.nn.CrossEntropyLoss()
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")  # not split: rank 0 sees all of it
    images_per_s: list[float] = []  # training throughput of each epoch this run trains

    for epoch in range(start_epoch, cfg.cnn_epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + rank)
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.cnn_batch_size,
            collate_fn=collate_frames,
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
        images_per_s.append(_run_images_per_s(count, seconds, device))
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": best_val,
            "images_per_s": images_per_s[-1],
        }
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.cnn_epochs
        if validate and rank == 0:
            val_loss, val_acc = _validate(unwrap(model), val_data, device, loss_fn)
            metrics.update(val_loss=val_loss, val_acc=val_acc)
            if val_loss < best_val:
                best_val = val_loss
                best_model = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
        metrics["best_val_loss"] = best_val
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_val": best_val,
            "best": best_model,
        }
        report_epoch(metrics, state, epoch)
    return {"start_epoch": start_epoch, "best_val_loss": best_val, "images_per_s": images_per_s}


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
    for images, labels in data.iter_torch_batches(batch_size=64, collate_fn=collate_frames):
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
    start_epoch: int  # 0, or the epoch a rerun resumed from
    best_val_loss: float
    # training images/s of the run (all workers together): the median over the epochs this
    # call trained after its first (start-up excluded), or that one epoch's; nan if none
    images_per_s: float = math.nan


def fit_cnn(
    cfg: ClassifyConfig,
    data: Path,
    train_ids: Iterable[str],
    val_ids: Iterable[str],
    storage: Path,
    name: str,
) -> CnnRun:
    """Train the frame CNN on ``train_ids``' frames, validating on ``val_ids``'.

    ``storage / name`` holds the Ray Train run; calling again with the same name resumes
    from its last checkpoint rather than starting over.
    """
    import pyarrow.fs
    import ray.data

    from usv_ray.classify.models import imagenet_weights_path

    if cfg.pretrained == "imagenet":
        imagenet_weights_path()  # a missing cache fails here, not inside a worker
    # an explicit filesystem: path resolution would otherwise import fsspec's HTTP support
    local = pyarrow.fs.LocalFileSystem()
    train = ray.data.read_parquet(frame_shards(data, train_ids), filesystem=local)
    val = ray.data.read_parquet(frame_shards(data, val_ids), filesystem=local)
    # read once, keep in the object store: re-reading the shards every epoch cost ~20 s
    # per epoch on a 2-core machine, whatever their size
    train = train.select_columns(FRAME_COLUMNS).materialize()
    val = val.select_columns(FRAME_COLUMNS).materialize()
    datasets = {"train": train, "val": val}
    state, summary = fit(_train_loop, {"cfg": cfg}, cfg, datasets, storage, name)
    best = Path(storage) / name / BEST_FILE
    torch.save(state["best"] if state["best"] is not None else state["model"], best)
    summary = summary or {}
    rates = summary.get("images_per_s", [])
    steady = rates[1:] or rates  # the first epoch pays for warm-up (allocations, data start)
    return CnnRun(
        best,
        summary.get("start_epoch", 0),
        summary.get("best_val_loss", math.nan),
        float(np.median(steady)) if steady else math.nan,
    )
