"""What the training runner needs to know of a run: :class:`RunSettings`.

A model's own section of the config (:class:`~usv_ray.config.TrainConfig`: epochs, lr,
batch size, best metric, optimizer, schedule, precision) goes in whole as ``train``; the
stage's section gives the rest (validation cadence, workers, devices, checkpoint cadence)
by the same names (:meth:`RunSettings.of`). The optimizer and the learning-rate schedule
are built here from ``train``: a schedule is a pure function of the epoch, so a run
resumed after a kill sets the same rates as one never killed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from usv_ray.config import TrainConfig

# what the best epoch maximises or minimises, by metric name
BEST_MODES = {"val_loss": "min", "val_acc": "max", "val_auc": "max", "val_ap": "max"}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP_START = 0.1  # a warm-up ramps the learning rate from this share of lr
COSINE_FLOOR = 0.01  # a cosine schedule ends at this share of lr


@dataclass(frozen=True)
class RunSettings:
    """How the runner trains every model of one run."""

    train: TrainConfig  # the model's section: epochs, lr, batch size, best, optimizer, ...
    seed: int
    val_every: int = 1  # validate every N epochs (and at the last)
    workers: int = 1  # Ray Train workers (DDP); 0: this process, without Ray Train
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    channels_last: bool = False  # 2D CNNs: NHWC memory layout (faster convolutions on GPUs)
    checkpoint_every_s: float = 60.0  # at most this long between checkpoints (0: every epoch)

    def __post_init__(self) -> None:
        t = self.train
        if t.best not in BEST_MODES:
            raise ValueError(f"best metric {t.best!r} is not one of {', '.join(BEST_MODES)}")
        if t.precision not in ("fp32", *AMP_DTYPES):
            raise ValueError(f"precision {t.precision!r} is not one of fp32, bf16, fp16")
        if t.epochs < 1 or self.val_every < 1:
            raise ValueError(f"need epochs >= 1 and val_every >= 1, got {self}")
        if not 0 <= t.warmup_epochs < t.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {t.warmup_epochs}")
        if not t.lr > 0 or not math.isfinite(t.lr):
            raise ValueError(f"lr must be positive, got {t.lr}")

    @classmethod
    def of(cls, train: TrainConfig, stage: Any, seed: int, workers: int | None = None):
        """The settings of the model section ``train`` in the stage section ``stage``, which
        holds ``val_every``, ``workers``, ``cpus_per_worker``, ``use_gpu``,
        ``checkpoint_every_s`` and optionally ``channels_last``; ``workers`` overrides the
        stage's (the LSTMs' own)."""
        return cls(
            train=train,
            seed=seed,
            val_every=stage.val_every,
            workers=stage.workers if workers is None else workers,
            cpus_per_worker=stage.cpus_per_worker,
            use_gpu=stage.use_gpu,
            channels_last=getattr(stage, "channels_last", False),
            checkpoint_every_s=stage.checkpoint_every_s,
        )

    @property
    def epochs(self) -> int:
        return self.train.epochs

    @property
    def best_metric(self) -> str:
        return self.train.best

    @property
    def precision(self) -> str:
        return self.train.precision


def build_optimizer(parameters: Iterable[Any], train: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names, at ``train.lr`` with its weight decay."""
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=train.lr, momentum=0.9, nesterov=True, weight_decay=train.weight_decay
        )
    raise ValueError(f"unknown optimizer {train.optimizer!r} (adam, adamw, sgd)")


def lr_factor(train: TrainConfig, epoch: int) -> float:
    """The share of ``train.lr`` that epoch ``epoch`` (from 0) trains at: a linear warm-up
    from :data:`WARMUP_START` over ``warmup_epochs``, then constant, or a cosine down to
    :data:`COSINE_FLOOR` at the last epoch."""
    if epoch < train.warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / train.warmup_epochs
    if train.schedule == "constant":
        return 1.0
    span = train.epochs - train.warmup_epochs - 1
    progress = (epoch - train.warmup_epochs) / span if span > 0 else 1.0
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, train: TrainConfig, epoch: int) -> float:
    """Set every parameter group's rate for ``epoch`` (each group's base rate is scaled, so
    a task's own groups keep their ratios); returns the factor."""
    factor = lr_factor(train, epoch)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor
    return factor
