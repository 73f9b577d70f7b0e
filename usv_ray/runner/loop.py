"""The runner's loop on one worker: every task of a run, one after another, epoch by epoch.

:func:`run_tasks` trains each task not finished yet, resuming the one the last checkpoint
holds, and keeps each task's best epoch by one rule: the epoch with the best
``train.best`` metric (lowest ``val_loss``, highest ``val_acc`` / ``val_auc`` /
``val_ap``) so far; ties keep the earlier epoch. A task whose validation set is empty (or
whose metric is NaN every time) keeps its last epoch, and its file says so; a task whose
validation reports other metrics than the one asked for is an error. A non-finite
training loss stops the run with a :class:`TrainingError` that names the model, epoch and
batch, rather than training on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from usv_ray.errors import UsvRayError
from usv_ray.runner.files import model_path, save_model
from usv_ray.runner.settings import (
    AMP_DTYPES,
    BEST_MODES,
    RunSettings,
    build_optimizer,
    set_lr,
)
from usv_ray.runner.workers import Worker

log = logging.getLogger("usv_ray.runner")


class TrainingError(UsvRayError, RuntimeError):
    """Training cannot go on as set: a non-finite loss, or a best metric the model's
    validation does not report."""


class Task(Protocol):
    """One model to train: what a stage supplies to the runner (picklable: it travels to
    the Ray Train workers). The runner seeds torch before ``build``, so every rank starts
    from the same weights.

    A task may also define ``optimizer(parameters, settings) -> torch.optim.Optimizer`` to
    choose its own (parameter groups, another algorithm); the runner scales every group's
    rate by the schedule of ``settings.train``.
    """

    @property
    def key(self) -> str:
        """A file-name-safe name, unique in its run: the finished model is ``<key>.pt``."""
        ...

    def build(self) -> torch.nn.Module:
        """A freshly initialised model."""
        ...

    def open(self, worker: Worker) -> Any:
        """This task's data on ``worker`` (read once per task, before its first epoch);
        validation data only on rank 0."""
        ...

    def batches(self, data: Any, epoch: int, worker: Worker) -> Iterable[Any]:
        """This rank's training batches of ``epoch`` (the same number on every rank)."""
        ...

    def loss(
        self, model: torch.nn.Module, batch: Any, worker: Worker, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        """(the batch's mean loss, its sample count); augment with ``generator``."""
        ...

    def validate(self, model: torch.nn.Module, data: Any, worker: Worker) -> dict[str, float]:
        """Validation metrics (``val_loss``, ``val_acc``, ...) on rank 0; {} without a
        validation set. ``model`` is unwrapped and in train mode: set eval yourself."""
        ...

    def meta(self) -> dict:
        """What the finished-model file records besides the weights: ``model`` (the
        architecture, :func:`usv_ray.models.build` reads it) with its shape, and the data."""
        ...


@dataclass(frozen=True)
class TrainedModel:
    """A finished model of a run: its file and how it was trained."""

    path: Path  # the finished-model file (load_model)
    start_epoch: int  # 0, or the epoch a restarted or rerun run resumed it from
    best_epoch: int  # the epoch whose weights the file holds
    best_value: float  # its best metric (NaN: never validated, the last epoch kept)
    metric: str  # the best metric
    epochs: int  # the epochs it was trained for
    # training samples/s of the run (all workers): the median over its epochs after the
    # first (which pays for warm-up), or that one epoch's
    samples_per_s: float
    rates: tuple[float, ...]  # samples/s of every epoch, in order


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed the random draws of one epoch on one rank from ``(seed, epoch, rank)`` alone.

    Seeds torch's global generator (dropout draws from it) and returns a separate generator
    for augmentation, so that an epoch run after a resume draws exactly what the same epoch
    of an uninterrupted run drew.
    """
    augmentation, rest = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(rest))
    return torch.Generator().manual_seed(int(augmentation))


def cpu_weights(state_dict: dict) -> dict:
    """A model's weights as detached CPU copies: what a checkpoint or a weights file keeps.

    Always a copy: ``.cpu()`` of a tensor already on the CPU is the tensor itself, so a
    "best so far" kept that way would follow the training on and end as the last weights.
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def fresh_state() -> dict:
    """The training state of a run that has not started."""
    return {
        "done": {},  # key -> TrainedModel fields but the path (the weights: model_path)
        "current": None,  # the unfinished model: key, model, optimizer, scaler, epoch, best
        "step": -1,  # reports so far - 1, across models, epochs and restarts
        "attempt": 0,  # times the loop has started on this run name (reruns, restarts)
        "log": [],  # the metrics of every report
    }


def _better(value: float, best: float | None, metric: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if BEST_MODES[metric] == "min" else value > best


def _run_rate(samples: int, seconds: float, device: torch.device) -> float:
    """Training samples/s of the whole run in one epoch: every rank's samples over the
    slowest rank's time (one rank's own figure when there is one). Every rank calls it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counted = torch.tensor([float(samples), seconds], dtype=torch.float64, device=device)
        slowest = counted.clone()
        dist.all_reduce(counted)  # [sum of samples, sum of seconds]
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # [_, slowest rank's seconds]
        samples, seconds = int(counted[0].item()), float(slowest[1].item())
    return samples / seconds if seconds > 0 else math.nan


def _train_pass(
    task: Task,
    model: torch.nn.Module,
    data: Any,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    settings: RunSettings,
    worker: Worker,
) -> tuple[float, int, float]:
    """One epoch of training on this rank: (mean loss, samples, seconds; on a GPU the last
    step's kernels are waited for, so they count in this epoch).

    Raises:
        TrainingError: a batch whose loss is not finite.
    """
    generator = seed_epoch(settings.seed, epoch, worker.rank)
    device = worker.device
    amp = AMP_DTYPES.get(settings.precision)
    model.train()
    total, count = 0.0, 0
    started = time.perf_counter()
    for step, batch in enumerate(task.batches(data, epoch, worker)):
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss, samples = task.loss(model, batch, worker, generator)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(
                f"{task.key}: the training loss of epoch {epoch + 1}, batch {step + 1} is "
                f"{value}: lower its lr ({settings.train.lr:g}), add warm-up epochs, or train "
                f"in fp32 or bf16 (precision is {settings.precision})"
            )
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += value * samples
        count += samples
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return total / max(count, 1), count, time.perf_counter() - started


def _check_metric(task: Task, scores: dict, metric: str) -> None:
    """A validation that reports metrics, but not the best one: a setting that can never
    pick an epoch (the last one would be kept without a word)."""
    if scores and metric not in scores:
        raise TrainingError(
            f"{task.key}: its best epoch is chosen by {metric}, which its validation does not "
            f"report (it reports {', '.join(sorted(scores))}): set its best to one of them"
        )


class Progress:
    """Progress lines on rank 0 (a worker's log records reach the driver): the model,
    its epoch, its losses and an estimate of the run's time left; at each model's end and
    at most every ``every_s`` seconds between (the demo trains ~60 small LSTMs)."""

    def __init__(self, epochs: int, every_s: float = 20.0) -> None:
        self.left, self.done = epochs, 0
        self.started = self.printed = time.monotonic()
        self.every_s = every_s

    def skip(self, epochs: int) -> None:
        self.left -= epochs

    def epoch_done(self, key: str, epoch: int, epochs: int, metrics: dict, metric: str) -> None:
        self.left -= 1
        self.done += 1
        now = time.monotonic()
        if epoch + 1 < epochs and now - self.printed < self.every_s:
            return
        self.printed = now
        scores = f"train loss {metrics['train_loss']:.3f}"
        if metric in metrics:
            scores += f", {metric} {metrics[metric]:.3f}"
        per_epoch = (now - self.started) / self.done
        left = f"~{duration(per_epoch * self.left)} left" if self.left > 0 else "run done"
        log.info("%s epoch %d/%d: %s (%s)", key, epoch + 1, epochs, scores, left)


def duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``7 min`` or ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _optimizer(task: Task, model: torch.nn.Module, settings: RunSettings) -> Any:
    """The task's own optimizer when it defines one, else the one its settings name."""
    own = getattr(task, "optimizer", None)
    if callable(own):
        return own(model.parameters(), settings)
    return build_optimizer(model.parameters(), settings.train)


def run_tasks(
    tasks: Sequence[Task], settings: RunSettings, worker: Worker, models: Path
) -> dict[str, dict]:
    """The runner's loop, on one worker: trains each task not finished yet, one after
    another, resuming the one the last checkpoint holds. Returns the run's finished models
    (key -> :class:`TrainedModel` fields but the path)."""
    state = worker.resume() or fresh_state()
    state["attempt"] += 1
    metric = settings.best_metric
    todo = [
        t for t in tasks if t.key not in state["done"] or not model_path(models, t.key).exists()
    ]
    progress = Progress(len(todo) * settings.epochs)
    for task in tasks:
        path = model_path(models, task.key)
        if task.key in state["done"] and path.exists():
            continue  # finished before a restart or a rerun
        torch.manual_seed(settings.seed)  # the same initial weights on every rank
        model = task.build()
        current = state["current"]
        if current is not None and current["key"] == task.key:  # resume it
            model.load_state_dict(current["model"])
            start_epoch = current["epoch"] + 1
        else:
            current = {"key": task.key, "best_value": None, "best_epoch": -1, "best": None}
            current["rates"], start_epoch = [], 0
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = worker.prepare(model)
        optimizer = _optimizer(task, model, settings)
        scaler = torch.amp.GradScaler(worker.device.type, enabled=settings.precision == "fp16")
        if "optimizer" in current:
            optimizer.load_state_dict(current["optimizer"])
            scaler.load_state_dict(current["scaler"])
        data = task.open(worker)
        progress.skip(start_epoch)  # resumed: those epochs are done
        for epoch in range(start_epoch, settings.epochs):
            factor = set_lr(optimizer, settings.train, epoch)
            loss, count, seconds = _train_pass(
                task, model, data, epoch, optimizer, scaler, settings, worker
            )
            current["rates"].append(_run_rate(count, seconds, worker.device))
            state["step"] += 1
            metrics = {
                "model": task.key,
                "epoch": epoch,
                "step": state["step"],
                "attempt": state["attempt"],
                "train_loss": loss,
                "train_samples": count,  # this rank's
                "samples_per_s": current["rates"][-1],
                "lr": settings.train.lr * factor,
            }
            finished = epoch + 1 == settings.epochs
            if worker.rank == 0 and (finished or (epoch + 1) % settings.val_every == 0):
                scores = task.validate(unwrap(model), data, worker)
                _check_metric(task, scores, metric)
                metrics.update(scores)
                if _better(scores.get(metric, math.nan), current["best_value"], metric):
                    current["best_value"], current["best_epoch"] = scores[metric], epoch
                    current["best"] = cpu_weights(unwrap(model).state_dict())
            best = current["best_value"]
            metrics[f"best_{metric}"] = math.nan if best is None else best
            state["log"].append(metrics)
            if finished:
                if current["best"] is None:  # never validated: the last epoch stands
                    current["best"] = cpu_weights(unwrap(model).state_dict())
                    current["best_epoch"] = epoch
                steady = current["rates"][1:] or current["rates"]  # the first pays warm-up
                done = {
                    "start_epoch": start_epoch,
                    "best_epoch": current["best_epoch"],
                    "best_value": metrics[f"best_{metric}"],
                    "metric": metric,
                    "epochs": settings.epochs,
                    "samples_per_s": float(np.median(steady)),
                    "rates": tuple(current["rates"]),
                }
                if worker.rank == 0:  # before the report: a checkpoint never lists a missing file
                    meta = {**task.meta(), **done, "precision": settings.precision}
                    save_model(models, task.key, current["best"], meta)
                state["done"][task.key] = done
                state["current"] = None
            else:
                current.update(
                    model=cpu_weights(unwrap(model).state_dict()),
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(),
                    epoch=epoch,
                )
                state["current"] = current
            if worker.rank == 0:
                progress.epoch_done(task.key, epoch, settings.epochs, metrics, metric)
            # each report is a barrier costing ~0.2 s on a laptop: only those that checkpoint,
            # but every epoch in a Tune trial (ASHA compares trials by epoch)
            checkpoint = worker.checkpoint_due(finished)
            if checkpoint or worker.every_epoch:
                worker.report(metrics, state, state["step"], checkpoint=checkpoint)
        del model, optimizer
    return state["done"]
