"""The batch job every stage's inference runs on (usv_ray.pool): in this process, or on
Ray Data actors with the stage's Ray settings."""

import numpy as np
import pyarrow as pa
import pytest

from usv_ray.config import RayConfig
from usv_ray.pool import run_batches


class Scale:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.table({"x": batch["x"].astype(np.int64) * self.factor})


ITEMS = [{"x": i} for i in range(5)]


def test_in_this_process_every_batch_comes_back_in_order():
    tables = list(
        run_batches(Scale, {"factor": 3}, ITEMS, workers=0, ray=RayConfig(), batch_size=2)
    )
    assert [t.num_rows for t in tables] == [2, 2, 1]
    assert pa.concat_tables(tables)["x"].to_pylist() == [0, 3, 6, 9, 12]
    assert list(run_batches(Scale, {"factor": 3}, [], workers=1, ray=RayConfig())) == []


def test_on_actors_it_starts_ray_with_the_stages_settings(monkeypatch):
    """The Ray settings reach ensure_ray (an `import ray.data` in the function once turned
    the name into the ray module: predict crashed wherever it was the first to start Ray)."""
    import usv_ray.runtime

    class Stop(Exception):
        pass

    seen = []

    def ensure_ray(cfg):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(usv_ray.runtime, "ensure_ray", ensure_ray)
    settings = RayConfig(num_cpus=2, progress=False)
    with pytest.raises(Stop):
        list(run_batches(Scale, {"factor": 3}, ITEMS, workers=1, ray=settings))
    assert seen == [settings]
