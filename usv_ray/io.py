"""Atomic Parquet and JSON writes: a crash never leaves a half-written file under its name.

Every file is written to a temporary name beside its target and renamed into place; a rename
within one directory is atomic on POSIX filesystems (local disks and NFS alike).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.config import ConfigError

COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1  # images barely compress harder at higher levels, and cost more
TMP_MARK = ".tmp-"


def _tmp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that says whose it is: the writing process's id."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that writes the temporary file ``tmp`` still runs on this host
    (names without a process id are an older usv_ray's: not alive)."""
    pid = tmp.name.rpartition(TMP_MARK)[2].partition("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any] | None:
    """``{"bytes", "sha256", "mtime_ns"}`` of a file (what is checked when it is read), None
    when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    return {"bytes": stat.st_size, "sha256": file_digest(path), "mtime_ns": stat.st_mtime_ns}


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` atomically (zstd Parquet)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL)
    return Path(path)


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from row dicts (an empty list gives an empty table)."""
    return pa.Table.from_pylist(list(rows), schema=schema)


class ShardWriter:
    """Stream row groups of one schema into a Parquet file that appears only when complete.

    Used as a context manager: rows are buffered up to ``rows_per_group`` and flushed as a
    row group, so memory stays bounded for videos of any length.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, rows_per_group: int = 64):
        self.path = Path(path)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._ctx = atomic_path(self.path)
        self.rows_written = 0

    def __enter__(self) -> ShardWriter:
        self._tmp = self._ctx.__enter__()
        return self

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._tmp, self.schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL
            )
        self._writer.write_table(rows_to_table(self._buffer, self.schema))
        self.rows_written += len(self._buffer)
        self._buffer = []

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
            if self._writer is None:  # no rows: still a valid, empty file
                pq.write_table(self.schema.empty_table(), self._tmp)
        if self._writer is not None:
            self._writer.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, sort_keys=True, indent=1))
    return Path(path)


def remove_stale_tmp(folder: str | Path) -> int:
    """Delete temporary files a killed run left in ``folder``; returns how many. A file
    whose writer still runs belongs to that run and is left alone (a run holds its folder,
    :func:`usv_ray.layout.hold`, so such a writer is this run's own)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    import shutil

    stale = [p for p in folder.iterdir() if TMP_MARK in p.name and not _writer_alive(p)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)  # a dataset folder (write_dataset)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


class FolderClaimed(ConfigError):
    """An output folder holds results made from other settings or data."""


def claim_folder(record: str | Path, fingerprint: str, settings: Mapping[str, Any]) -> bool:
    """Claim the folder of ``record`` for results with ``fingerprint``.

    A new folder gets the record (the fingerprint and the settings, for people to read);
    a folder already claimed with the same fingerprint is resumed (returns True). Results
    never mix: a folder claimed with another fingerprint raises :class:`FolderClaimed`.
    """
    record = Path(record)
    if record.exists():
        if json.loads(record.read_text()).get("fingerprint") != fingerprint:
            raise FolderClaimed(
                f"{record.parent} holds results made with other settings or data; use a new "
                "--out (or delete it) rather than mixing the two"
            )
        return True
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json({"fingerprint": fingerprint, **settings}, record)
    return False


def replace_folder(target: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Make the folder ``target`` whole or not at all: ``fill(tmp)`` writes it under a
    temporary name beside it, renamed into place at the end (replacing an older
    ``target``), so a killed run never leaves a partial folder for a later stage to trust."""
    import shutil

    target = Path(target)
    tmp = _tmp_path(target)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_dataset(dataset: Any, target: str | Path) -> Path:
    """Write a Ray Dataset as Parquet files into the folder ``target``, whole or not at all
    (:func:`replace_folder`)."""
    import pyarrow.fs

    def fill(tmp: Path) -> None:
        dataset.write_parquet(str(tmp), filesystem=pyarrow.fs.LocalFileSystem())

    return replace_folder(target, fill)
