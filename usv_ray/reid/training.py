"""Train a re-ID model (CM or VM) on Ray Train (DDP), resumable from its checkpoints.

Every worker reads the training tracklets' clips from the shared data folder into memory
(the re-ID sets are small: 3,409 tracklets in the paper). Per epoch:

* CM: P x K batches from :func:`usv_ray.reid.sampler.pk_batches` (whole nodules per
  rank), loss = cross-entropy over the training nodules + batch-hard triplet loss;
* VM: for every tracklet one positive and one negative partner of the same patient
  (:func:`usv_ray.reid.pairs.partner_pairs`), dealt to the ranks in equal shares,
  loss = cross-entropy of the head + contrastive loss on the embeddings' distance.

Rank 0 validates every epoch on all within-patient pairs of the validation patients
(accuracy at the best threshold) and keeps the best weights in the checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from usv_ray.config import ReidConfig, ReidModel
from usv_ray.reid.clips import TrackletSet, augmented_input, load_tracklets
from usv_ray.reid.losses import batch_hard_triplet, contrastive
from usv_ray.reid.models import ClassificationModel, VerificationModel
from usv_ray.train import EpochReporter, cpu_weights, fit, resume_state, seed_epoch, unwrap

EVAL_BATCH = 16  # clips per forward pass when embedding for validation


def identity_labels(tracklets: TrackletSet) -> np.ndarray:
    """(N,) int64 class of each tracklet's nodule: (patient, nodule) pairs numbered in order."""
    keys = np.char.add(np.char.add(tracklets.patient_keys.astype(str), "/"), tracklets.identities)
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def build_model(kind: ReidModel, n_identities: int) -> torch.nn.Module:
    """A freshly initialised CM (over ``n_identities`` nodules) or VM."""
    if kind == "CM":
        return ClassificationModel(n_identities)
    if kind == "VM":
        return VerificationModel()
    raise ValueError(f"unknown re-ID model {kind!r} (known: CM, VM)")


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
    size = cfg.pair_batch_size
    steps = [
        (anchor[mine[s : s + size]], partner[mine[s : s + size]], same[mine[s : s + size]])
        for s in range(0, share, size)
    ]
    return [step for step in steps if len(step[0]) >= 2]


def _loss(
    model: torch.nn.Module,
    kind: ReidModel,
    clips: torch.Tensor,
    labels: np.ndarray,
    step: tuple[np.ndarray, ...],
    cfg: ReidConfig,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """One step's loss and clip count (CM: CE + batch-hard triplet; VM: CE + contrastive)."""
    if kind == "CM":
        (index,) = step
        x = augmented_input(clips[index].to(device), generator)  # (P*K, 1, T, H, W)
        y = torch.from_numpy(labels[index]).to(device)
        embeddings, logits = model(x)
        triplet = batch_hard_triplet(embeddings, y, margin=cfg.triplet_margin)
        return torch.nn.functional.cross_entropy(logits, y) + triplet, len(index)
    anchor, partner, same = step
    xa = augmented_input(clips[anchor].to(device), generator)  # (M, 1, T, H, W)
    xb = augmented_input(clips[partner].to(device), generator)
    target = torch.from_numpy(same.astype(np.int64)).to(device)
    emb_a, emb_b, logits = model(xa, xb)
    pair_loss = contrastive(emb_a, emb_b, target.float(), margin=cfg.contrastive_margin)
    return torch.nn.functional.cross_entropy(logits, target) + pair_loss, 2 * len(anchor)


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


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg: ReidConfig = config["cfg"]
    kind: ReidModel = config["model"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    train = load_tracklets(Path(config["data"]), config["train_ids"], cfg)
    val = load_tracklets(Path(config["data"]), config["val_ids"], cfg) if rank == 0 else None
    labels = identity_labels(train)
    clips = torch.from_numpy(train.clips)  # (N, T, H, W) uint8
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(kind, int(labels.max()) + 1)
    start_epoch, best_acc, best_model, optimizer_state = 0, -math.inf, None, None
    if (state := resume_state()) is not None:
        model.load_state_dict(state["model"])
        optimizer_state = state["optimizer"]
        start_epoch, best_acc, best_model = state["epoch"] + 1, state["best_acc"], state["best"]
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    clips_per_s: list[float] = []
    report = EpochReporter(cfg.checkpoint_every_s)

    for epoch in range(start_epoch, cfg.epochs):
        generator = seed_epoch(cfg.seed, epoch, rank)
        if kind == "CM":
            steps = cm_steps(labels, cfg, rank, world, epoch)
        else:
            steps = vm_steps(train, cfg, rank, world, epoch)
        model.train()
        total, seen, started = 0.0, 0, time.perf_counter()
        for step in steps:
            loss, n_clips = _loss(model, kind, clips, labels, step, cfg, generator, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * n_clips
            seen += n_clips
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        clips_per_s.append(seen / seconds if seconds > 0 else math.nan)
        metrics = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "clips_per_s": clips_per_s[-1],
        }
        if rank == 0:
            metrics.update(_validate(unwrap(model), val))
            if metrics["val_acc"] > best_acc or best_model is None:
                best_acc = metrics["val_acc"]
                best_model = cpu_weights(unwrap(model).state_dict())
        metrics["best_val_acc"] = best_acc
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_acc": best_acc,
            "best": best_model,
        }
        report(metrics, state, epoch, finished=epoch + 1 == cfg.epochs)
    return {"start_epoch": start_epoch, "best_val_acc": best_acc, "clips_per_s": clips_per_s}


def fit_reid(
    cfg: ReidConfig,
    kind: ReidModel,
    data: Path,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    storage: Path,
    name: str,
) -> tuple[dict, dict]:
    """Train ``kind`` on Ray Train (resuming the run ``name`` under ``storage``).

    Returns (the best weights by validation pairwise accuracy, the loop's summary:
    start_epoch, best_val_acc, clips_per_s per epoch trained in this call).
    """
    config = {
        "cfg": cfg,
        "model": kind,
        "data": str(Path(data).resolve()),
        "train_ids": list(train_ids),
        "val_ids": list(val_ids),
    }
    state, summary = fit(_train_loop, config, cfg, {}, storage, name, split=())
    if state is None or state.get("best") is None:
        raise RuntimeError(f"re-ID run {name} reported no model")
    return state["best"], summary
