"""Build the folder of wheels the GPU machine lacks, small enough for one device call.

The GPU machine (no network) has Python 3.12 with its own PyTorch, torchvision, numpy,
pyarrow, scikit-learn (and SciPy) and pandas, but no Ray, no PyAV and not this project. A
device call carries at most 64 MiB (the tracked tree included), and Ray's wheel alone is 76 MiB, so:

- every version comes from uv.lock (the exact wheels the project is tested with), fetched
  from the lock's URL and checked against the lock's SHA-256 (a local cache keeps CI quick);
- Ray is repacked without what no GPU check uses (Java jars, RLlib, Serve, LLM, the
  dashboard's web client, tests), with a fresh RECORD so pip installs it as any wheel;
- the packages the machine already has are not carried (PROVIDED), nor the few too large to
  carry that only the ingest or the clustering need (LEFT_OUT, with the reason);
- the project goes in as its own wheel, installed with --no-deps there (its torch pin is not
  the machine's torch).

Writes DIR/*.whl and DIR/bundle.json (what is in it, what was left out and why, the
requirements to install) and prints the size. Usage:

    python tools/gpu_bundle.py [--out dist/gpu-bundle] [--python-version 3.12] [--max-mib 60]

``--python-version`` other than 3.12 builds the same bundle for another CPython (the CPU dry
run of tools/gpu_check.sh on a machine whose Python is not 3.12).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent

# The GPU machine's own packages: never carried, and their dependencies not followed (the
# machine has those too). Carrying numpy or torch would also shadow the CUDA build. Pillow
# is torchvision's own dependency, and SciPy scikit-learn's, so each is there with it.
PROVIDED = (
    "torch", "torchvision", "numpy", "pyarrow", "scikit-learn", "scipy", "pandas", "pillow",
)  # fmt: skip

# Not carried, with the reason: each is larger than what is left of the 64 MiB after Ray,
# and no GPU check needs it. tools/gpu_check.sh reports whether the machine has them anyway.
LEFT_OUT = {
    "av": "PyAV (~40 MiB): only ingest and the synthetic archive decode video",
    "opencv-python-headless": "OpenCV (~50 MiB): ingest's de-identification; the 3D-CNN and "
    "re-ID clip resizing uses it where the machine's image has it",
    "numba": "numba + llvmlite (~45 MiB): only the clustering's threshold loops",
    "matplotlib": "matplotlib (~9 MiB + deps): only the report's plots",
    "pydicom": "pydicom (~2.4 MiB): only ingest reads DICOM",
    "pylibjpeg": "pylibjpeg and its plugins: only ingest decodes compressed DICOM",
    "pylibjpeg-libjpeg": "libjpeg for pylibjpeg: only ingest decodes compressed DICOM",
    "pylibjpeg-openjpeg": "openjpeg for pylibjpeg: only ingest decodes compressed DICOM",
    "pyjpegls": "CharLS: only ingest decodes JPEG-LS DICOM",
    "highdicom": "highdicom: only the export writes DICOM SR, on the CPU",
    "fhir.resources": "fhir.resources: only the export writes FHIR, on the CPU",
}

# Ray's extras the project uses (ray[default] is the dashboard and metrics agents: not needed)
RAY_EXTRAS = ("data", "train", "tune")
# what the checks run with besides the project's dependencies
EXTRA_ROOTS = ("pytest",)

# Parts of Ray's wheel no GPU check imports (prefixes of paths inside the wheel)
RAY_DROP = (
    "ray/jars/",  # Java workers
    "ray/rllib/",
    "ray/serve/",
    "ray/llm/",
    "ray/dashboard/client/",  # the dashboard's web client (the checks run without one)
    "ray/tests/",
    "ray/cpp/",
)
RAY_DROP_SUFFIXES = (".js.map",)

CACHE = Path(os.environ.get("USV_RAY_WHEEL_CACHE", Path.home() / ".cache" / "usv_ray" / "wheels"))


@dataclass(frozen=True)
class Package:
    """One locked package: name, version, its wheels, and its dependency entries."""

    name: str
    version: str
    wheels: tuple[dict, ...]
    deps: tuple[dict, ...]
    extras: dict


def load_lock(path: Path) -> dict[tuple[str, str], Package]:
    """uv.lock's packages keyed by (canonical name, version)."""
    lock = tomllib.loads(path.read_text())
    packages = {}
    for entry in lock["package"]:
        name = canonicalize_name(entry["name"])
        packages[name, entry["version"]] = Package(
            name,
            entry["version"],
            tuple(entry.get("wheels", ())),
            tuple(entry.get("dependencies", ())),
            entry.get("optional-dependencies", {}),
        )
    return packages


def marker_env(python_version: str) -> dict[str, str]:
    """The marker environment of CPython ``python_version`` on Linux x86-64."""
    major, minor = python_version.split(".")[:2]
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{major}.{minor}.0",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{major}.{minor}.0",
        "python_version": f"{major}.{minor}",
        "sys_platform": "linux",
        "extra": "",
    }


def closure(
    packages: dict[tuple[str, str], Package], roots: list[dict], env: dict[str, str]
) -> list[Package]:
    """The locked packages ``roots`` need under ``env``, not following PROVIDED or LEFT_OUT."""
    by_name: dict[str, list[Package]] = {}
    for pkg in packages.values():
        by_name.setdefault(pkg.name, []).append(pkg)
    skip = {canonicalize_name(n) for n in (*PROVIDED, *LEFT_OUT)}
    seen: dict[str, Package] = {}
    todo = list(roots)
    while todo:
        dep = todo.pop()
        name = canonicalize_name(dep["name"])
        if name in skip or ("marker" in dep and not Marker(dep["marker"]).evaluate(env)):
            continue
        candidates = by_name[name]
        if "version" in dep:
            candidates = [p for p in candidates if p.version == dep["version"]]
        if len(candidates) != 1:
            sys.exit(f"gpu_bundle: {name}: {len(candidates)} locked versions match {dep}")
        pkg = candidates[0]
        extras = dep.get("extra", [])
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen[key] = pkg
        todo.extend(pkg.deps)
        for extra in extras:
            todo.extend(pkg.extras.get(extra, ()))
    unique = {pkg.name: pkg for pkg in seen.values()}
    return sorted(unique.values(), key=lambda p: p.name)


def target_tags(python_version: str) -> list[Tag]:
    """Wheel tags CPython ``python_version`` accepts on manylinux2014 (glibc 2.17) x86-64,
    most specific first."""
    major, minor = (int(x) for x in python_version.split(".")[:2])
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)][::-1]
    platforms += [
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
        "linux_x86_64",
    ]
    platforms = [p for p in platforms if p != "linux_x86_64"]
    tags = list(cpython_tags((major, minor), platforms=platforms))
    tags += list(compatible_tags((major, minor), "cp" + f"{major}{minor}", platforms=platforms))
    return tags


def pick_wheel(pkg: Package, tags: list[Tag]) -> dict:
    """The lock's wheel of ``pkg`` the target accepts, most specific tag first."""
    rank = {tag: i for i, tag in enumerate(tags)}
    best = None
    for wheel in pkg.wheels:
        filename = wheel["url"].rsplit("/", 1)[1]
        wheel_tags = parse_wheel_filename(filename)[3]
        score = min((rank[t] for t in wheel_tags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, wheel)
    if best is None:
        sys.exit(f"gpu_bundle: no locked wheel of {pkg.name} {pkg.version} fits {tags[0]}")
    return best[1]


def fetch(wheel: dict) -> Path:
    """The wheel from the cache, else from its URL; either way checked against the lock's hash."""
    filename = wheel["url"].rsplit("/", 1)[1]
    algo, digest = wheel["hash"].split(":", 1)
    cached = CACHE / digest[:2] / digest / filename
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(wheel["url"], timeout=120) as response:
            data = response.read()
        if hashlib.new(algo, data).hexdigest() != digest:
            sys.exit(f"gpu_bundle: {filename}: hash does not match uv.lock")
        partial = cached.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(cached)
    return cached


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def slim_ray(source: Path, target: Path) -> dict[str, int]:
    """Ray's wheel without RAY_DROP, recompressed, with a RECORD that lists what is left.

    Returns the bytes (uncompressed) dropped per prefix.
    """
    dropped: dict[str, int] = {}
    rows = []
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        # the wheel's own RECORD (the vendored packages under ray/ have theirs too)
        (record_name,) = [
            n for n in src.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")
        ]
        for info in src.infolist():
            name = info.filename
            prefix = next((p for p in RAY_DROP if name.startswith(p)), None)
            if prefix is None and name.endswith(RAY_DROP_SUFFIXES):
                prefix = "*" + next(s for s in RAY_DROP_SUFFIXES if name.endswith(s))
            if prefix is not None:
                dropped[prefix] = dropped.get(prefix, 0) + info.file_size
                continue
            if name == record_name:
                continue
            data = src.read(info)
            entry = zipfile.ZipInfo(name, date_time=info.date_time)
            entry.external_attr = info.external_attr  # keeps the binaries executable
            entry.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(entry, data, compresslevel=6)  # 9: 8x the time, 1% smaller
            rows.append((name, _record_hash(data), str(len(data))))
        rows.append((record_name, "", ""))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        entry = zipfile.ZipInfo(record_name, date_time=(2026, 1, 1, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        out.writestr(entry, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return dropped


def build_project(out: Path) -> Path:
    """The project as a wheel (its sources only; installed with --no-deps there)."""
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    with_uv = Path(uv).exists()
    command = (
        [uv, "build", "--wheel", "--out-dir", str(out), str(ROOT)]
        if with_uv
        else [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)]
    )
    subprocess.run(command, check=True, capture_output=True)
    (wheel,) = out.glob("usv_ray-*.whl")
    return wheel


def build(out: Path, python_version: str) -> dict:
    """Fill ``out`` with the bundle and return its manifest."""
    packages = load_lock(ROOT / "uv.lock")
    env = marker_env(python_version)
    (project,) = [p for p in packages.values() if p.name == "usv-ray"]
    roots = [
        {**d, "extra": list(RAY_EXTRAS)} if canonicalize_name(d["name"]) == "ray" else d
        for d in project.deps
    ]
    roots += [{"name": name} for name in EXTRA_ROOTS]
    needed = closure(packages, roots, env)
    tags = target_tags(python_version)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels, ray_dropped = [], {}
    for pkg in needed:
        source = fetch(pick_wheel(pkg, tags))
        target = out / source.name
        if pkg.name == "ray":
            ray_dropped = slim_ray(source, target)
        else:
            shutil.copyfile(source, target)
        wheels.append({"name": pkg.name, "version": pkg.version, "file": target.name})
    project_wheel = build_project(out)
    wheels.append({"name": "usv-ray", "version": project.version, "file": project_wheel.name})

    ray_requirement = f"ray[{','.join(RAY_EXTRAS)}]=={_version(needed, 'ray')}"
    # what pip is asked for there: Ray with its extras, and the project's own dependencies the
    # bundle carries, each pinned (torch and the rest come from the machine)
    direct = {canonicalize_name(d["name"]) for d in roots}
    requirements = [ray_requirement] + [
        f"{p.name}=={p.version}" for p in needed if p.name in direct and p.name != "ray"
    ]
    manifest = {
        "python_version": python_version,
        "commit": _commit(),
        "wheels": wheels,
        "requirements": requirements,
        "provided": list(PROVIDED),
        "left_out": LEFT_OUT,
        "ray_dropped_bytes": ray_dropped,
        "bytes": sum((out / w["file"]).stat().st_size for w in wheels),
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _commit() -> str:
    """The commit the bundle is built from (the GPU machine's copy of the tree has no .git),
    with "+dirty" when the tree has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _version(needed: list[Package], name: str) -> str:
    return next(p.version for p in needed if p.name == name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "gpu-bundle")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument(
        "--max-mib", type=float, default=60.0, help="fail above this (the call carries 64 MiB)"
    )
    args = parser.parse_args(argv)
    manifest = build(args.out, args.python_version)
    mib = manifest["bytes"] / 2**20
    for wheel in manifest["wheels"]:
        size = (args.out / wheel["file"]).stat().st_size / 2**20
        print(f"{size:7.2f} MiB  {wheel['file']}")
    print(f"gpu bundle: {len(manifest['wheels'])} wheels, {mib:.1f} MiB in {args.out}")
    for name, why in LEFT_OUT.items():
        print(f"  left out: {name}: {why}")
    if mib > args.max_mib:
        print(f"gpu bundle: {mib:.1f} MiB is over {args.max_mib} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
