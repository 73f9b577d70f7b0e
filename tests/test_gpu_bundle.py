"""The GPU check's preparation, on the CPU: ``make gpu-bundle`` builds a bundle that fits one
device call and installs there, and ``tools/gpu_check.sh --dry-run`` runs end to end.

Both fetch wheels from PyPI the first time (uv.lock's URLs; a cache keeps them after) and
are slow: about 2.3 minutes together on 2 busy cores with a warm cache, most of it the dry
run (whose Ray smoke test starts Ray and runs a task; the Train fit runs on the GPU machine).
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import gpu_bundle  # noqa: E402  # tools/ is no package

CALL_MIB = 64  # what one device call carries: the tracked tree and the bundle together


def _tracked_bytes() -> int:
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.split(b"\0")
    return sum(
        (ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file()
    )


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel of ``name`` ``version``: stands for a package the GPU machine has."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        wheel.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture(scope="module")
def bundle_312(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bundle") / "bundle"
    assert gpu_bundle.main(["--out", str(out)]) == 0
    return out, json.loads((out / "bundle.json").read_text())


@pytest.mark.slow
def test_the_bundle_fits_one_call_and_every_wheel_is_for_cpython_3_12(bundle_312):
    out, manifest = bundle_312
    wheels = sorted(out.glob("*.whl"))
    assert sorted(w["file"] for w in manifest["wheels"]) == sorted(w.name for w in wheels)
    size = sum(w.stat().st_size for w in wheels)
    assert size == manifest["bytes"]
    assert size + _tracked_bytes() < CALL_MIB * 2**20, f"{size / 2**20:.1f} MiB of wheels"
    accepted = set(gpu_bundle.target_tags("3.12"))
    for wheel in wheels:
        assert parse_wheel_filename(wheel.name)[3] & accepted, wheel.name
    names = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    assert {"ray", "usv-ray", "pytest", "pyyaml", "pydantic"} <= names
    # the machine's own packages are not carried (a second numpy or torch would shadow its)
    assert not names & {
        canonicalize_name(n) for n in (*gpu_bundle.PROVIDED, "av", "opencv-python-headless")
    }


@pytest.mark.slow
def test_the_slim_ray_wheel_lists_exactly_its_files(bundle_312):
    out, _ = bundle_312
    (ray,) = out.glob("ray-*.whl")
    with zipfile.ZipFile(ray) as wheel:
        names = set(wheel.namelist())
        (record,) = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        rows = [line.split(",") for line in wheel.read(record).decode().splitlines()]
        assert {row[0] for row in rows} == names
        for name, digest, size in rows:
            if name != record and name.endswith(("_raylet.so", "__init__.py")):
                data = wheel.read(name)
                assert (digest, size) == (gpu_bundle._record_hash(data), str(len(data))), name
    assert not [n for n in names if n.startswith(gpu_bundle.RAY_DROP)]
    assert "ray/core/src/ray/raylet/raylet" in names and "ray/train/torch/__init__.py" in names


@pytest.mark.slow
def test_the_bundle_resolves_offline_for_the_gpu_machine(bundle_312, tmp_path):
    """A resolver (uv's), for CPython 3.12 on manylinux x86-64 and offline, finds everything
    the requirements need in the bundle or among the machine's own packages (stand-ins)."""
    out, manifest = bundle_312
    machine = tmp_path / "machine"
    machine.mkdir()
    lock = gpu_bundle.load_lock(ROOT / "uv.lock")
    for name in gpu_bundle.PROVIDED:  # the lock's newest version of each, for Python 3.12
        versions = [v for (n, v) in lock if n == canonicalize_name(name)]
        _stub_wheel(machine, name, max(versions, key=lambda v: tuple(map(int, v.split(".")[:3]))))
    result = subprocess.run(
        [_uv(), "pip", "install", "--dry-run", "--no-index", "--find-links", str(out),
         "--find-links", str(machine), "--python-version", "3.12",
         "--python-platform", "x86_64-manylinux_2_28", "--target", str(tmp_path / "target"),
         *manifest["requirements"]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {line.split()[1].split("==")[0] for line in result.stderr.splitlines()
               if line.startswith(" + ")}  # fmt: skip
    assert {"ray", "pydantic", "pyyaml", "pytest", "numpy"} <= planned, result.stderr


def _uv() -> str:
    """The project's uv (make install puts it in .tools), else one on the PATH."""
    local = ROOT / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else (shutil.which("uv") or pytest.skip("no uv"))


# what the GPU machine's image lacks besides what the bundle carries
NOT_ON_THE_MACHINE = {"av", "pydicom"}


def _machine_image(folder: Path, carried: set[str]) -> Path:
    """This environment's packages less the bundle's and NOT_ON_THE_MACHINE: what the GPU
    machine's image has (its PyTorch, numpy, OpenCV, numba, ...), as links in ``folder``."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if canonicalize_name(dist.metadata["Name"]) in carried | NOT_ON_THE_MACHINE:
            continue
        tops = {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            if not top.endswith(".pth") and (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


@pytest.mark.slow
def test_the_gpu_check_dry_run_installs_the_bundle_and_runs_every_step(tmp_path):
    """On this CPU and its Python: the bundle for this Python, a venv that sees only the
    stand-in of the machine's image and the bundle, the gpu tests (which skip), the
    benchmarks' GPU sections (which say "no CUDA"), and one report."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = tmp_path / "bundle"
    assert gpu_bundle.main(["--out", str(bundle), "--python-version", version]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    carried = {canonicalize_name(w["name"]) for w in manifest["wheels"]}
    image = _machine_image(tmp_path / "image", carried)
    out = tmp_path / "out"
    base = getattr(sys, "_base_executable", sys.executable)  # not this venv's: its ray is here
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(
        [str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--bundle", str(bundle),
         "--python", base, "--base-site", str(image), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    report = (out / "gpu_check.md").read_text()
    log = (out / "gpu_check.log").read_text()
    assert result.returncode == 0, report + log[-4000:]
    assert "**Result: passed**" in report
    assert "| device | no CUDA |" in report
    # the project runs from the tree (python puts the current folder first), its wheel is in
    assert "ray 2.60.0 (bundle)" in report and "usv_ray 0.1.0 (source tree)" in report
    assert "Ray smoke test | a task ran (dry run: no Train fit)" in report
    assert "torch" in report and "(machine)" in report
    tests = [line for line in report.splitlines() if line.startswith("| test_")]
    assert len(tests) >= 8 and all("| skipped |" in line for line in tests), tests
    assert report.count("no CUDA: the GPU section") == 2  # classify and reid
    assert "embedding on 1 GPU, Ray Data / bare loop: no CUDA" in report
