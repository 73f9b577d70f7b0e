"""Model bundles: a trained model made a product that travels without its training folder.

A bundle is a folder holding ``bundle.json`` and the weights files it names. Training
stages write one at their end (``classify/bundle``: the diagnosis models; ``reid/bundle``:
the re-ID models and their clustering threshold); the night's stages (``usv-ray
predict``, ``usv-ray index``) read one, on this machine or wherever it was copied. Its
metadata says what it is and what its inputs must be:

- ``format``: the layout of this file (:data:`BUNDLE_FORMAT`); an unknown one is refused;
- ``kind`` (``diagnosis`` or ``reid``), ``version`` (the kind and a hash of every weights
  file and of the metadata that changes what the bundle outputs), ``usv_ray`` (the package
  version that wrote it), ``created_at``;
- ``files``: each weights file with its size and SHA-256, checked when the bundle loads, so
  a missing or damaged file is an error that names it, never a silent wrong answer;
- ``ingest``: the ingest settings the inputs must have been made with, compared with the
  data folder's own record (:data:`INGEST_RECORD`, written by ingest) before any video is
  read.

Everything else (the config, the fingerprints of the settings and data it was trained
on, its cross-validated metrics, its calibrator) is the stage's own. Files are hard links
to the training run's model files where the file system allows, else copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usv_ray.errors import UsvRayError

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
BUNDLE_DIR = "bundle"  # a training stage's bundle, under its --out
INGEST_RECORD = "ingest.json"  # in an ingest folder: the settings its frames were made with
# the ingest settings that decide what a model reads: a folder is made with one value of
# each, and a bundle names those its inputs need
INGEST_CONTENT = (
    "sampling",
    "n_frames",
    "frame_size",
    "crop_box",
    "trim_fov",
    "fov_threshold",
    "tracklet_frames",
    "patch_height",
    "patch_width",
)


class BundleError(UsvRayError, ValueError):
    """A bundle that cannot be used: not found, of an unknown format or kind, a weights
    file missing or damaged, or data made with other ingest settings."""


def package_version() -> str:
    """The installed usv_ray version (``unknown`` when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("usv_ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def now_utc() -> str:
    """The current time, UTC, to the second, ISO 8601 (``2026-12-04T21:07:00+00:00``)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _place(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no copy of hundreds of MB), else a copy."""
    from usv_ray.io import atomic_path

    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, tmp)


def write_bundle(
    folder: str | Path,
    kind: str,
    files: Mapping[str, Path],
    meta: Mapping[str, Any],
    versioned: Iterable[str] = (),
) -> dict[str, Any]:
    """Write the bundle ``folder``: the weights ``files`` (bundle name -> file) and
    ``bundle.json`` with ``meta``; returns the record written.

    The version hashes every file and the ``versioned`` keys of ``meta`` (what changes the
    bundle's outputs besides its weights, e.g. a calibrator). Files of an earlier bundle in
    the folder that this one does not name are removed.
    """
    from usv_ray.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed = {}
    for name, source in sorted(files.items()):
        _place(Path(source), folder / name)
        listed[name] = {"bytes": (folder / name).stat().st_size, "sha256": file_digest(source)}
    digest = hashlib.sha256(json.dumps(listed, sort_keys=True).encode())
    digest.update(json.dumps({k: meta[k] for k in sorted(versioned)}, sort_keys=True).encode())
    record = {
        **meta,
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "version": f"{kind}-{digest.hexdigest()[:12]}",
        "usv_ray": package_version(),
        "created_at": meta.get("created_at", now_utc()),
        "files": listed,
    }
    for stale in folder.iterdir():
        if stale.name not in listed and stale.name != BUNDLE_FILE and stale.is_file():
            stale.unlink()
    write_json(record, folder / BUNDLE_FILE)
    return record


def bundle_folder(path: str | Path) -> Path:
    """The bundle at ``path``: a bundle folder, or a stage's output folder holding one in
    ``bundle/``."""
    path = Path(path)
    if (path / BUNDLE_FILE).is_file():
        return path
    if (path / BUNDLE_DIR / BUNDLE_FILE).is_file():
        return path / BUNDLE_DIR
    raise BundleError(
        f"no model bundle at {path}: give a bundle folder (it holds {BUNDLE_FILE}) or the "
        f"--out folder of the training stage that wrote one under {BUNDLE_DIR}/"
    )


def read_bundle(path: str | Path, kind: str, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """``(folder, record)`` of the bundle at ``path`` (see :func:`bundle_folder`).

    Checks its format and kind and that every weights file is there, with its size and
    (``verify``) its SHA-256.

    Raises:
        BundleError: naming what is wrong.
    """
    folder = bundle_folder(path)
    try:
        record = json.loads((folder / BUNDLE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder / BUNDLE_FILE} is not readable: {exc}") from exc
    found = record.get("format")
    if found != BUNDLE_FORMAT:
        raise BundleError(
            f"{folder} is a bundle of format {found!r}, written by usv_ray "
            f"{record.get('usv_ray', '?')}; this usv_ray ({package_version()}) reads format "
            f"{BUNDLE_FORMAT}: use the usv_ray version that wrote it, or train again"
        )
    if record.get("kind") != kind:
        raise BundleError(f"{folder} holds a {record.get('kind')!r} bundle, not a {kind!r} one")
    files = record.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"bytes", "sha256"} <= v.keys() for v in files.values()
    ):
        raise BundleError(f"{folder / BUNDLE_FILE} lists no weights files: it is damaged")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder}: the weights file {name} is missing")
        if path.stat().st_size != expected["bytes"] or (
            verify and file_digest(path) != expected["sha256"]
        ):
            raise BundleError(
                f"{folder}: the weights file {name} is not the one the bundle was written "
                "with (size or SHA-256 differ): copy the whole bundle folder again"
            )
    return folder, record


# ---------------------------------------------------------------------------- ingest record


def ingest_settings(cfg: Any) -> dict[str, Any]:
    """The :data:`INGEST_CONTENT` settings of an ``IngestConfig``, as plain JSON values."""
    from usv_ray.config import to_dict

    values = to_dict(cfg)
    return {name: values[name] for name in INGEST_CONTENT}


def read_ingest_record(data: str | Path) -> dict[str, Any]:
    """The ingest settings an ingest folder's frames and tracklets were made with.

    Raises:
        BundleError: the folder has no record (not an ingest folder, or one written by an
            older usv_ray: ingest it again).
    """
    path = Path(data) / INGEST_RECORD
    if not path.is_file():
        raise BundleError(
            f"{Path(data)} has no {INGEST_RECORD}: it is not an ingest folder, or an older "
            "usv_ray wrote it; run `usv-ray ingest` into a new folder first"
        )
    try:
        return json.loads(path.read_text())["settings"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is damaged ({exc!r}): ingest into a new folder") from exc


def check_ingest(needed: Mapping[str, Any], data: str | Path, what: str) -> None:
    """Refuse ``data`` when it was ingested with other values of the settings ``needed``
    (a bundle's ``ingest`` record) than ``what`` (the bundle, for the message) was made for.

    Raises:
        BundleError: naming every setting that differs, with both values.
    """
    found = read_ingest_record(data)
    differ = [
        f"ingest.{name}: {found.get(name)!r} there, {value!r} for the model"
        for name, value in sorted(needed.items())
        if found.get(name) != value
    ]
    if differ:
        raise BundleError(
            f"{Path(data)} was ingested with other settings than {what} was trained on ("
            + "; ".join(differ)
            + "): ingest the videos into a new folder with the model's settings"
        )


def claim_ingest_record(data: str | Path, cfg: Any) -> None:
    """Record in ``data`` the :data:`INGEST_CONTENT` settings of ``cfg`` (an
    ``IngestConfig``), or refuse a folder whose frames were made with other values: one
    folder holds one sampling, frame size, crop and patch shape, so a model trained on it
    reads every video of it alike, and a night's manifest extends it only as it was made.

    Raises:
        FolderClaimed: naming the settings that differ.
    """
    from usv_ray.io import FolderClaimed, write_json

    path = Path(data) / INGEST_RECORD
    settings = ingest_settings(cfg)
    if path.is_file():
        found = json.loads(path.read_text())["settings"]
        differ = [
            f"ingest.{name}={settings[name]!r} (the folder has {found.get(name)!r})"
            for name in INGEST_CONTENT
            if found.get(name) != settings[name]
        ]
        if not differ:
            return
        raise FolderClaimed(
            f"{Path(data)} holds videos ingested with other settings: "
            + ", ".join(differ)
            + "; ingest into a new --out folder (or delete this one) rather than mixing them"
        )
    write_json({"format": BUNDLE_FORMAT, "settings": settings}, path)
