"""The trunk's contrastive pretraining as a task of the one training runner.

A batch is ``pretrain.batch_size`` distinct videos of this rank's frames. From each, two
stored frames at most ``pretrain.max_gap`` positions apart (the same frame when the video
has one): nearby frames of one video show the same tissue under another speckle pattern
and a slightly other probe position, so they make a positive pair that no augmentation of
one frame can (IVPP, arXiv 2403.07715). Each frame is augmented on its own
(:func:`usv_ray.imaging.bmode_views`). The other videos of the batch are the negatives
(:func:`usv_ray.models.contrastive.nt_xent`).

Each rank holds its shard of the frames in memory (the stored frames: 64 px x 16 frames x
150 videos is 10 MB; 224 px x 32 frames x 10,000 videos is 16 GB, over the workers). Every
rank draws the same number of batches per epoch (DDP), from its own videos, in an order
drawn from ``(seed, epoch, rank)``: a resumed epoch draws what the uninterrupted one drew.
An epoch holds as many anchors as there are training frames.

Validation (rank 0) is label-free: the loss and the pair accuracy (the share of views
whose nearest view is their positive) of held-out patients' videos, with pairs and
augmentations drawn from the seed alone, the same every epoch. The best epoch is the
lowest validation loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from usv_ray.config import PretrainConfig
from usv_ray.runner import Worker

FRAME_COLUMNS = ["video_id", "seq_index", "image", "height", "width"]


@dataclass
class Frames:
    """One rank's frames in memory: ``images`` uint8 ``(N, H, W)``, and per video the rows
    of its frames in order (``videos``: a list of row-index arrays)."""

    images: np.ndarray
    videos: list[np.ndarray]


def read_frames(dataset: Any) -> Frames:
    """The frames of a Ray Dataset (or a rank's shard of one) in memory, grouped by video
    and ordered by their position in it."""
    ids, order, images, size = [], [], [], None
    for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
        height, width = int(batch["height"][0]), int(batch["width"][0])
        size = size or (height, width)
        if (height, width) != size:
            raise ValueError(f"frames of two sizes, {size} and {(height, width)}: ingest again")
        ids.extend(batch["video_id"].tolist())
        order.extend(batch["seq_index"].tolist())
        images.append(np.frombuffer(b"".join(batch["image"]), np.uint8).reshape(-1, height, width))
    if not ids:
        return Frames(np.zeros((0, 1, 1), np.uint8), [])
    rows = np.lexsort((np.asarray(order), np.asarray(ids, dtype=object).astype(str)))
    sorted_ids = np.asarray(ids, dtype=object)[rows]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return Frames(np.concatenate(images), np.split(rows, starts[1:]))


def pair_rows(frames: Frames, videos: np.ndarray, max_gap: int, rng: np.random.Generator):
    """Two rows of each video of ``videos`` (indices into ``frames.videos``): a frame and one
    at most ``max_gap`` positions from it, on either side (itself for a one-frame video)."""
    first, second = [], []
    for v in videos:
        rows = frames.videos[v]
        a = int(rng.integers(len(rows)))
        low, high = max(0, a - max_gap), min(len(rows) - 1, a + max_gap)
        others = [i for i in range(low, high + 1) if i != a] or [a]
        first.append(rows[a])
        second.append(rows[others[int(rng.integers(len(others)))]])
    return np.asarray(first), np.asarray(second)


@dataclass(frozen=True)
class PretrainTask:
    """The contrastive trunk (a :class:`usv_ray.runner.Task`): trained on ``train``'s
    ``train_frames`` frames, validated on ``val``'s."""

    cfg: PretrainConfig
    train_frames: int
    validated: bool = True  # False: no held-out patients, no ``val`` dataset
    key: str = "trunk"

    def build(self) -> torch.nn.Module:
        from usv_ray.models.contrastive import ContrastiveTrunk

        return ContrastiveTrunk(self.cfg.projection)

    def open(self, worker: Worker) -> tuple[Frames, Frames | None]:
        train = read_frames(worker.dataset("train"))
        if len(train.videos) < 2:
            raise ValueError(
                f"pretraining worker {worker.rank} holds frames of {len(train.videos)} "
                "videos: a contrastive batch needs two; ingest more videos or use fewer "
                "pretrain.workers"
            )
        val = read_frames(worker.dataset("val")) if self.validated and worker.rank == 0 else None
        return train, val

    def steps(self, world: int) -> int:
        """Batches per epoch on each of ``world`` ranks: as many anchors as training frames,
        so that every stored frame is, on average, an anchor once an epoch."""
        return max(1, -(-self.train_frames // (self.cfg.batch_size * world)))

    def batches(self, data: tuple[Frames, Any], epoch: int, worker: Worker) -> Iterator[Any]:
        train = data[0]
        rng = np.random.default_rng([self.cfg.seed, epoch, worker.rank])
        size = min(self.cfg.batch_size, len(train.videos))
        order = np.concatenate(
            [rng.permutation(len(train.videos)) for _ in range(self._passes(train, worker))]
        )
        for step in range(self.steps(worker.world)):
            videos = order[step * size : (step + 1) * size]
            first, second = pair_rows(train, videos, self.cfg.max_gap, rng)
            yield (
                torch.from_numpy(train.images[first][:, None]),
                torch.from_numpy(train.images[second][:, None]),
            )  # (B, 1, H, W) uint8 each

    def _passes(self, train: Frames, worker: Worker) -> int:
        """How many shuffled passes over this rank's videos fill an epoch's batches."""
        need = self.steps(worker.world) * min(self.cfg.batch_size, len(train.videos))
        return -(-need // len(train.videos))

    def loss(
        self, model: torch.nn.Module, batch: Any, worker: Worker, generator: torch.Generator
    ) -> tuple[Tensor, int]:
        from usv_ray.imaging import bmode_views
        from usv_ray.models.contrastive import nt_xent

        first, second = batch
        views = bmode_views(torch.cat([first, second]), generator)  # (2B, 1, H, W)
        z = model(worker.model_input(views.to(worker.device)))
        loss, _ = nt_xent(*z.chunk(2), self.cfg.temperature)
        return loss, len(first)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, data: tuple[Any, Frames | None], worker: Worker):
        from usv_ray.imaging import bmode_views
        from usv_ray.models.contrastive import nt_xent

        val = data[1]
        if val is None or len(val.videos) < 2:
            return {}
        model.eval()
        rng = np.random.default_rng([self.cfg.seed, 2**31 - 1])  # the same pairs every epoch
        generator = torch.Generator().manual_seed(self.cfg.seed)
        losses, accuracies, weights = [], [], []
        for videos in _chunks(np.arange(len(val.videos)), self.cfg.batch_size):
            if len(videos) < 2:
                continue
            first, second = pair_rows(val, videos, self.cfg.max_gap, rng)
            pair = torch.from_numpy(np.concatenate([val.images[first], val.images[second]]))
            views = bmode_views(pair[:, None], generator)
            z = model(worker.model_input(views.to(worker.device)))
            loss, accuracy = nt_xent(*z.chunk(2), self.cfg.temperature)
            losses.append(float(loss))
            accuracies.append(float(accuracy))
            weights.append(len(videos))
        model.train()
        return {
            "val_loss": float(np.average(losses, weights=weights)),
            "val_pair_acc": float(np.average(accuracies, weights=weights)),
        }

    def meta(self) -> dict:
        from usv_ray.models.contrastive import contrastive_meta

        return contrastive_meta(self.cfg.projection)


def _chunks(items: np.ndarray, size: int) -> Iterable[np.ndarray]:
    return (items[i : i + size] for i in range(0, len(items), size))
