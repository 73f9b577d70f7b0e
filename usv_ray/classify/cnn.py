"""Train the frame CNN of every fold with the training runner (Ray Train, DDP), in one run.

Each fold's CNN reads its shard of that fold's training frames, is validated on rank 0 on
the fold's validation patients' frames, and keeps its best epoch by ``classify.cnn.best``
(lowest frame-level validation loss by default). One run for all folds: each Ray Train run
costs ~20 s of process start-up on 2 cores. A rerun with the same run name resumes from
the last checkpoint instead of starting over (see :mod:`usv_ray.runner`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from usv_ray.config import ClassifyConfig
from usv_ray.imaging import augment, normalise
from usv_ray.layout import IngestFolder
from usv_ray.runner import (
    RunSettings,
    TrainedModel,
    Worker,
    classifier_scores,
    frames_dataset,
    numpy_collate,
    shuffled_batches,
    train_models,
)

if TYPE_CHECKING:
    import ray.data

FRAME_COLUMNS = ["image", "label", "height", "width"]


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
        """The file name of its finished weights: ``fold=3`` (or ``final``)."""
        from usv_ray.classify.folds import fold_name

        return fold_name(self.fold)


@dataclass(frozen=True)
class CnnTask:
    """The frame CNN of one fold (a :class:`usv_ray.runner.Task`): trained on the frames of
    ``train_<fold>``, validated on ``val_<fold>`` when the fold has validation videos."""

    cfg: ClassifyConfig
    fold: CnnFold

    @property
    def key(self) -> str:
        return self.fold.key

    def build(self) -> torch.nn.Module:
        from usv_ray.bundle.trunk import starting_trunk
        from usv_ray.models.frame_cnn import FrameCNN

        model = FrameCNN()
        trunk = starting_trunk(self.cfg.pretrained)  # classify.pretrained: a trunk, imagenet
        if trunk is not None:
            model.backbone.load_state_dict(trunk, strict=True)
        return model

    def open(self, worker: Worker) -> tuple[Any, Any]:
        k = self.fold.key
        val = bool(self.fold.val_ids) and worker.rank == 0
        return worker.dataset(f"train_{k}"), worker.dataset(f"val_{k}") if val else None

    def batches(self, data: tuple[Any, Any], epoch: int, worker: Worker) -> Iterable[Any]:
        seed = self.cfg.seed + epoch
        return shuffled_batches(data[0], self.cfg.cnn.batch_size, collate_frames, seed)
        # (B, 1, H, W) uint8, (B,)

    def loss(
        self, model: torch.nn.Module, batch: Any, worker: Worker, generator: torch.Generator
    ) -> tuple[Tensor, int]:
        images, labels = batch
        logits = model(worker.model_input(augmented(images.to(worker.device), generator)))
        return torch.nn.functional.cross_entropy(logits, labels.to(worker.device)), len(labels)

    def validate(self, model: torch.nn.Module, data: tuple[Any, Any], worker: Worker) -> dict:
        if data[1] is None:
            return {}
        model.eval()
        batches = data[1].iter_torch_batches(
            batch_size=64, collate_fn=numpy_collate(collate_frames)
        )
        return classifier_scores(
            (model(worker.model_input(normalise(images.to(worker.device)))).softmax(1), labels)
            for images, labels in batches
        )

    def meta(self) -> dict:
        from usv_ray.models.frame_cnn import frame_cnn_meta

        return {**frame_cnn_meta(), "fold": self.fold.fold, "pretrained": self.cfg.pretrained}


def fit_cnns(
    cfg: ClassifyConfig, data: Path, folds: Sequence[CnnFold], storage: Path, name: str
) -> dict[int, TrainedModel]:
    """Train the frame CNN of every fold of ``folds``, one after another, in one run.

    Each reads its own training and validation frames (``train_k``, ``val_k``: read once,
    kept in the object store). ``storage / name`` holds the run: finished models in
    ``models/fold=k.pt``, and checkpoints that list the finished folds and hold the current
    fold's state. Calling again with the same name resumes at the (fold, epoch) where the
    last call stopped; when every fold is finished it starts no Ray Train run at all.
    """
    from usv_ray.bundle.trunk import check_pretrained

    def frames(video_ids: Sequence[str]) -> ray.data.Dataset:
        return frames_dataset(IngestFolder(data).frame_shards(video_ids), FRAME_COLUMNS)

    def datasets(todo: Sequence[CnnTask]) -> dict[str, ray.data.Dataset]:
        # a missing cache or a trunk of other frames fails here, not inside a worker
        check_pretrained(cfg.pretrained, data, "classify.pretrained")
        sets = {}
        for task in todo:
            sets[f"train_{task.key}"] = frames(task.fold.train_ids)
            if task.fold.val_ids:
                sets[f"val_{task.key}"] = frames(task.fold.val_ids)
        return sets

    tasks = [CnnTask(cfg, fold) for fold in folds]
    settings = RunSettings.of(cfg.cnn, cfg, cfg.seed)
    trained = train_models(tasks, settings, storage, name, datasets, lambda t: [f"train_{t.key}"])
    return {fold.fold: trained[fold.key] for fold in folds}
