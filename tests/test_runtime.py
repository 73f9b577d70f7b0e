"""The local Ray's worker setup."""

import logging
from pathlib import Path

import pytest

from usv_ray.runtime import actor_cpus, quiet_local_workers


@pytest.mark.ray
def test_an_inference_actor_leaves_a_cpu_to_the_reads_that_feed_it(ray_session):
    assert ray_session.cluster_resources()["CPU"] == 2
    assert actor_cpus(2) == 1 and actor_cpus(8) == 1
    assert actor_cpus(1) == 1 and actor_cpus(0.5) == 0.5


@pytest.mark.ray
def test_local_workers_name_their_own_ray_for_the_state_api(ray_session, monkeypatch):
    """With two Rays on a machine the State API cannot guess which is its own: the local
    workers' hook tells it, through RAY_ADDRESS."""
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("USV_RAY_VERBOSE", "1")  # leave the loggers of this process alone
    quiet_local_workers()
    assert os.environ["RAY_ADDRESS"] == ray_session.get_runtime_context().gcs_address


def test_quiet_local_workers_silences_the_placement_group_cleaner_warning():
    # The logger Ray Train's cleaner really logs with: a Ray upgrade that moves it fails here.
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    cleaner = placement_group_cleaner.logger
    before = cleaner.level
    try:
        quiet_local_workers()
        assert not cleaner.isEnabledFor(logging.WARNING)
        assert cleaner.isEnabledFor(logging.ERROR)
    finally:
        cleaner.setLevel(before)


# ---------------------------------------------------------------------------- quiet logs


@pytest.fixture
def ray_loggers(monkeypatch):
    """Ray Data's and Ray Train's loggers as Ray configures them; restored afterwards."""
    from ray.data._internal import logging as data_logging
    from ray.train.v2._internal.execution import context

    train = logging.getLogger(context.__file__)  # the logger Ray Train really uses
    before = train.level
    train.setLevel(logging.NOTSET)  # as in a new worker: its root logger decides
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    monkeypatch.delenv("USV_RAY_VERBOSE", raising=False)
    yield data_logging, train
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    data_logging.configure_logging()
    train.setLevel(before)


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_developer_logs_are_off_at_their_source_unless_verbose(ray_loggers, verbose):
    """The settings that quiet Ray Data (its logger, configured from RAY_DATA_LOG_LEVEL
    at import: here and in every worker) and Ray Train's per-report dump. A Ray upgrade
    that moves either logger fails here."""
    import os

    from usv_ray.runtime import quiet_ray_logs, set_verbose

    data_logging, train = ray_loggers
    set_verbose(verbose)
    quiet_ray_logs()
    data_logging.configure_logging()  # what `import ray.data` does in a new worker
    data = logging.getLogger("ray.data")
    assert data.isEnabledFor(logging.INFO) is verbose
    assert train.level == (logging.NOTSET if verbose else logging.WARNING)
    assert data.isEnabledFor(logging.WARNING)
    assert ("RAY_DATA_LOG_LEVEL" in os.environ) is not verbose  # inherited by workers


def test_ray_datas_false_hang_alarm_is_dropped_and_its_other_warnings_kept():
    from usv_ray.runtime import quiet_ray_logs, set_verbose

    set_verbose(False)
    quiet_ray_logs()
    quiet_ray_logs()  # twice: one filter
    dataset = logging.getLogger("ray.data.dataset")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    dataset.addHandler(handler)
    try:
        dataset.warning(
            "Warning: The Ray cluster currently does not have any available CPUs. The "
            "Dataset job will hang unless more CPUs are freed up."
        )
        dataset.warning("a warning of its own")
    finally:
        dataset.removeHandler(handler)
    assert seen == ["a warning of its own"] and len(dataset.filters) == 1


def test_worker_hooks_are_importable_by_name():
    """worker_process_setup_hook takes "module.function": a wrong name crash-loops workers."""
    import importlib

    from usv_ray import runtime

    for hook in (runtime.LOCAL_HOOK, runtime.CLUSTER_HOOK):
        module, _, name = hook.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))


# ---------------------------------------------------------------------------- start or join


def test_a_local_command_never_follows_a_recorded_address(tmp_path, monkeypatch, caplog):
    """What keeps a stale record harmless: a command without an address asks ray.init
    for a new local Ray (address="local"), whatever /tmp/ray records; the record is only
    reported. (The slow test below runs it for real.)"""
    import ray

    from usv_ray.config import RayConfig
    from usv_ray.runtime import RayStartError, ensure_ray

    stale = f"127.0.0.1:{_dead_port()}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(stale)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    calls = []

    class Stop(Exception):
        pass

    def init(**kwargs):
        calls.append(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "init", init)
    with caplog.at_level(logging.INFO, logger="usv_ray.runtime"), pytest.raises(RayStartError):
        ensure_ray(RayConfig(num_cpus=1))
    assert [call["address"] for call in calls] == ["local"]
    hook = calls[0]["runtime_env"]["worker_process_setup_hook"]
    assert hook == "usv_ray.runtime.quiet_local_workers"
    assert calls[0]["runtime_env"]["env_vars"] == {"USV_RAY_VERBOSE": "0"}
    assert f"a Ray recorded at {stale} is not answering" in caplog.text


DEAD = "127.0.0.1:9"  # the discard port: nothing listens on it here


def _dead_port() -> int:
    """A TCP port on loopback that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("source", ["config", "env"])
def test_an_unreachable_address_fails_within_seconds_naming_cause_and_remedy(source, monkeypatch):
    """No ray.init is attempted (the session's Ray, if any, is untouched): the probe fails."""
    import time

    import ray

    from usv_ray.config import RayConfig
    from usv_ray.errors import UsvRayError
    from usv_ray.runtime import RayUnreachableError, ensure_ray

    address = f"127.0.0.1:{_dead_port()}"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    if source == "env":
        monkeypatch.setenv("RAY_ADDRESS", address)
        cfg = RayConfig()
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        cfg = RayConfig(address=address)
    started = time.perf_counter()
    with pytest.raises(RayUnreachableError) as caught:
        ensure_ray(cfg)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert isinstance(caught.value, UsvRayError)
    assert address in message and "connection refused" in message
    assert ("RAY_ADDRESS" if source == "env" else "--address") in message
    assert "ray status --address" in message and "drop --address" in message


def test_probe_names_a_malformed_address():
    from usv_ray.runtime import probe

    assert "host:port" in probe("not-an-address")
    assert probe(f"ray://127.0.0.1:{_dead_port()}").startswith("nothing listens")


def test_address_auto_without_a_running_ray_fails_fast(tmp_path, monkeypatch):
    import ray

    from usv_ray.config import RayConfig
    from usv_ray.runtime import RayUnreachableError, ensure_ray

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where Ray looks for its record
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(
        RayUnreachableError, match="no running Ray cluster found for address 'auto'"
    ):
        ensure_ray(RayConfig(address="auto"))
    (tmp_path / "ray").mkdir()
    stale = f"127.0.0.1:{_dead_port()}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(stale)
    with pytest.raises(RayUnreachableError, match=rf"auto \({stale}\).*connection refused"):
        ensure_ray(RayConfig(address="auto"))


STALE_SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
from usv_ray.config import RayConfig
from usv_ray.runtime import ensure_ray
import ray
started = time.perf_counter()
ensure_ray(RayConfig(num_cpus=1, object_store_mb=80, progress=False))
print("gcs", ray.get_runtime_context().gcs_address, round(time.perf_counter() - started, 1))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_stale_record_of_a_dead_head_does_not_hang_a_local_command(tmp_path):
    """A killed `ray start --head` leaves /tmp/ray/ray_current_cluster behind: a command
    without --address starts its own Ray instead of waiting on the dead GCS. In a
    subprocess with its own RAY_TMPDIR, so neither the session's Ray nor /tmp/ray is
    touched."""
    import os
    import subprocess
    import sys
    import tempfile

    # short: Ray's socket paths under it must fit in AF_UNIX's 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="usvr", dir="/tmp"))
    try:
        (temp / "ray").mkdir()
        stale = f"127.0.0.1:{_dead_port()}"
        (temp / "ray" / "ray_current_cluster").write_text(stale)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env |= {"RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "disabled"}
        done = subprocess.run(
            [sys.executable, "-c", STALE_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,  # the bug: ray.init waits on the dead GCS for minutes
        )
        assert done.returncode == 0, done.stderr[-3000:]
        gcs = done.stdout.split()[1]
        assert gcs != stale
        assert f"a Ray recorded at {stale} is not answering" in done.stderr
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
