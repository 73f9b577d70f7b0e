"""A run of the training runner: :func:`train_models` trains a stage's tasks in one Ray
Train run (``settings.workers`` DDP workers) or in this process (``workers: 0``), resuming
the run folder's last checkpoint. Inside a Ray Tune trial, every epoch's report of rank 0
becomes a Tune result (``TuneReportCallback``), so ASHA can stop poor trials."""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from usv_ray.runner.files import last_state, model_path
from usv_ray.runner.loop import Task, TrainedModel, TrainingError, run_tasks
from usv_ray.runner.settings import RunSettings
from usv_ray.runner.workers import RayTrainWorker, Worker


def _user_error(error: BaseException) -> TrainingError | None:
    """The :class:`TrainingError` a Ray Train worker raised, found in the error Ray Train
    gives back (it wraps the worker's), so the command line shows its one line."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TrainingError):
            return current
        stack += [current.__cause__, current.__context__]
        stack += [e for e in getattr(current, "worker_failures", {}).values()]
        stack += [getattr(current, "error", None)]
    text = str(error)
    marker = "TrainingError: "
    if marker in text:  # only the message crossed the process boundary
        return TrainingError(text.split(marker, 1)[1].strip().splitlines()[0])
    return None


def _ray_train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    # a worker's log records reach the driver once (its prints twice); the product's
    # progress is INFO, which a fresh worker process would drop
    if logging.getLogger("usv_ray").level == logging.NOTSET:
        logging.getLogger("usv_ray").setLevel(logging.INFO)
    settings: RunSettings = config["settings"]
    worker = RayTrainWorker(settings, config["every_epoch"])
    return run_tasks(config["tasks"], settings, worker, config["models"])


def _in_tune_trial() -> bool:
    """Whether this process runs a Ray Tune trial (Tune's own test, which its
    ``TuneReportCallback`` makes too: a session with no Train rank)."""
    if "ray.tune" not in sys.modules:  # nothing here imported Tune: no trial
        return False
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


def _tune_callbacks() -> list:
    """``[TuneReportCallback()]`` when this run is launched from a Ray Tune trial, else ``[]``.

    With Ray Train V2 a Train run inside a Tune trial reaches Tune only through this
    callback (every report of rank 0 becomes a Tune result).
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()] if _in_tune_trial() else []


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
        raise _user_error(result.error) or result.error
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
            worker = Worker(settings, Path(storage) / name, data, every_epoch=_in_tune_trial())
            done = run_tasks(todo, settings, worker, models)
        else:
            names = sorted({d for task in todo for d in split(task)})
            done = _fit(config, settings, data, storage, name, names)
    return {t.key: TrainedModel(model_path(models, t.key), **done[t.key]) for t in tasks}
