"""Start or join Ray the same way from every stage, on a laptop or a cluster.

Three things every command gets from :func:`ensure_ray`:

- **No hang on a dead Ray.** A command without an address always starts its own local
  Ray (``address="local"``), so a record that a killed ``ray start --head`` left in
  ``/tmp/ray`` is never followed to a dead GCS (``ray.init()`` would retry it for
  minutes). An address that was given (``--address``, ``ray.address``, ``RAY_ADDRESS``)
  is probed with a TCP connect first; an unreachable one is a
  :class:`RayUnreachableError` within seconds, naming the address, why and what to do.
- **A quiet log.** What Ray prints for its developers (Ray Data's execution plans and
  parquet estimates, Ray Train's dump of every report, the preemption watcher's
  object-store warning) is turned off at its source: a DataContext setting, logger levels
  in the driver and, through the worker setup hook, in every worker. ``usv-ray -v``
  (:func:`set_verbose`) leaves them all on.
- **The same settings in every worker**, from environment variables set before
  ``ray.init`` (a local Ray's workers inherit them) and the runtime environment.
- **A failed start-up is one line.** A local Ray that does not start is a
  :class:`RayStartError` naming the cause and the remedy, and every process the try
  started (GCS, raylet, dashboard agent, ...) is stopped, by SIGKILL when SIGTERM is not
  enough.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from usv_ray.config import RayConfig
from usv_ray.errors import UsvRayError

log = logging.getLogger(__name__)

VERBOSE_ENV = "USV_RAY_VERBOSE"  # "1": leave Ray's own logs on (usv-ray -v), workers too
PROBE_TIMEOUT_S = 3.0  # a reachable GCS answers a TCP connect in milliseconds
LOCAL_HOOK = "usv_ray.runtime.quiet_local_workers"
CLUSTER_HOOK = "usv_ray.runtime.quiet_cluster_workers"


class RayUnreachableError(UsvRayError, ConnectionError):
    """The Ray cluster named by ``--address`` / ``ray.address`` / ``RAY_ADDRESS`` does not
    answer: its message names the address, the cause and the remedy."""


class RayStartError(UsvRayError, RuntimeError):
    """A local Ray did not start (on a loaded machine its processes miss Ray's start-up
    deadline): its message names the cause and the remedy; nothing it started is left
    running."""


# ---------------------------------------------------------------------------- verbosity


def set_verbose(verbose: bool) -> None:
    """``usv-ray -v``: keep Ray's own logs in this process and in the workers it starts."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


def is_verbose() -> bool:
    """Whether ``usv-ray -v`` asked for Ray's own logs (here and in every worker)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def train_report_logger_name() -> str:
    """The logger of Ray Train's "Reporting training result ...: TrainingReport(...)" line.

    Ray Train names it by its file's path (``logging.getLogger(__file__)``), so it sits
    outside the ``ray.train`` logger tree and its log level; it is computed from Ray's own
    location rather than imported, because importing Ray Train costs every worker a second.
    """
    import ray

    return str(Path(ray.__file__).parent.joinpath("train/v2/_internal/execution/context.py"))


def quiet_ray_logs() -> None:
    """Silence, in this process, what Ray logs for its own developers; ``-v`` keeps it.

    - Ray Data logs at INFO for every dataset its start, execution plan, parquet reader
      estimates and finish, and hints about its progress UI: ``RAY_DATA_LOG_LEVEL``, read
      when ``ray.data`` configures its logger at import, and the logger's level when it
      is already imported. Its warnings and errors stay.
    - Ray Train logs every ``ray.train.report`` with the whole report and checkpoint path.
    - Ray's progress-bar relay warns once that "tqdm is not installed" when a worker's Ray
      Data shows a bar: the product shows its own progress lines, and needs no tqdm.
    - Ray Data warns that "the Ray cluster currently does not have any available CPUs. The
      Dataset job will hang" whenever a dataset is iterated while every CPU is held at
      that instant: a Train worker that holds a laptop's every CPU (the demo's) reading
      its training frames, which are materialized before the run and need no CPU task, or
      the next read started a moment after the last. It never hangs there, and the line
      only alarms.

    Ray's warnings and errors are kept; the product's own steps and results are logged
    by ``usv_ray`` loggers and are untouched.
    """
    if is_verbose():
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

    if "ray.data" in logging.Logger.manager.loggerDict:  # already configured by an import
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    logging.getLogger(train_report_logger_name()).setLevel(logging.WARNING)
    logging.getLogger("ray.experimental.tqdm_ray").setLevel(logging.ERROR)
    dataset_log = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _NoCpuWarning) for f in dataset_log.filters):
        dataset_log.addFilter(_NoCpuWarning())


class _NoCpuWarning(logging.Filter):
    """Drops Ray Data's "no available CPUs ... will hang" warning (see quiet_ray_logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


def train_logging_config() -> object:
    """Ray Train's own log level for a ``RunConfig(logging_config=...)``: WARNING, or INFO
    with ``-v``. Ray Train logs each fit's worker-group start, process group, device and
    checkpoint at INFO (7 lines a fit); only the RunConfig sets that level."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if is_verbose() else "WARNING")


# ---------------------------------------------------------------------------- addresses


def _address_source(cfg: RayConfig) -> tuple[str | None, str]:
    if cfg.address:
        return cfg.address, "--address / ray.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


def _recorded_address() -> str | None:
    """The GCS address the last ``ray start --head`` on this machine recorded, if any."""
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:port`` for Ray Client), else None."""
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``), or None
    when a TCP connect to it succeeds within ``timeout`` seconds."""
    host_port = _host_port(address)
    if host_port is None:
        return "it is not of the form host:port or ray://host:port"
    try:
        with socket.create_connection(host_port, timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except TimeoutError:
        return f"no answer within {timeout:g} s (a firewall, a wrong host, or no tunnel)"
    except socket.gaierror as exc:
        return f"the host name does not resolve ({exc.strerror})"
    except OSError as exc:
        return f"cannot connect ({exc.strerror or exc})"


def _check_reachable(address: str, source: str) -> None:
    """Fail within seconds, with cause and remedy, when ``address`` does not answer."""
    target = address
    if address == "auto":
        target = _recorded_address()
        if target is None:
            raise RayUnreachableError(
                f"no running Ray cluster found for address 'auto' (from {source}): no "
                "`ray start --head` on this machine recorded one. Start it, give the "
                "head's address, or drop --address and unset RAY_ADDRESS to run on a "
                "local Ray that this command starts"
            )
    cause = probe(target)
    if cause is None:
        return
    shown = address if target == address else f"{address} ({target})"
    raise RayUnreachableError(
        f"cannot reach the Ray cluster at {shown} (from {source}): {cause}. If the cluster "
        f"should be up, check it with `ray status --address {target}` and start it (`ray up "
        "cluster.yaml`, `ray start --head`); through an SSH tunnel, open it first (`ray "
        "dashboard cluster.yaml`). Otherwise fix the address, or drop --address and unset "
        "RAY_ADDRESS to run on a local Ray that this command starts"
    )


# ---------------------------------------------------------------------------- start or join


def ensure_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address`` (or RAY_ADDRESS) when given, else start a local Ray.

    Does nothing when Ray is already initialised in this process (tests, a Ray job's
    driver), so stages compose. Raises :class:`RayUnreachableError` within seconds when
    the given address does not answer.
    """
    import ray

    if ray.is_initialized():
        return
    address, source = _address_source(cfg)
    if address and address != "local":
        _check_reachable(address, source)
    quiet_ray_logs()
    # Ray's LoggingConfig also lowers this process's root logger to WARNING and adds a
    # handler to it; keep the driver's logging (our progress lines) as the command set it.
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        _init(cfg, address)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    # the "Starting execution of Dataset ... Execution plan ..." lines, per dataset
    ctx.print_on_execution_start = is_verbose()
    if "RAY_DATA_USE_DATASOURCE_V2" in os.environ:  # read once, at import: apply it now
        ctx.use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"] == "1"


def _worker_env() -> dict[str, str]:
    """What the worker setup hooks read: workers of a cluster do not inherit our env."""
    return {VERBOSE_ENV: "1" if is_verbose() else "0"}


def _cluster_runtime_env() -> dict[str, object]:
    """The hook, and ``-v`` for the workers, unless this driver runs in a submitted job:
    there the job's own ``env_vars`` reach every worker already, and Ray refuses a
    driver's env var that the job also sets (``--runtime-env-json '{"env_vars":
    {"USV_RAY_VERBOSE": "1"}}'`` is how a job asks for Ray's logs)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    runtime_env: dict[str, object] = {"worker_process_setup_hook": CLUSTER_HOOK}
    if RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:
        runtime_env["env_vars"] = _worker_env()
    return runtime_env


def _init(cfg: RayConfig, address: str | None) -> None:
    import ray

    logging_config = ray.LoggingConfig(log_level="WARNING")
    if address and address != "local":
        log.info("joining the Ray cluster at %s", address)
        ray.init(
            address=address,
            logging_config=logging_config,
            runtime_env=_cluster_runtime_env(),
        )
        return
    recorded = _recorded_address()
    if recorded:
        # Only said: a local command never joins it (address="local" below), so a stale
        # record cannot make it wait on a dead head.
        state = "not answering (left by a Ray that stopped without cleaning up)"
        if probe(recorded, timeout=0.5) is None:
            state = f"running; pass --address {recorded} to use it"
        log.info("a Ray recorded at %s is %s: starting a local Ray", recorded, state)
    # Ray Train polls its workers every 2 s by default, and each report waits for a
    # poll: on a laptop that is most of a short run. Workers inherit this from here.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray Data's default Parquet reader (datasource V2) starts a pool of up to 32
    # FooterReader actors, each a new process, for every read_parquet: 5-30 s to read a
    # few shards on a laptop, several times per stage. The V1 reader takes well under a
    # second. Set here so the local workers (Ray Train's datasets) inherit it too.
    os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")
    if not is_verbose():
        # "Token authentication is enabled for this Ray cluster ...", on every local start:
        # Ray's default, not news. (Setting RAY_AUTH_MODE here instead comes too late: Ray
        # has read it at import, and a driver and a GCS that disagree cannot connect.)
        # Joining a cluster keeps the notice: there it warns of a cluster without a token.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        # A laptop is never preempted: Ray Train's preemption watcher only adds an actor
        # per run, whose creation logs an error-level object-store warning (ray #53727).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    before = _children()
    try:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
            include_dashboard=False,
            logging_config=logging_config,
            runtime_env={"worker_process_setup_hook": LOCAL_HOOK, "env_vars": _worker_env()},
        )
    except Exception as exc:  # Ray raises a bare Exception when its node times out
        left = _stop_started(before)
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayStartError(
            f"a local Ray did not start ({cause}; {left} processes it started were "
            "stopped): on a loaded machine, retry when it is quieter; the night's stages "
            "also run without Ray, in this process: --set ingest.workers=0 (or "
            "predict.workers=0, index.workers=0)"
        ) from exc
    log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))


def _children() -> set[tuple[int, float]]:
    """(pid, start time) of every process below this one."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.add((child.pid, child.create_time()))
    return found


def _stop_started(before: set[tuple[int, float]], grace_s: float = 3.0) -> int:
    """Stop what a failed ``ray.init`` started: the processes below this one that were not
    there ``before``, SIGTERM first, SIGKILL for those that ignore it (Ray's dashboard
    agent does). Returns how many there were."""
    import psutil

    started = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if (child.pid, child.create_time()) not in before:
                started.append(child)
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(started)


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


# ---------------------------------------------------------------------------- worker hooks


def quiet_cluster_workers() -> None:
    """Run in every worker of a joined cluster (its ``worker_process_setup_hook``): Ray's
    developer logs off, as in the driver (:func:`quiet_ray_logs`), unless ``-v``."""
    quiet_ray_logs()


def quiet_local_workers() -> None:
    """Run in every worker of a local Ray (its ``worker_process_setup_hook``).

    Ray's developer logs off, as in the driver (:func:`quiet_ray_logs`), unless ``-v``.
    And always: Ray Train's placement-group cleaner asks the State API every second
    whether the training controller is alive; without a dashboard (a local Ray skips it:
    ~1 GB and seconds of startup on a laptop) every ask fails and logs a warning, ~1,000
    lines per demo. Without the State API the cleaner cannot work anyway: a local Ray's
    placement groups end with the driver, and Tune releases those its stopped trials leave
    (:func:`usv_ray.tune.sweep.release_orphaned_placement_groups`). Clusters run the
    dashboard: there the cleaner works and its warnings stay.

    The State API finds its Ray from ``RAY_ADDRESS``, else by looking for GCS processes on
    the machine: with two Rays there (another user's, a test's) it raises instead, and the
    cleaner's thread dies with a traceback in the driver's log. This worker's own GCS is
    the answer, so it is set here.
    """
    import ray

    quiet_ray_logs()
    if ray.is_initialized():
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    ).setLevel(logging.ERROR)
