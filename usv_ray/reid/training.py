"""Train a re-ID model (CM or VM) with the training runner (Ray Train, DDP).

Every worker reads the training tracklets' clips from the shared data folder into memory
(the re-ID sets are small: 3,409 tracklets in the paper). Per epoch:

* CM: P x K batches from :func:`usv_ray.reid.sampler.pk_batches` (whole nodules per
  rank), loss = cross-entropy over the training nodules + batch-hard triplet loss;
* VM: for every tracklet one positive and one negative partner of the same patient
  (:func:`usv_ray.reid.pairs.partner_pairs`), dealt to the ranks in equal shares,
  loss = cross-entropy of the head + contrastive loss on the embeddings' distance.

Rank 0 validates every ``val_every`` epochs on all within-patient pairs of the validation
patients (accuracy at the best threshold, and AUC); the training runner
(:mod:`usv_ray.runner`) keeps the best epoch by ``reid.best`` and resumes after a kill.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from usv_ray.config import ReidConfig, ReidModel
from usv_ray.models.reid import build_reid_model
from usv_ray.reid.clips import TrackletSet, augmented_input, load_tracklets
from usv_ray.reid.losses import batch_hard_triplet, contrastive
from usv_ray.runner import RunSettings, TrainedModel, Worker, train_models

EVAL_BATCH = 16  # clips per forward pass when embedding for validation


def identity_labels(tracklets: TrackletSet) -> np.ndarray:
    """(N,) int64 class of each tracklet's nodule: (patient, nodule) pairs numbered in order."""
    keys = np.char.add(np.char.add(tracklets.patient_keys.astype(str), "/"), tracklets.identities)
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def cm_steps(
    labels: np.ndarray, cfg: ReidConfig, rank: int, world: int, epoch: int
) -> list[tuple[np.ndarray, ...]]:
    """This rank's CM batches of one epoch: tuples of one P x K index array."""
    from usv_ray.reid.sampler import pk_batches

    batches = pk_batches(
        labels, cfg.p, cfg.k, rank=rank, world_size=world, seed=cfg.seed, epoch=epoch
    )
    return [(b,) for b in batches]


def vm_steps(
    tracklets: TrackletSet, cfg: ReidConfig, rank: int, world: int, epoch: int
) -> list[tuple[np.ndarray, ...]]:
    """This rank's VM batches of one epoch: (anchor, partner, same) index arrays.

    Every rank draws the same pairs from ``(seed, epoch)`` and takes every world-th of a
    shuffled order, cut to an equal count (DDP steps stay in lockstep). A last batch of one
    pair is dropped: the head's batch norm needs two.
    """
    from usv_ray.reid.pairs import partner_pairs

    rng = np.random.default_rng([cfg.seed, epoch])
    anchor, partner, same = partner_pairs(tracklets.patient_keys, tracklets.identities, rng)
    order = rng.permutation(len(anchor))
    share = len(order) // world
    mine = order[rank::world][:share]
    size = cfg.batch_size
    steps = [
        (anchor[mine[s : s + size]], partner[mine[s : s + size]], same[mine[s : s + size]])
        for s in range(0, share, size)
    ]
    return [step for step in steps if len(step[0]) >= 2]


def cm_loss(
    model: torch.nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    cfg: ReidConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """CM's loss on P x K uint8 clips ``(P*K, T, H, W)`` of nodules ``labels (P*K,)``:
    cross-entropy over the training nodules + batch-hard triplet loss."""
    embeddings, logits = model(augmented_input(clips, generator))  # (P*K, 1, T, H, W) in
    triplet = batch_hard_triplet(embeddings, labels, margin=cfg.triplet_margin)
    return torch.nn.functional.cross_entropy(logits, labels) + triplet


def vm_loss(
    model: torch.nn.Module,
    anchor: torch.Tensor,
    partner: torch.Tensor,
    same: torch.Tensor,
    cfg: ReidConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """VM's loss on M pairs of uint8 clips ``(M, T, H, W)``, ``same (M,)`` 1 for one nodule:
    cross-entropy of the head + contrastive loss on the embeddings' distance."""
    xa = augmented_input(anchor, generator)  # (M, 1, T, H, W)
    xb = augmented_input(partner, generator)
    emb_a, emb_b, logits = model(xa, xb)
    pair_loss = contrastive(emb_a, emb_b, same.float(), margin=cfg.contrastive_margin)
    return torch.nn.functional.cross_entropy(logits, same) + pair_loss


def _validate(model: torch.nn.Module, val: TrackletSet) -> dict[str, float]:
    """Best-threshold accuracy and AUC of all within-patient validation pairs."""
    import warnings

    from usv_ray.evaluate.metrics import MetricWarning, roc_auc
    from usv_ray.reid.evaluate import best_threshold, score_pairs

    pairs = score_pairs(model, val, EVAL_BATCH)
    threshold, acc = best_threshold(pairs.same, pairs.scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # one-class validation: NaN AUC
        auc = roc_auc(pairs.same.astype(np.int64), pairs.scores) if pairs.same.size else math.nan
    return {"val_acc": acc, "val_auc": auc, "val_threshold": threshold}


@dataclass(frozen=True)
class ReidTask:
    """A re-ID model to train (a :class:`usv_ray.runner.Task`): ``kind`` on the tracklets
    of ``train_ids``, validated on all within-patient pairs of ``val_ids``."""

    cfg: ReidConfig
    kind: ReidModel
    data: str  # the ingest folder (every node sees it)
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    n_identities: int  # the training nodules (CM's classes)

    @property
    def key(self) -> str:
        return self.kind

    def build(self) -> torch.nn.Module:
        return build_reid_model(self.kind, self.n_identities)

    def _tracklets(self, ids: Sequence[str]) -> TrackletSet:
        return load_tracklets(Path(self.data), ids, self.cfg)

    def open(self, worker: Worker) -> dict:
        train = self._tracklets(self.train_ids)
        return {
            "train": train,
            "labels": torch.from_numpy(identity_labels(train)),  # (N,) int64
            "clips": torch.from_numpy(train.clips),  # (N, T, H, W) uint8
            "val": self._tracklets(self.val_ids) if worker.rank == 0 else None,
        }

    def batches(self, data: dict, epoch: int, worker: Worker) -> Iterable[tuple]:
        clips, labels = data["clips"], data["labels"]
        rank, world = worker.rank, worker.world
        if self.kind == "CM":
            for (index,) in cm_steps(labels.numpy(), self.cfg, rank, world, epoch):
                yield clips[index], labels[index]
        else:
            for anchor, partner, same in vm_steps(data["train"], self.cfg, rank, world, epoch):
                yield clips[anchor], clips[partner], torch.from_numpy(same.astype(np.int64))

    def loss(
        self, model: torch.nn.Module, batch: tuple, worker: Worker, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        batch = tuple(t.to(worker.device) for t in batch)
        if self.kind == "CM":
            return cm_loss(model, *batch, self.cfg, generator), len(batch[0])
        return vm_loss(model, *batch, self.cfg, generator), 2 * len(batch[0])

    def validate(self, model: torch.nn.Module, data: dict, worker: Worker) -> dict[str, float]:
        return _validate(model, data["val"])

    def meta(self) -> dict:
        c = self.cfg
        clip = {
            "clip_frames": c.clip_frames,
            "clip_height": c.clip_height,
            "clip_width": c.clip_width,
        }
        return {"model": self.kind, "n_identities": self.n_identities, "clip": clip}


def fit_reid(
    cfg: ReidConfig,
    kind: ReidModel,
    data: Path,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    storage: Path,
    name: str,
) -> TrainedModel:
    """Train ``kind`` with the training runner (resuming the run ``name`` under ``storage``):
    its finished-model file holds the best weights by ``cfg.best``."""
    import pyarrow.compute as pc

    from usv_ray.layout import IngestFolder

    table = IngestFolder(data).read_tracklets(["tracklet_id", "patient_key", "nodule_id"])
    table = table.filter(pc.is_in(table["tracklet_id"], value_set=pa.array(list(train_ids))))
    n_identities = len(
        set(zip(*table.select(["patient_key", "nodule_id"]).to_pydict().values(), strict=True))
    )
    task = ReidTask(
        cfg, kind, str(Path(data).resolve()), tuple(train_ids), tuple(val_ids), n_identities
    )
    return train_models([task], RunSettings.of(cfg, cfg, cfg.seed), storage, name)[task.key]
