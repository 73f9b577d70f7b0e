"""Fetch the pinned uv binary from PyPI into .tools/bin with nothing but python3.

A fresh machine may have python3 without pip or venv; this script needs neither. The wheel
is checked against the SHA-256 digest PyPI publishes for it.
"""

import hashlib
import io
import json
import platform
import stat
import sys
import urllib.request
import zipfile
from pathlib import Path

UV_VERSION = "0.13.9"


def wheel_tags() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform.startswith("linux"):
        return "manylinux", arch
    if sys.platform == "darwin":
        return "macosx", "arm64" if arch == "aarch64" else arch
    sys.exit(f"bootstrap_uv: no uv wheel for {sys.platform}/{machine}; install uv by hand")


def main(target: str) -> None:
    binary = Path(target) / "bin" / "uv"
    if binary.exists():
        return
    # PyPI's simple index in its JSON form (PEP 691)
    request = urllib.request.Request(
        "https://pypi.org/simple/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    system, arch = wheel_tags()
    wheels = [
        f
        for f in files
        if f["filename"].startswith(f"uv-{UV_VERSION}-")
        and f["filename"].endswith(".whl")
        and system in f["filename"]
        and arch in f["filename"]
    ]
    if not wheels:
        sys.exit(f"bootstrap_uv: no uv {UV_VERSION} wheel for {system}/{arch}")
    wheel = wheels[0]
    print(f"bootstrap_uv: downloading {wheel['filename']}")
    with urllib.request.urlopen(wheel["url"], timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
        sys.exit("bootstrap_uv: checksum mismatch; not installing")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(n for n in archive.namelist() if n.endswith("/scripts/uv"))
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_bytes(archive.read(member))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".tools")
