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
    if "RAY_DATA_USE_DATASOURCE_V2" in os.environ:  # read once, at import: apply it now
        ctx.use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"] == "1"


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
        # Ray Data's default Parquet reader (datasource V2) starts a pool of up to 32
        # FooterReader actors, each a new process, for every read_parquet: 5-30 s to read a
        # few shards on a laptop, several times per stage. The V1 reader takes well under a
        # second. Set here so the local workers (Ray Train's datasets) inherit it too.
        os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
            include_dashboard=False,
            logging_config=ray.LoggingConfig(log_level="WARNING"),
            runtime_env={"worker_process_setup_hook": "usv_ray.runtime.quiet_local_workers"},
        )
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))


def actor_cpus(cpus: float) -> float:
    """The CPUs a Ray Data inference actor may hold: ``cpus``, but at most all but one of
    the largest node's, so the read tasks that feed it can still run.

    An actor pool that takes every CPU (a config that gives each Train worker the whole
    laptop) waits forever for blocks that no read task can be scheduled to produce. With
    no node known yet (an autoscaling cluster before its first worker) ``cpus`` stands.
    """
    import ray

    largest = max(
        (node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]),
        default=0.0,
    )
    if largest <= 1 or cpus <= largest - 1:
        return cpus
    return largest - 1


def quiet_local_workers() -> None:
    """Run in every worker of a local Ray (its ``worker_process_setup_hook``).

    Ray Train's placement-group cleaner asks the State API every second whether the
    training controller is alive; without a dashboard (a local Ray skips it: ~1 GB and
    seconds of startup on a laptop) every ask fails and logs a warning, ~1,000 lines per
    demo. Without the State API the cleaner cannot work anyway: a local Ray's placement
    groups end with the driver, and Tune releases those its stopped trials leave
    (:func:`usv_ray.tune.sweep.release_orphaned_placement_groups`). Clusters run the
    dashboard: there the cleaner works and its warnings stay.
    """
    logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    ).setLevel(logging.ERROR)
