"""Where the runner's loop runs: :class:`Worker` (this process, ``workers: 0``) and
:class:`RayTrainWorker` (a Ray Train worker: its rank, device, dataset shards, and reports
through Ray Train). Both checkpoint the same state in the same layout, so a run resumes
either way."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from usv_ray.runner.files import STATE_FILE, last_state
from usv_ray.runner.settings import RunSettings


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Worker:
    """Where the runner's loop runs: rank ``rank`` of ``world``, on ``device``.

    This base class is the in-process worker (``workers: 0``): rank 0 of 1, the datasets
    given to it whole, checkpoints written to ``run`` in the layout Ray Train uses. Inside a
    Ray Tune trial (``every_epoch``) it reports every epoch's metrics to Tune itself, as a
    Train run does through ``TuneReportCallback``, so ASHA sees them.
    """

    def __init__(
        self,
        settings: RunSettings,
        run: Path | None = None,
        datasets: Mapping | None = None,
        every_epoch: bool = False,
    ) -> None:
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.run = None if run is None else Path(run)
        self._datasets = dict(datasets or {})
        self.channels_last = settings.channels_last
        self.every_s = settings.checkpoint_every_s
        self.every_epoch = every_epoch
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

    def checkpoint_due(self, finished: bool) -> bool:
        """:meth:`due`, the same on every rank (rank 0's decision)."""
        return self.due(finished)

    def report(self, metrics: dict, state: dict, step: int, *, checkpoint: bool) -> None:
        """Checkpoint ``state`` as ``epoch_<step>``, keeping only the latest; then, inside a
        Tune trial, report ``metrics`` to it (Tune may end the trial there)."""
        if checkpoint:
            target = self.run / f"epoch_{step:04d}"
            with tempfile.TemporaryDirectory(dir=_mkdir(self.run)) as folder:
                torch.save(state, Path(folder) / STATE_FILE)
                shutil.rmtree(target, ignore_errors=True)
                Path(folder).rename(target)
            for old in self.run.glob("epoch_*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
            self._last = time.monotonic()
        if self.every_epoch:
            from ray import tune

            tune.report(metrics)


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
