"""One local Ray per test session, small and quiet (see RAY.md: Ray on 2 cores in pytest)."""

import os

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# the Parquet reader a local Ray uses in the product (see usv_ray.runtime._init)
os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test that needs one; shut down after the session."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
