"""cluster.yaml: valid for Ray's cluster launcher (its own schema and checks, offline), and
shaped as the README's operations section says: a CPU head, GPU workers from zero, every
node on the locked environment."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def lock() -> dict:
    return tomllib.loads((REPO / "uv.lock").read_text())


def _locked_version(lock: dict, name: str) -> str:
    return next(p["version"] for p in lock["package"] if p["name"] == name)


def test_ray_validates_the_config_without_contacting_a_cloud(cluster):
    """What `ray up` runs before it calls AWS: defaults merged in, then the launcher's JSON
    schema (unknown keys rejected) and its cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_ray_rejects_a_broken_config(cluster):
    """The validation above is not vacuous: a typo in a key fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["max_worker"] = 8  # missing "s"
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(broken))


def test_head_has_no_gpu_and_gpu_workers_autoscale_from_zero(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU") == 0  # explicit: training never lands on the head
    family = head["node_config"]["InstanceType"].split(".")[0]
    assert not family.startswith(("g", "p")), family  # AWS's GPU instance families
    gpu_workers = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "a GPU worker type"
    for node_type in gpu_workers.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"]
        assert node_type["max_workers"] <= cluster["max_workers"]
    for node_type in types.values():  # Ray's resources are whole units here
        assert all(isinstance(v, int) for v in node_type["resources"].values())


def test_every_node_installs_the_project_from_its_lock_file(cluster):
    """The project is copied to every node and installed from uv.lock as committed
    (--frozen), with the project's own pinned uv, into the environment Ray starts from."""
    (project_dir,) = [r for r, local in cluster["file_mounts"].items() if local == "."]
    assert {".gitignore", ".rayignore"} <= set(cluster["rsync_filter"])
    setup = "\n".join(cluster["setup_commands"])
    assert f"{project_dir}/tools/bootstrap_uv.py" in setup
    sync = next(c for c in cluster["setup_commands"] if "uv sync" in c)
    assert f"cd {project_dir}" in sync and "--frozen" in sync
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", sync).group(1)
    for start in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = "\n".join(cluster[start])
        assert f"PATH={venv}/bin:" in commands  # workers and job drivers: the locked Python
        assert f"{venv}/bin/ray stop" in commands
    assert "--dashboard-host=127.0.0.1" in "\n".join(cluster["head_start_ray_commands"])


def test_the_image_matches_the_locked_ray_and_python(cluster, lock):
    image = cluster["docker"]["image"]
    ray_version = _locked_version(lock, "ray")
    assert image == f"rayproject/ray:{ray_version}-py311-gpu"
    assert lock["requires-python"].startswith(">=3.11")
    assert "/data:/data" in " ".join(cluster["docker"]["run_options"])


def test_the_lock_has_what_ray_job_submit_needs_on_the_head(lock):
    """`ray job submit` talks to the dashboard's job server, which Ray starts only when
    ray[default] is installed: the locked environment the head runs must have it."""
    project = next(p for p in lock["package"] if p["name"] == "usv-ray")
    ray_dep = next(d for d in project["dependencies"] if d["name"] == "ray")
    assert "default" in ray_dep.get("extra", []), (
        "pyproject.toml: ray[data,train,tune] lacks the 'default' extra; without it the "
        "head has no job server and `ray job submit` fails"
    )


def test_token_authentication_is_on_for_every_node(cluster):
    """Ray 2.60 turns token auth on by default only for a local ray.init: a launched
    cluster gets it from RAY_AUTH_MODE=token on every node, with the token file that
    `ray up` copies from the operator's machine (never from the repository)."""
    mounts = {remote: local for remote, local in cluster["file_mounts"].items()}
    for start in ("head_start_ray_commands", "worker_start_ray_commands"):
        command = next(c for c in cluster[start] if "ray start" in c)
        assert "export RAY_AUTH_MODE=token" in command
        # exported before `ray start` in the same shell: the node's processes inherit it
        assert command.index("RAY_AUTH_MODE=token") < command.index("ray start")
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);", command).group(1)
        assert mounts[token_path] == "~/.ray/auth_token"  # where `ray get-auth-token` writes
    assert not Path(mounts[token_path]).expanduser().is_relative_to(REPO)


def test_operations_doc_says_how_a_submitter_gets_the_token():
    doc = (REPO / "docs" / "operations.md").read_text()
    for needed in (
        "ray get-auth-token --generate",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH",
        "ray dashboard cluster.yaml",
    ):
        assert needed in doc, needed
    cron = [line for line in doc.splitlines() if re.match(r"^[\d*]+ [\d*]+ [\d*]+ [\d*]+ ", line)]
    assert cron and all("RAY_AUTH_MODE=token" in line for line in cron)
    night = next(line for line in cron if "jobs/index_archive.py" in line)
    # the night: ingest with the detector, predict, then the index (tau from the re-ID bundle)
    jobs = ["jobs/ingest.py", "jobs/predict.py", "jobs/index_archive.py"]
    assert [night.index(job) for job in jobs] == sorted(night.index(job) for job in jobs)
    assert "ingest.detector=/data/usv/detect/bundle" in night
    assert "--model /data/usv/reid/bundle --diagnoses /data/usv/predict" in night
