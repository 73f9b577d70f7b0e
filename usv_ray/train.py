"""What every Ray Train run shares (classify and re-ID stages): resume, report, fit.

A run reports once per epoch from every rank (``ray.train.report`` is a barrier); rank 0
alone attaches a checkpoint holding the state to resume from, at the end of each model and
at most every ``checkpoint_every_s`` seconds between (:class:`EpochReporter`). A rerun with
the same run name resumes from the last checkpoint instead of starting over.

Runs are reproducible from the seed: the datasets a run trains on keep the order they were
read in (:func:`in_order`, and ``preserve_order`` for the ingest), so a rerun with the same
seed and one worker sees the same batches and ends with the same weights. Ray Data's
default hands blocks on in the order they finish, which differed between two runs.
With several workers each still sees its own shard in order, but which blocks reach which
worker is decided as they stream (``streaming_split``), so DDP runs are not bit-reproducible.
Every epoch's random draws (augmentation, dropout) come from ``(seed, epoch, rank)`` alone
(:func:`seed_epoch`), so a run resumed after a kill ends with the weights of a run never
killed.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

STATE_FILE = "state.pt"


class Scaling(Protocol):
    """The settings of a stage's config that size its Ray Train runs."""

    workers: int  # Ray Train workers (DDP)
    cpus_per_worker: float
    use_gpu: bool


def resume_state() -> dict | None:
    """The state saved by the last checkpoint of this run, or None on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu")


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed the random draws of one epoch on one rank from ``(seed, epoch, rank)`` alone.

    Seeds torch's global generator (dropout draws from it) and returns a separate generator
    for augmentation, so that an epoch run after a resume draws exactly what the same epoch
    of an uninterrupted run drew.
    """
    augmentation, rest = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(rest))
    return torch.Generator().manual_seed(int(augmentation))


class EpochReporter:
    """Reports each epoch from every rank (``ray.train.report`` is a barrier); rank 0
    attaches a checkpoint of the state when a model is finished (always: it is the model's
    result) and otherwise once ``every_s`` seconds have passed since its last checkpoint or
    the loop's start (0: every epoch).

    A checkpoint holds the weights, Adam's two moments and the best weights (~360 MB for an
    R(2+1)D-18). Written after every few-second epoch of a small run, its disk writeback
    overlapped the next epoch and cost ~10% of training speed on 2 cores; a crash now loses
    at most ``every_s`` seconds and an epoch.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def due(self, finished: bool, now: float | None = None) -> bool:
        """Whether rank 0 checkpoints this epoch (``now``: time.monotonic(), for tests)."""
        now = time.monotonic() if now is None else now
        return finished or now - self._last >= self.every_s

    def __call__(self, metrics: dict, state: dict, step: int, *, finished: bool) -> None:
        """Report ``metrics``; checkpoint ``state`` as ``epoch_<step>`` when it is due."""
        import ray.train

        if ray.train.get_context().get_world_rank() != 0 or not self.due(finished):
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


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, int, float]:
    """One training pass of a classifier over this rank's ``(uint8 batch, labels)`` batches.

    ``inputs(batch, generator)`` turns a uint8 batch into the model's input (normalise,
    augment with ``generator``). Returns
    (mean loss, samples seen, seconds spent on the batches; on a GPU the last step's
    kernels are waited for, so they count in this epoch).
    """
    model.train()
    total, count = 0.0, 0
    started = time.perf_counter()
    for batch, labels in batches:
        loss = loss_fn(model(inputs(batch.to(device), generator)), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return total / max(count, 1), count, time.perf_counter() - started


def last_state(storage: Path, name: str) -> dict | None:
    """The training state in run ``storage / name``'s last checkpoint, or None (no checkpoint).

    Read on the driver, without starting a run: what a run that trains several models has
    finished. Checkpoints are named ``epoch_<step>`` by :class:`EpochReporter`.
    """
    checkpoints = sorted(
        (p for p in (Path(storage) / name).glob("epoch_*") if (p / STATE_FILE).is_file()),
        key=lambda p: int(p.name.removeprefix("epoch_")),
    )
    if not checkpoints:
        return None
    # mmap: only the small parts read (the log, what is done) leave the disk
    return torch.load(checkpoints[-1] / STATE_FILE, map_location="cpu", mmap=True)


def cpu_weights(state_dict: dict) -> dict:
    """A model's weights as detached CPU copies: what a checkpoint or a weights file keeps.

    Always a copy: ``.cpu()`` of a tensor already on the CPU is the tensor itself, so a
    "best so far" kept that way would follow the training on and end as the last weights.
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def model_path(folder: Path, key: str) -> Path:
    """Where a run that trains several models keeps the finished one named ``key``."""
    return Path(folder) / f"{key}.pt"


def save_model(folder: Path, key: str, weights: dict) -> Path:
    """Write a finished model's weights to ``model_path`` atomically (rank 0 only).

    Runs that train many models (every fold, several variants) keep finished models here,
    on the run's storage, rather than in every checkpoint: a checkpoint then only lists
    what is done, and stays small however many models the run trains.
    """
    from usv_ray.io import atomic_path

    path = model_path(folder, key)
    with atomic_path(path) as tmp:
        torch.save(cpu_weights(weights), tmp)
    return path


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


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


def in_order(dataset: Any) -> Any:
    """``dataset`` (a Ray Dataset) set to keep the order it reads its blocks in: itself and
    every dataset made from it, materialized ones included (they share its context)."""
    dataset.context.execution_options.preserve_order = True
    return dataset


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


def fit(
    loop: Callable[[dict], Any],
    loop_config: dict,
    cfg: Scaling,
    datasets: dict,
    storage: Path,
    name: str,
    split: Sequence[str] = ("train",),
) -> tuple[dict | None, Any]:
    """Run ``loop`` on ``cfg.workers`` Ray Train workers; the ``split`` datasets are sharded
    across them, the others (validation) reach every worker whole.

    Returns (the state of the last checkpoint, or None when the loop reported none, and
    the loop's return value on rank 0).
    """
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    # Train's default ingest options (the driver's), keeping the order: the same batches in
    # every run (see the module doc). Copied, as DataConfig.default_ingest_options() would,
    # without its deprecated exclude_resources argument and the warning that brings.
    ingest = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ingest.preserve_order = True

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=_tune_callbacks(),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=list(split), execution_options=ingest
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        return None, result.return_value
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
    return state, result.return_value
