"""Start or join Ray the same way from every stage, on a laptop or a cluster."""

from __future__ import annotations

import logging
import os

from usv_ray.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address`` (or RAY_ADDRESS) when given, else start a local Ray.

    Does nothing when Ray is already initialised in this process (tests, a Ray job's
    driver), so stages compose.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, logging_config=ray.LoggingConfig(log_level="WARNING"))
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
            include_dashboard=False,
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        )
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
