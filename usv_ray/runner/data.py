"""Batches for the runner's tasks: Ray Datasets in a fixed order, shuffled epochs, collation,
and the validation scores of a classifier."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


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


def frames_dataset(shards: Sequence[str], columns: Sequence[str]) -> Any:
    """The ``columns`` of the Parquet frame ``shards`` as a Ray Dataset, read once and kept
    in the object store (re-reading the shards every epoch cost ~20 s per epoch on a 2-core
    machine, whatever their size), in read order (:func:`in_order`)."""
    import pyarrow.fs
    import ray.data

    # an explicit filesystem: path resolution would otherwise import fsspec's HTTP support
    dataset = ray.data.read_parquet(list(shards), filesystem=pyarrow.fs.LocalFileSystem())
    return in_order(dataset).select_columns(list(columns)).materialize()


def in_order(dataset: Any) -> Any:
    """``dataset`` (a Ray Dataset) set to keep the order it reads its blocks in: itself and
    every dataset made from it, materialized ones included (they share its context)."""
    dataset.context.execution_options.preserve_order = True
    return dataset


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
