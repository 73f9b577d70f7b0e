"""A batch job over items: one callable class applied to batches of items, on a pool of Ray
Data actors, or in this process.

The night's three jobs (ingest, predict, the index's embedding) are this one shape. Items
are small references (a video's task, the paths of its shards); the callable class (a
model loaded once per actor in ``__init__``, a batch in ``__call__``: a dict of numpy
columns in, a pyarrow table out) reads what they name. ``workers: 0`` runs the same class
on the same batches in the calling process: on a laptop an actor's start-up is most of a
small night's work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from usv_ray.config import RayConfig

MAX_BLOCKS = 4096


def columns(items: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Items (dicts of the same keys) as the numpy batch a callable class takes."""
    return {key: np.array([item[key] for item in items], dtype=object) for key in items[0]}


def run_batches(
    job: type,
    kwargs: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    *,
    workers: int,
    ray: RayConfig,
    batch_size: int = 1,
    cpus: float = 1.0,
    gpus: float = 0,
) -> Iterator[pa.Table]:
    """``job(**kwargs)`` over ``items`` in batches of ``batch_size``: on ``workers`` Ray Data
    actors (``cpus`` and ``gpus`` each), or with 0 in this process. Yields each batch's
    table as it comes (in any order on actors)."""
    if not items:
        return
    if workers == 0:
        here = job(**kwargs)
        for start in range(0, len(items), batch_size):
            yield here(columns(items[start : start + batch_size]))
        return
    from ray import data as ray_data  # not `import ray.data`: it would rebind ``ray``

    from usv_ray.runtime import actor_cpus, ensure_ray

    ensure_ray(ray)
    blocks = min(len(items), max(1, math.ceil(len(items) / batch_size)), MAX_BLOCKS)
    dataset = ray_data.from_items(list(items), override_num_blocks=blocks).map_batches(
        job,
        fn_constructor_kwargs=dict(kwargs),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray_data.ActorPoolStrategy(size=workers),
        num_cpus=actor_cpus(cpus),
        num_gpus=gpus,
    )
    yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)
