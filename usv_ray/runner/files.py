"""The runner's files: finished-model files and the checkpointed training state.

A finished-model file (:func:`save_model`) holds a model's best weights and its metadata:
what the model is (``model``: the architecture :func:`usv_ray.models.build` rebuilds it
from, with its shape) and how it was trained (best epoch and value, the settings). It is
the one model-file format of the project: every model, every bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
MODEL_FORMAT = 1  # the layout of a finished-model file (save_model / load_model)


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
    more for each rerun or restart), train_loss, samples_per_s, lr and any validation
    metrics. Empty when the run has no checkpoint."""
    state = last_state(storage, name)
    return [] if state is None else state["log"]
