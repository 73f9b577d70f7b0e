"""The one training runner every model uses: frame CNN, LSTMs, 3D CNNs, re-ID CM and VM.

A stage describes each model it wants as a :class:`Task` (its model, its batches, its loss
and its validation) and hands a list of them to :func:`train_models` with the run's
:class:`RunSettings`. The runner owns everything else, the same way for every model:

* **The jobs of a run.** One run trains its tasks one after another (each Ray Train run
  costs ~20 s of start-up on 2 cores). A finished model's file is written (rank 0) before
  the report that lists it as done, so a checkpoint never names a missing file.
* **The epoch loop**, with mixed precision (``precision``: fp32, bf16, or fp16 with a
  gradient scaler) and, for 2D CNNs, channels-last memory layout.
* **Validation** on rank 0 every ``val_every`` epochs and at the last, and **one rule for
  the best epoch**: the epoch with the best ``best_metric`` (lowest ``val_loss``, highest
  ``val_acc`` / ``val_auc``) so far; ties keep the earlier epoch. A task whose validation
  set is empty (or whose metric is NaN every time) keeps its last epoch, and its file says so.
* **Checkpoint and resume.** Rank 0 checkpoints the run's state when a model is finished
  and at most every ``checkpoint_every_s`` seconds between; every rank reports then
  (``ray.train.report`` is a barrier, ~0.2 s each on a laptop: reporting each of 630 small
  LSTM epochs cost minutes) and, inside a Tune trial, every epoch. The state lists finished models
  and holds the current one's weights, optimizer, scaler, best weights and epoch, so it
  stays the size of one model. A rerun (or a Ray Train restart after a crash) with the same
  run name resumes at the (model, epoch) where the last checkpoint stopped; when every
  model is finished it starts nothing at all; a finished model is final (a rerun that asks
  for other epochs is an error, not a silent reuse).
* **The finished-model file** (:func:`save_model`): the weights of the best epoch with
  their metadata (the task's own, the best epoch and value, the settings), read back with
  :func:`load_model`.
* **The report to Ray Train / Tune**: inside a Tune trial every epoch's report of rank 0
  becomes a Tune result (``TuneReportCallback``), so ASHA can stop poor trials. Every
  epoch's metrics are also kept in the checkpointed log (:func:`training_log`).

Runs are reproducible from the seed: the datasets a run trains on keep the order they were
read in (:func:`in_order`), every epoch's random draws (augmentation, dropout) come from
``(seed, epoch, rank)`` alone (:func:`seed_epoch`), and tasks draw their batch order from
``(seed, epoch)``; so a run resumed after a kill ends with the weights of a run never
killed. With several workers each still sees its own shard in order, but which blocks
reach which worker is decided as they stream (``streaming_split``), so DDP runs are not
bit-reproducible.

``workers: 0`` runs the same loop in this process, without Ray Train (no worker start-up,
which on a laptop is most of a small LSTM run); it checkpoints to the same place in the
same layout, so it resumes as a Ray Train run does.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

STATE_FILE = "state.pt"
MODEL_FORMAT = 1  # the layout of a finished-model file (save_model / load_model)
# what the best epoch maximises or minimises, by metric name
BEST_MODES = {"val_loss": "min", "val_acc": "max", "val_auc": "max", "val_ap": "max"}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """How the runner trains every model of one run (built from a stage's config)."""

    epochs: int
    lr: float  # Adam
    seed: int
    val_every: int = 1  # validate every N epochs (and at the last)
    best_metric: str = "val_loss"  # a key of BEST_MODES: what picks the best epoch
    weight_decay: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 with a gradient scaler)
    channels_last: bool = False  # 2D CNNs: NHWC memory layout (faster convolutions on GPUs)
    checkpoint_every_s: float = 60.0  # at most this long between checkpoints (0: every epoch)
    workers: int = 1  # Ray Train workers (DDP); 0: this process, without Ray Train
    cpus_per_worker: float = 1.0
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if self.best_metric not in BEST_MODES:
            known = ", ".join(BEST_MODES)
            raise ValueError(f"best metric {self.best_metric!r} is not one of {known}")
        if self.precision not in ("fp32", *AMP_DTYPES):
            raise ValueError(f"precision {self.precision!r} is not one of fp32, bf16, fp16")
        if self.epochs < 1 or self.val_every < 1:
            raise ValueError(f"need epochs >= 1 and val_every >= 1, got {self}")


def stage_settings(cfg: Any) -> RunSettings:
    """The runner's settings of a stage config whose fields carry the runner's names
    (``epochs``, ``lr``, ``seed``, ``val_every``, ``best``, ``weight_decay``, ``precision``,
    ``checkpoint_every_s``, ``workers``, ``cpus_per_worker``, ``use_gpu``): re-ID's, the
    detector's."""
    return RunSettings(
        epochs=cfg.epochs,
        lr=cfg.lr,
        seed=cfg.seed,
        val_every=cfg.val_every,
        best_metric=cfg.best,
        weight_decay=cfg.weight_decay,
        precision=cfg.precision,
        checkpoint_every_s=cfg.checkpoint_every_s,
        workers=cfg.workers,
        cpus_per_worker=cfg.cpus_per_worker,
        use_gpu=cfg.use_gpu,
    )


class Worker:
    """Where the runner's loop runs: rank ``rank`` of ``world``, on ``device``.

    This base class is the in-process worker (``workers: 0``): rank 0 of 1, the datasets
    given to it whole, checkpoints written to ``run`` in the layout Ray Train uses.
    """

    def __init__(
        self, settings: RunSettings, run: Path | None = None, datasets: Mapping | None = None
    ) -> None:
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.run = None if run is None else Path(run)
        self._datasets = dict(datasets or {})
        self.channels_last = settings.channels_last
        self.every_s = settings.checkpoint_every_s
        self._last = time.monotonic()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model moved to this worker's device (Ray Train: and wrapped for DDP)."""
        return model.to(self.device)

    def dataset(self, name: str) -> Any:
        """The Ray Dataset ``name`` (Ray Train: this rank's shard of it, if it is split)."""
        return self._datasets[name]

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the model takes it: on its device, in its memory layout."""
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def resume(self) -> dict | None:
        """The state of this run's last checkpoint, or None on a fresh start."""
        return last_state(self.run.parent, self.run.name, mmap=False)

    def due(self, finished: bool, now: float | None = None) -> bool:
        """Whether this report checkpoints: a finished model always, else once ``every_s``
        seconds have passed since the last checkpoint (``now``: time.monotonic(), for tests)."""
        now = time.monotonic() if now is None else now
        return finished or now - self._last >= self.every_s

    every_epoch = False  # report epochs that do not checkpoint too (a Tune trial's ASHA)

    def checkpoint_due(self, finished: bool) -> bool:
        """:meth:`due`, the same on every rank (rank 0's decision)."""
        return self.due(finished)

    def report(self, metrics: dict, state: dict, step: int, *, checkpoint: bool) -> None:
        """Checkpoint ``state`` as ``epoch_<step>``, keeping only the latest (this worker
        reports to no one else)."""
        if not checkpoint:
            return
        target = self.run / f"epoch_{step:04d}"
        with tempfile.TemporaryDirectory(dir=_mkdir(self.run)) as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            shutil.rmtree(target, ignore_errors=True)
            Path(folder).rename(target)
        for old in self.run.glob("epoch_*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        self._last = time.monotonic()


class RayTrainWorker(Worker):
    """A Ray Train worker: its rank, device and dataset shards, reports through Ray Train."""

    def __init__(self, settings: RunSettings, every_epoch: bool) -> None:
        import ray.train
        import ray.train.torch

        super().__init__(settings)
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.every_epoch = every_epoch

    def checkpoint_due(self, finished: bool) -> bool:
        import torch.distributed as dist

        due = self.due(finished)
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(due)], device=self.device)
            dist.broadcast(flag, src=0)  # every rank reports when rank 0 checkpoints
            due = bool(flag.item())
        return due

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def resume(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu")

    def report(self, metrics: dict, state: dict, step: int, *, checkpoint: bool) -> None:
        """Report ``metrics`` from this rank (a barrier: every rank reports); rank 0 attaches
        the checkpoint of ``state``."""
        import ray.train

        if self.rank != 0 or not checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"epoch_{step:04d}",
            )
        self._last = time.monotonic()


class Task(Protocol):
    """One model to train: what a stage supplies to the runner (picklable: it travels to
    the Ray Train workers). The runner seeds torch before ``build``, so every rank starts
    from the same weights."""

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
        """What the finished-model file records besides the weights (model shape, data)."""
        ...


@dataclass(frozen=True)
class TrainedModel:
    """A finished model of a run: its file and how it was trained."""

    path: Path  # the finished-model file (load_model)
    start_epoch: int  # 0, or the epoch a restarted or rerun run resumed it from
    best_epoch: int  # the epoch whose weights the file holds
    best_value: float  # its best_metric (NaN: never validated, the last epoch kept)
    metric: str  # the best_metric
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


def model_path(folder: Path, key: str) -> Path:
    """Where a run keeps its finished model named ``key``."""
    return Path(folder) / f"{key}.pt"


def save_model(folder: Path, key: str, weights: dict, meta: Mapping[str, Any]) -> Path:
    """Write a finished model to ``model_path`` atomically (rank 0 only): its weights and
    ``meta`` (how it was trained, what it reads), in the :data:`MODEL_FORMAT` layout.

    Runs keep finished models here, on the run's storage, rather than in every checkpoint:
    a checkpoint then only lists what is done, and stays small however many models a run
    trains.
    """
    from usv_ray.io import atomic_path

    path = model_path(folder, key)
    saved = {"format": MODEL_FORMAT, "key": key, "meta": dict(meta), "weights": weights}
    with atomic_path(path) as tmp:
        torch.save(saved, tmp)
    return path


def load_model(path: str | Path) -> tuple[dict, dict]:
    """(weights, metadata) of a finished-model file written by :func:`save_model`.

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        ValueError: for a file of another layout (an older usv-ray's bare weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    saved = torch.load(path, map_location="cpu")
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path} is not a usv-ray model file of format {MODEL_FORMAT}: it was written by "
            "another version; train again into a new --out folder"
        )
    return saved["weights"], saved["meta"]


@torch.no_grad()
def classifier_scores(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Validation metrics of a benign/malignant classifier over ``(P(class) (B, 2), labels
    (B,))`` batches: ``val_loss`` (the mean negative log-likelihood of the true class),
    ``val_acc`` (at argmax) and ``val_samples``; {} when there are none."""
    total, correct, count = 0.0, 0, 0
    for probs, labels in batches:
        probs, labels = probs.float(), labels.to(probs.device)
        log_probs = torch.log(probs.clamp_min(1e-8))
        total += torch.nn.functional.nll_loss(log_probs, labels, reduction="sum").item()
        correct += int((probs.argmax(1) == labels).sum())
        count += len(labels)
    if count == 0:
        return {}
    return {"val_loss": total / count, "val_acc": correct / count, "val_samples": count}


def numpy_collate(fn: Callable[[dict], Any]) -> Any:
    """``fn`` (a numpy batch -> tensors) as the ``collate_fn`` of ``iter_torch_batches``.

    Ray asks for an object of a ``*BatchCollateFn`` class since 2.47 (a plain function is
    deprecated and warns on every iteration); this wraps ``fn`` in a
    ``NumpyBatchCollateFn``, which receives the same dict of numpy arrays.
    """
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> Any:
            return fn(batch)

    return Collate()


def shuffled_batches(shard: Any, batch_size: int, collate: Callable[[dict], Any], seed: int) -> Any:
    """A training epoch over a worker's dataset ``shard``: batches of ``batch_size`` made by
    ``collate`` (numpy batch -> tensors), shuffled locally within four batches' rows by
    ``seed`` (a model's seed plus the epoch, so a resumed epoch draws the same order)."""
    return shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=numpy_collate(collate),
        local_shuffle_buffer_size=4 * batch_size,
        local_shuffle_seed=seed,
    )


def in_order(dataset: Any) -> Any:
    """``dataset`` (a Ray Dataset) set to keep the order it reads its blocks in: itself and
    every dataset made from it, materialized ones included (they share its context)."""
    dataset.context.execution_options.preserve_order = True
    return dataset


def last_state(storage: Path, name: str, mmap: bool = True) -> dict | None:
    """The training state in run ``storage / name``'s last checkpoint, or None (no checkpoint).

    Read on the driver, without starting a run: what a run has finished.
    """
    checkpoints = sorted(
        (p for p in (Path(storage) / name).glob("epoch_*") if (p / STATE_FILE).is_file()),
        key=lambda p: int(p.name.removeprefix("epoch_")),
    )
    if not checkpoints:
        return None
    # mmap: only the small parts read (the log, what is done) leave the disk
    return torch.load(checkpoints[-1] / STATE_FILE, map_location="cpu", mmap=mmap)


def training_log(storage: Path, name: str) -> list[dict]:
    """The metrics of every report of run ``storage / name`` so far (rank 0's, from its
    last checkpoint): model, epoch, step, attempt (1 for the first start of the run, one
    more for each rerun or restart), train_loss, samples_per_s and any validation metrics.
    Empty when the run has no checkpoint."""
    state = last_state(storage, name)
    return [] if state is None else state["log"]


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fresh_state() -> dict:
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
    step's kernels are waited for, so they count in this epoch)."""
    generator = seed_epoch(settings.seed, epoch, worker.rank)
    device = worker.device
    amp = AMP_DTYPES.get(settings.precision)
    model.train()
    total, count = 0.0, 0
    started = time.perf_counter()
    for batch in task.batches(data, epoch, worker):
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss, samples = task.loss(model, batch, worker, generator)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * samples
        count += samples
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return total / max(count, 1), count, time.perf_counter() - started


class _Progress:
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
        left = f"~{_duration(per_epoch * self.left)} left" if self.left > 0 else "run done"
        log.info("%s epoch %d/%d: %s (%s)", key, epoch + 1, epochs, scores, left)


def _duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``7 min`` or ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_tasks(
    tasks: Sequence[Task], settings: RunSettings, worker: Worker, models: Path
) -> dict[str, dict]:
    """The runner's loop, on one worker: trains each task not finished yet, one after
    another, resuming the one the last checkpoint holds. Returns the run's finished models
    (key -> :class:`TrainedModel` fields but the path)."""
    state = worker.resume() or _fresh_state()
    state["attempt"] += 1
    metric = settings.best_metric
    todo = [
        t for t in tasks if t.key not in state["done"] or not model_path(models, t.key).exists()
    ]
    progress = _Progress(len(todo) * settings.epochs)
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
        optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        scaler = torch.amp.GradScaler(worker.device.type, enabled=settings.precision == "fp16")
        if "optimizer" in current:
            optimizer.load_state_dict(current["optimizer"])
            scaler.load_state_dict(current["scaler"])
        data = task.open(worker)
        progress.skip(start_epoch)  # resumed: those epochs are done
        for epoch in range(start_epoch, settings.epochs):
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
            }
            finished = epoch + 1 == settings.epochs
            if worker.rank == 0 and (finished or (epoch + 1) % settings.val_every == 0):
                scores = task.validate(unwrap(model), data, worker)
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


def _ray_train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    # a worker's log records reach the driver once (its prints twice); the product's
    # progress is INFO, which a fresh worker process would drop
    if logging.getLogger("usv_ray").level == logging.NOTSET:
        logging.getLogger("usv_ray").setLevel(logging.INFO)
    settings: RunSettings = config["settings"]
    worker = RayTrainWorker(settings, config["every_epoch"])
    return run_tasks(config["tasks"], settings, worker, config["models"])


def _tune_callbacks() -> list:
    """``[TuneReportCallback()]`` when this run is launched from a Ray Tune trial, else ``[]``.

    With Ray Train V2 a Train run inside a Tune trial reaches Tune only through this
    callback (every report of rank 0 becomes a Tune result); it refuses to exist outside a
    Tune session, which is how a plain run tells the two apart.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    try:
        return [TuneReportCallback()]
    except RuntimeError:  # not in a Tune session
        return []


def _fit(
    config: dict, settings: RunSettings, datasets: dict, storage: Path, name: str, split: list
) -> dict:
    """The Ray Train run of :func:`train_models`: its finished models (rank 0's return)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from usv_ray.runtime import train_logging_config

    # Train's default ingest options (the driver's), keeping the order: the same batches in
    # every run (see the module doc). Copied, as DataConfig.default_ingest_options() would,
    # without its deprecated exclude_resources argument and the warning that brings.
    ingest = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ingest.preserve_order = True
    callbacks = _tune_callbacks()
    config = {**config, "every_epoch": bool(callbacks)}
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=callbacks,
            logging_config=train_logging_config(),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=split, execution_options=ingest),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value


def train_models(
    tasks: Sequence[Task],
    settings: RunSettings,
    storage: Path,
    name: str,
    datasets: Callable[[Sequence[Task]], dict[str, Any]] | None = None,
    split: Callable[[Task], Sequence[str]] = lambda task: (),
) -> dict[str, TrainedModel]:
    """Train every task of ``tasks`` not finished yet in the run ``storage / name`` (one
    Ray Train run of ``settings.workers`` workers, or this process for 0) and return each
    task's :class:`TrainedModel`, by key.

    ``datasets(todo)`` builds the Ray Datasets the unfinished tasks read (called only when
    something is left to train); ``split(task)`` names those of them that are sharded
    across the workers (the others, validation, reach every worker whole).
    """
    if len({task.key for task in tasks}) != len(tasks):
        raise ValueError(f"run {name}: two tasks share a key: {[t.key for t in tasks]}")
    models = (Path(storage) / name / "models").resolve()
    state = last_state(storage, name)
    done = {} if state is None else state["done"]
    for task in tasks:
        if task.key in done and done[task.key]["epochs"] != settings.epochs:
            raise ValueError(
                f"run {Path(storage) / name}: {task.key} was trained for "
                f"{done[task.key]['epochs']} epochs, these settings ask for {settings.epochs}: "
                "train into a new run folder"
            )
    todo = [t for t in tasks if t.key not in done or not model_path(models, t.key).exists()]
    if todo:
        data = datasets(todo) if datasets is not None else {}
        config = {"tasks": todo, "settings": settings, "models": models}
        if settings.workers == 0:
            worker = Worker(settings, Path(storage) / name, data)
            done = run_tasks(todo, settings, worker, models)
        else:
            names = sorted({d for task in todo for d in split(task)})
            done = _fit(config, settings, data, storage, name, names)
    return {t.key: TrainedModel(model_path(models, t.key), **done[t.key]) for t in tasks}
