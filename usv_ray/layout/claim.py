"""How a stage claims its ``--out`` folder: one run at a time (:func:`hold`, a lock file that
a run which is gone leaves to be taken over), one fingerprint policy for every stage (the
settings that change what it writes, :func:`usv_ray.config.output_settings`, with its
inputs and data), a record that resumes the same work and refuses other work, and the
stage's summary written into that record at its end (:class:`StageRun`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from usv_ray.errors import UsvRayError

log = logging.getLogger(__name__)
T = TypeVar("T")


def fingerprint(sections: Mapping[str, Any], inputs: Mapping[str, Any], data: str) -> str:
    """What a stage's results depend on: the :func:`~usv_ray.config.output_settings` of its
    config ``sections`` (name -> section), its ``inputs`` (e.g. the frame settings of its
    data) and ``data`` (a digest of the data it read). How it runs never counts, nor an
    :func:`~usv_ray.config.added` ingest setting among ``inputs`` at its default (as
    :func:`~usv_ray.config.output_settings` leaves it out of a section)."""
    from usv_ray.config import IngestConfig, added_defaults, output_settings

    defaults = added_defaults(IngestConfig)  # the inputs' frame settings are ingest's
    inputs = {k: v for k, v in inputs.items() if k not in defaults or v != defaults[k]}
    settings = {name: output_settings(section) for name, section in sections.items()}
    text = json.dumps([settings, dict(inputs), data], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_rows(rows: Iterable[Sequence[Any]]) -> str:
    """A digest of a table's identifying rows (e.g. video_id, patient_key, label)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((",".join(map(str, row)) + ";").encode())
    return digest.hexdigest()


class StageRun:
    """A stage's claim on its output folder, and its record (``<stage>.json``).

    ``claim()`` fingerprints the settings that change the output (:func:`fingerprint`):
    a new folder gets the record; a folder claimed with the same fingerprint is resumed;
    one claimed with another is refused (:class:`~usv_ray.io.FolderClaimed`), never mixed.
    ``finish(summary)`` writes the stage's summary and time into the record.
    """

    def __init__(
        self,
        record: Path,
        sections: Mapping[str, Any],
        *,
        data: str = "",
        inputs: Mapping[str, Any] | None = None,
        data_folder: Path | None = None,
    ) -> None:
        self.record = Path(record)
        self.sections = dict(sections)
        self.inputs = dict(inputs or {})
        self.data_folder = data_folder
        self.fingerprint = fingerprint(self.sections, self.inputs, data)
        self.started = time.perf_counter()

    def _content(self) -> dict[str, Any]:
        from usv_ray.config import to_dict

        content: dict[str, Any] = {"fingerprint": self.fingerprint}
        content.update({name: to_dict(section) for name, section in self.sections.items()})
        if self.inputs:
            content["inputs"] = self.inputs
        if self.data_folder is not None:
            content["data"] = str(Path(self.data_folder).resolve())
        return content

    def claim(self) -> bool:
        """Claim the folder; True when this resumes work of the same fingerprint.

        Raises:
            FolderClaimed: the folder holds results made with other settings or data.
        """
        from usv_ray.io import FolderClaimed, write_json

        if self.record.exists():
            try:
                found = json.loads(self.record.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError) as exc:
                raise FolderClaimed(
                    f"{self.record} is damaged ({exc}); use a new --out (or delete it)"
                ) from exc
            if found != self.fingerprint:
                raise FolderClaimed(
                    f"{self.record.parent} holds results made with other settings or data; use "
                    "a new --out (or delete it) rather than mixing the two"
                )
            log.info("resuming the work in %s", self.record.parent)
            return True
        write_json(self._content(), self.record)
        return False

    def finish(self, summary: Mapping[str, Any] | None = None) -> float:
        """Write the record with the stage's ``summary`` and its time; returns the seconds."""
        from usv_ray.io import write_json

        seconds = time.perf_counter() - self.started
        content = {**self._content(), "seconds": seconds}
        if summary:
            content["summary"] = json.loads(json.dumps(summary, default=str))
        write_json(content, self.record)
        return seconds


# ---------------------------------------------------------------------------- one run per folder

LOCK_NAME = ".usv-ray.lock"
HEARTBEAT_S = 30.0  # a live holder touches its lock this often
# a lock of another host untouched this long is a run that is gone (its host or process)
FOREIGN_STALE_S = 10 * HEARTBEAT_S


class FolderBusy(UsvRayError, RuntimeError):
    """Another run works in the folder this run would write."""


def _holder_alive(holder: Mapping[str, Any], lock: Path) -> bool:
    """Whether the run that wrote ``holder`` (its lock's content) still runs: on this host,
    its process (the same pid, started at the same time); on another, a fresh heartbeat."""
    import psutil

    if holder.get("host") != socket.gethostname():
        try:
            return time.time() - lock.stat().st_mtime < FOREIGN_STALE_S
        except FileNotFoundError:
            return False
    try:
        process = psutil.Process(int(holder["pid"]))
        return abs(process.create_time() - float(holder["process_started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read_lock(lock: Path) -> dict[str, Any] | None:
    """The lock's content; None when it is gone; {} when it cannot be read (a holder that
    died while writing it)."""
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class _Heartbeat(threading.Thread):
    """Touches the lock while the run holds it, so runs on other hosts see it is alive."""

    def __init__(self, lock: Path) -> None:
        super().__init__(daemon=True, name="usv-ray-lock")
        self.lock, self.stop = lock, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.lock)


@contextlib.contextmanager
def hold(folder: str | Path, what: str, cfg: Any = None) -> Iterator[Path]:
    """Hold ``folder`` for one run of ``what`` (a stage): a lock file in it, made atomically.

    Another live run's lock makes this run refuse at once with one line (``lock.busy:
    refuse``) or wait for it (``wait``, at most ``lock.wait_s`` seconds). A lock whose run
    is gone (its process ended, or on another host its heartbeat stopped) is taken over,
    with a warning. The lock goes when the run ends, however it ends.

    Raises:
        FolderBusy: naming the run that holds the folder, and what to do.
    """
    import psutil

    busy = getattr(cfg, "busy", "refuse")
    wait_s = float(getattr(cfg, "wait_s", 0.0))
    folder = Path(folder)
    created = not folder.exists()  # a run refused for its inputs leaves no folder behind
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "process_started": psutil.Process().create_time(),
        "host": socket.gethostname(),
        "stage": what,
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # the run we waited for made the folder, and removed it
            folder.mkdir(parents=True, exist_ok=True)
            created = True
            continue
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None:
                continue  # released between the two calls: try again
            if not holder or not _holder_alive(holder, lock):
                log.warning(
                    "%s: taking over the lock of a %s run that is gone (pid %s on %s, since %s)",
                    folder,
                    holder.get("stage", "usv-ray"),
                    holder.get("pid", "?"),
                    holder.get("host", "?"),
                    holder.get("since", "?"),
                )
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            who = (
                f"a usv-ray {holder.get('stage', '?')} run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')})"
            )
            if busy != "wait" or time.monotonic() >= deadline:
                waited = f" after waiting {wait_s:g} s" if busy == "wait" else ""
                raise FolderBusy(
                    f"{folder} is in use by {who}{waited}: two runs in one folder would "
                    "overwrite each other's work. Let it finish (or stop it) and run again, "
                    "or set lock.busy=wait to wait for it"
                ) from None
            if not said:
                log.info("%s is in use by %s: waiting for it (lock.busy=wait)", folder, who)
                said = True
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
            continue
        with os.fdopen(handle, "w") as written:
            json.dump(me, written)
        break
    heartbeat = _Heartbeat(lock)
    heartbeat.start()
    try:
        yield lock
    finally:
        heartbeat.stop.set()
        if (_read_lock(lock) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote its results there
                folder.rmdir()


def holds(stage: str, subfolder: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a stage's ``run_*(cfg, ..., out, ...)`` to :func:`hold` its ``out`` (or
    ``out/subfolder``) for the whole run, as ``cfg.lock`` says."""

    def decorate(run: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(run)

        @functools.wraps(run)
        def held(*args: Any, **kwargs: Any) -> T:
            bound = signature.bind(*args, **kwargs)
            out = Path(bound.arguments["out"]) / subfolder
            with hold(out, stage, bound.arguments["cfg"].lock):
                return run(*args, **kwargs)

        return held

    return decorate
