"""A bundle's record: one type for every kind of trained model that travels.

A bundle is a folder holding ``bundle.json`` and the model files it names. Training stages
write one at their end (``classify/bundle``, ``reid/bundle``, ``detect/bundle``); the
night's stages read one, on this machine or wherever it was copied. Every kind has the same
record (:class:`Bundle`):

- ``format``: the layout of this file (:data:`BUNDLE_FORMAT`); an unknown one is refused;
- ``kind`` (``diagnosis``, ``reid``, ``detector``), ``version`` (the kind and a hash of
  every model file and of the metadata that changes what the bundle outputs),
  ``usv_ray`` (the package version that wrote it), ``created_at``;
- ``files``: each model file (the runner's one format, :mod:`usv_ray.runner.files`) with
  its size and SHA-256, checked when the bundle loads, so a missing or damaged file is an
  error that names it, never a silent wrong answer;
- ``ingest``: the ingest settings its inputs must have been made with, compared with the
  data folder's own record before any video is read (:meth:`Bundle.check_data`);
- ``metrics``: how well it did, with intervals; ``config`` and ``fingerprints``: what it
  was trained with and on.

The rest of the record is the kind's own (a diagnosis bundle's members, calibrator and
operating point; a re-ID bundle's clip shape and tau). Files are hard links to the
training run's model files where the file system allows, else copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usv_ray.errors import UsvRayError
from usv_ray.io import file_digest

BUNDLE_FORMAT = 2  # 2: one record for every kind, every model in the runner's file format
BUNDLE_FILE = "bundle.json"
BUNDLE_DIR = "bundle"  # a training stage's bundle, under its --out


# the ingest settings that make the stored frames (crop, field of view, size): what a model
# that reads stored frames needs its data ingested with
STORED_FRAME_SETTINGS = ("frame_size", "crop_box", "crop_from_header", "trim_fov", "fov_threshold")


class BundleError(UsvRayError, ValueError):
    """A bundle that cannot be used: not found, of an unknown format or kind, a model
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


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its folder and its record, checked (:func:`read`)."""

    folder: Path
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def version(self) -> str:
        return self.record["version"]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Model file name -> its bytes and SHA-256."""
        return self.record["files"]

    @property
    def ingest(self) -> dict[str, Any]:
        """The ingest settings its inputs must have been made with."""
        return self.record.get("ingest", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("metrics", {})

    def path(self, name: str) -> Path:
        """The model file ``name`` of the bundle."""
        return self.folder / name

    def check_data(self, data: Any) -> None:
        """Refuse the ingest folder ``data`` when it was ingested with other values of the
        settings this bundle needs.

        Raises:
            BundleError: naming every setting that differs, with both values.
            LayoutError: ``data`` is not an ingest folder.
        """
        from usv_ray.layout import IngestFolder

        data = data if isinstance(data, IngestFolder) else IngestFolder(data)
        found = data.settings()
        differ = [
            f"ingest.{name}: {found.get(name)!r} there, {value!r} for the model"
            for name, value in sorted(self.ingest.items())
            if found.get(name) != value
        ]
        if differ:
            raise BundleError(
                f"{data.root} was ingested with other settings than the {self.kind} bundle "
                f"{self.folder} was trained on (" + "; ".join(differ) + "): ingest the videos "
                "into a new folder with the model's settings"
            )

    def rewrite(self, **changes: Any) -> Bundle:
        """The record with ``changes`` written back (for what is recorded after training,
        such as a swept tau; the files and version stay)."""
        from usv_ray.io import write_json

        record = {**self.record, **changes}
        write_json(record, self.folder / BUNDLE_FILE)
        return Bundle(self.folder, record)


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


def write(
    folder: str | Path,
    kind: str,
    files: Mapping[str, Path],
    meta: Mapping[str, Any],
    versioned: Iterable[str] = (),
) -> Bundle:
    """Write the bundle ``folder``: the model ``files`` (bundle name -> file) and
    ``bundle.json`` with ``meta`` (``ingest``, ``metrics``, ``config``, ``fingerprints`` and
    the kind's own keys).

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
        "ingest": {},
        "metrics": {},
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
    return Bundle(folder, record)


def find(path: str | Path) -> Path:
    """The bundle folder at ``path``: a bundle folder, or a stage's output folder holding
    one in ``bundle/``.

    Raises:
        BundleError: neither.
    """
    path = Path(path)
    if (path / BUNDLE_FILE).is_file():
        return path
    if (path / BUNDLE_DIR / BUNDLE_FILE).is_file():
        return path / BUNDLE_DIR
    raise BundleError(
        f"no model bundle at {path}: give a bundle folder (it holds {BUNDLE_FILE}) or the "
        f"--out folder of the training stage that wrote one under {BUNDLE_DIR}/"
    )


def read(path: str | Path, kind: str | None = None, verify: bool = True) -> Bundle:
    """The bundle at ``path`` (see :func:`find`), of ``kind`` when given.

    Checks its format and kind and that every model file is there, with its size and
    (``verify``) its SHA-256.

    Raises:
        BundleError: naming what is wrong.
    """
    folder = find(path)
    try:
        record = json.loads((folder / BUNDLE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder / BUNDLE_FILE} is not readable: {exc}") from exc
    if not isinstance(record, dict):
        raise BundleError(f"{folder / BUNDLE_FILE} is not a bundle record: it is damaged")
    found = record.get("format")
    if found != BUNDLE_FORMAT:
        raise BundleError(
            f"{folder} is a bundle of format {found!r}, written by usv_ray "
            f"{record.get('usv_ray', '?')}; this usv_ray ({package_version()}) reads format "
            f"{BUNDLE_FORMAT}: use the usv_ray version that wrote it, or train again"
        )
    if kind is not None and record.get("kind") != kind:
        raise BundleError(f"{folder} holds a {record.get('kind')!r} bundle, not a {kind!r} one")
    files = record.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"bytes", "sha256"} <= v.keys() for v in files.values()
    ):
        raise BundleError(f"{folder / BUNDLE_FILE} lists no weights files: it is damaged")
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise BundleError(f"{folder}: the weights file {name} is missing")
        if file.stat().st_size != expected["bytes"] or (
            verify and file_digest(file) != expected["sha256"]
        ):
            raise BundleError(
                f"{folder}: the weights file {name} is not the one the bundle was written "
                "with (size or SHA-256 differ): copy the whole bundle folder again"
            )
    return Bundle(folder, record)
