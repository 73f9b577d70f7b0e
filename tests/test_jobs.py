"""jobs/*.py as `ray job submit` runs them: what `--working-dir .` uploads, and one real
job submitted to a Ray head of its own (not the test session's Ray)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's bin: ray, and the jobs' `python`


@pytest.mark.parametrize(
    ("job", "flags"),
    [
        ("ingest.py", ("--manifest", "--out", "--config", "--set")),
        ("train_classifier.py", ("--data", "--out", "--config", "--set")),
        ("train_reid.py", ("--data", "--out", "--config", "--set")),
        ("train_detector.py", ("--data", "--out", "--config", "--set")),
        ("pretrain.py", ("--data", "--out", "--config", "--set")),
        ("predict.py", ("--model", "--data", "--out", "--config", "--set")),
        ("index_archive.py", ("--model", "--data", "--diagnoses", "--out", "--config")),
    ],
)
def test_job_entry_point_takes_its_stage_arguments(job, flags):
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / job), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert all(flag in done.stdout for flag in flags), done.stdout


def _uploaded(working_dir: Path, zip_path: Path) -> set[str]:
    """The files `ray job submit --working-dir working_dir` uploads, packed by Ray's own
    code with the same defaults (.gitignore and .rayignore honoured, Ray's default
    excludes)."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    create_package(
        str(working_dir),
        zip_path,
        include_gitignore=True,
        excludes=get_runtime_env_default_excludes(),
    )
    with zipfile.ZipFile(zip_path) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_working_dir_upload_is_the_code_only(tmp_path):
    uploaded = _uploaded(REPO, tmp_path / "repo.zip")
    for needed in ("jobs/ingest.py", "usv_ray/cli.py", "usv_ray/configs/demo.yaml", "uv.lock"):
        assert needed in uploaded
    for kept_out in (".venv/", ".tools/", ".git/", "runs/", ".pytest_cache/"):
        assert not any(name.startswith(kept_out) for name in uploaded), kept_out
    assert not any("__pycache__" in name for name in uploaded)


def test_rayignore_keeps_patient_media_tables_models_and_keys_out(tmp_path):
    """Data dropped into the working directory by mistake is not shipped to the cluster."""
    tree = tmp_path / "tree"
    for name in (".rayignore", ".gitignore"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((REPO / name).read_bytes())
    code = ["jobs/ingest.py", "usv_ray/cli.py", "usv_ray/configs/demo.yaml"]
    data = [
        "data/archive/manifest.csv",
        "data/archive/videos/v1.mp4",
        "data/archive/videos/v2.dcm",
        "data/usv/videos.parquet",
        "data/usv/frames/v1.parquet",
        "out/classify/models/cnn.pt",
        "out/reid/checkpoint.ckpt",
        "secrets/usv_ray.key",
        "runs/demo/report.html",
    ]
    for name in code + data:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    uploaded = _uploaded(tree, tmp_path / "tree.zip")
    assert set(code) <= uploaded
    assert not uploaded & set(data), sorted(uploaded & set(data))


# --- one real job on a Ray head started for the test --------------------------------------


@dataclass
class RayHead:
    """A Ray head started with `ray start --head` in a process session of its own."""

    address: str  # http://127.0.0.1:PORT: the dashboard's job server
    temp_dir: Path
    env: dict[str, str]
    sessions: set[int] = field(default_factory=set)  # the sessions its processes run in


def _free_ports(n: int) -> list[int]:
    """n distinct loopback ports free now (bound and released together, so all differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process that is not a zombie (Linux /proc)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
        state, ppid, _, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if state not in ("Z", "X"):
            table[int(entry.name)] = (int(ppid), int(session))
    return table


def _head_processes(head: RayHead) -> dict[int, int]:
    """pid -> session of every live process of ``head``: those in its sessions, those whose
    command line names its temp dir, and all their descendants (the job driver, which Ray
    starts in a new session)."""
    table = _live_processes()
    members = {pid for pid, (_, session) in table.items() if session in head.sessions}
    for pid in table:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(head.temp_dir).encode() in cmdline:
            members.add(pid)
    children = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    stack = list(members)
    while stack:
        for child in children[stack.pop()]:
            if child not in members:
                members.add(child)
                stack.append(child)
    members.discard(os.getpid())
    return {pid: table[pid][1] for pid in members}


def _stop_head(head: RayHead, timeout_s: float = 60.0) -> None:
    """Kill every process of ``head`` and nothing else (`ray stop` would stop every Ray on
    the machine, the test session's included)."""
    deadline = time.monotonic() + timeout_s
    while processes := _head_processes(head):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray head processes survived SIGKILL: {sorted(processes)}")
        # a process found through its parent (the job driver) may lead a session of its
        # own: follow that session too, in case its parent dies first
        head.sessions |= set(processes.values())
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _wait_for_job_server(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job server at {address} after {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    """A 2-CPU Ray head on loopback with its own temp dir and ports, stopped afterwards
    (also when the test fails): only its own processes are killed."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            "`ray job submit` needs the dashboard's job server on the head, which needs "
            f"ray[default] in the environment (pyproject.toml): {exc}"
        )
    # short path: Ray's Unix sockets live under it (108-byte limit)
    temp_dir = Path(tempfile.mkdtemp(prefix="usvjob-", dir="/tmp"))
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")  # the job server to use is named below
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the jobs' `python`: this env's
    # no token: it listens on loopback only (cluster.yaml keeps its dashboard on loopback too)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    gcs, dashboard, agent_http, agent_grpc, runtime_env_agent, metrics, *more = _free_ports(9)
    node_manager, object_manager, client_server = more
    command = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=0",
        f"--object-store-memory={128 * 2**20}", "--disable-usage-stats",
        # the job server is part of the dashboard: the one piece `ray job submit` needs
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--ray-client-server-port={client_server}", "--include-log-monitor=false",
    ]  # fmt: skip
    head = RayHead(address=f"http://127.0.0.1:{dashboard}", temp_dir=temp_dir, env=env)
    # a new session: every process of the head inherits it (the test session's Ray does not)
    starter = subprocess.Popen(
        command,
        env=env,
        cwd=temp_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    head.sessions.add(starter.pid)
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, output
        _wait_for_job_server(head.address, timeout_s=120)
        yield head
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _ray(head: RayHead, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=head.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_ingest_job_runs_on_a_cluster_through_ray_job_submit(ray_head, tmp_path):
    """`ray job submit --working-dir . -- python jobs/ingest.py ...` on a local head: the
    job succeeds, writes its tables where it was told, and its logs and outputs hold no
    patient ID; then the head is stopped and none of its processes is left."""
    import csv

    from usv_ray.config import SynthConfig
    from usv_ray.synth import write_archive

    archive = tmp_path / "archive"
    synth = SynthConfig(
        patients=2, seed=3, width=96, height=72, min_frames=4, max_frames=6, max_nodules=1,
        max_studies=1, max_videos_per_study=1, workers=1,
    )  # fmt: skip
    manifest = write_archive(synth, archive)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = tmp_path / "usv"
    overrides = (
        "privacy.dev_key=true", "ray.progress=false", "ingest.workers=1",
        "ingest.frame_size=32", "ingest.patch_height=32", "ingest.patch_width=16",
    )  # fmt: skip
    job_id = f"usv-ingest-{os.getpid()}-{time.time_ns()}"
    submitted = _ray(
        ray_head,
        "job", "submit", "--address", ray_head.address, "--submission-id", job_id,
        "--working-dir", ".", "--",
        "python", "jobs/ingest.py", "--config", "demo", "--manifest", str(manifest),
        "--out", str(out), *(arg for o in overrides for arg in ("--set", o)),
        timeout_s=300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    # the job server's REST API (what `ray job status` / `ray job logs` print)
    info = _get_json(f"{ray_head.address}/api/jobs/{job_id}")
    assert info["status"] == "SUCCEEDED", info
    logs = _get_json(f"{ray_head.address}/api/jobs/{job_id}/logs")["logs"]
    assert f"{len(rows)} ok and 0 failed; this run decoded {len(rows)}," in logs, logs

    # what the job wrote, where it was told to
    videos = pq.read_table(out / "videos.parquet").to_pylist()
    assert len(videos) == len(rows) and {v["status"] for v in videos} == {"ok"}
    for video in videos:
        shard = out / "frames" / f"{video['video_id']}.parquet"
        assert pq.read_metadata(shard).num_rows > 0
    assert pq.read_table(out / "errors.parquet").num_rows == 0
    # it ran from the uploaded working dir, not from this checkout
    uploaded = list(ray_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/*/"))
    assert any((u / "jobs" / "ingest.py").is_file() for u in uploaded), uploaded
    assert not any((u / ".venv").exists() or (u / ".git").exists() for u in uploaded)

    # no raw patient ID in the job's logs, output names or tables
    raw_ids = {r["patient_id"] for r in rows if r["patient_id"]}
    assert raw_ids, "the manifest should name patients"
    assert not any(i in logs + submitted.stdout for i in raw_ids)
    for path in out.rglob("*.parquet"):
        assert not any(i in str(path) for i in raw_ids), path
        table = pq.read_table(path)
        pixels = [c for c in ("image", "clip") if c in table.column_names]
        text = str(table.drop_columns(pixels).to_pylist())
        assert not any(i in text for i in raw_ids), path

    _stop_head(ray_head)
    assert not _head_processes(ray_head)
