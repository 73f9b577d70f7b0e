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
    # Ray's LoggingConfig also lowers this process's root logger to WARNING and adds a
    # handler to it; keep the driver's logging (our progress lines) as the command set it.
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        _init(cfg)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress


def _init(cfg: RayConfig) -> None:
    import ray

    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, logging_config=ray.LoggingConfig(log_level="WARNING"))
    else:
        # Ray Train polls its workers every 2 s by default, and each report waits for a
        # poll: on a laptop that is most of a short run. Workers inherit this from here.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
            include_dashboard=False,
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        )
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
