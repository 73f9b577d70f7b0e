"""Ingest: manifest -> Ray Data (one task per video) -> Parquet shards and tables.

Output layout under ``out``::

    ingest.json               the frame and patch settings every video was made with
    videos.parquet            one row per video of every run, sorted by video_id
    errors.parquet            one row per problem (bad rows, unreadable files, annotations)
    frames/<video_id>.parquet     sampled 224 x 224 gray frames of one video
    tracklets/<video_id>.parquet  T x 256 x 128 patch clips of the video's tracklets
    journal/<video_id>.json       the video's row and errors: written last, it marks the
                                  video as done for reruns (same input and settings)

Each video task writes its own shards atomically and then its journal entry, so a killed
run leaves no half-written shard and a rerun redoes only the videos without a matching
journal entry. Reruns add to the same folder: a nightly manifest of new videos extends it
(with the same frame settings, which ``ingest.json`` holds). With ``ingest.detector`` a
video without annotations gets automatic tracklets in the same decode pass; its journal
entry names the detector, so a new detector redoes those videos and no annotated one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from usv_ray.config import Config, ConfigError, DetectConfig, IngestConfig
from usv_ray.ingest.deid import crop_region
from usv_ray.ingest.manifest import (
    VideoTask,
    read_manifest,
)
from usv_ray.ingest.report import describe
from usv_ray.ingest.video import failed_video, ingest_video, write_journal
from usv_ray.io import remove_stale_tmp, rows_to_table, write_table
from usv_ray.layout import SHARDS, IngestFolder, holds
from usv_ray.privacy import load_key, record_keying
from usv_ray.schemas import ERRORS, VIDEOS

log = logging.getLogger(__name__)


class IngestWorker:
    """The callable class of the ingest job (:func:`usv_ray.pool.run_batches`): manifest
    tasks (as JSON) in, a small status row per video out.

    An actor pool of these keeps its workers warm (imports done once per actor, and the
    detector of ``cfg.detector`` loaded once) and each actor's queue full, so no CPU idles
    between short videos.
    """

    def __init__(self, cfg: IngestConfig, key: bytes, out: str, detect: DetectConfig):
        self.cfg, self.key, self.out, self.detect = cfg, key, out, detect
        self.detector = None
        if cfg.detector:
            import torch

            from usv_ray import bundle

            gpu = cfg.detector_gpu and torch.cuda.is_available()
            device = "cuda" if gpu else "cpu"
            self.detector = bundle.load(cfg.detector, "detector", device=device, bf16=gpu)

    def __call__(self, batch: dict) -> pa.Table:
        rows = {"video_id": [], "status": []}
        for text in batch["task"]:
            task = VideoTask(**json.loads(text))
            entry = ingest_video(task, self.cfg, self.key, self.out, self.detector, self.detect)
            rows["video_id"].append(task.video_id)
            rows["status"].append(entry["video"]["status"])
        return pa.table(rows)


@dataclass(frozen=True)
class IngestSummary:
    out: Path
    videos: int  # rows in videos.parquet
    ok: int
    failed: int
    decoded_now: int  # videos this run decoded into shards
    failed_now: int  # videos this run tried that failed (or the manifest rejected)
    skipped: int  # videos already done by an earlier run, left as they were
    repaired: int  # of those decoded now, done before but with a missing or damaged shard
    errors: int  # rows in errors.parquet
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        repaired = f", {self.repaired} of them to repair damaged shards" if self.repaired else ""
        return (
            f"ingest: {self.videos} videos in the folder, {self.ok} ok and {self.failed} failed; "
            f"this run decoded {self.decoded_now}{repaired}, failed {self.failed_now}, skipped "
            f"{self.skipped} already done; {self.errors} error rows, in {self.seconds:.1f} s\n"
            f"  videos: {self.out / 'videos.parquet'}\n"
            f"  errors: {self.out / 'errors.parquet'}\n"
            f"  frames: {self.out / 'frames'}\n"
            f"  tracklets: {self.out / 'tracklets'}"
        )


def _load_journal(folder: Path) -> dict[str, dict]:
    entries = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            entries[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable journal entry %s: the video will be redone", path.name)
    return entries


def _same(entry: dict | None, task: VideoTask) -> bool:
    """A journal entry for the same input and settings. Without a detector, an entry made
    with one also counts: a plain ingest keeps the automatic tracklets an earlier one made
    (a detector's ingest redoes plain entries)."""
    if entry is None:
        return False
    same = entry.get("fingerprint") == task.fingerprint
    if not same and task.plain_fingerprint is None:
        same = entry.get("plain") == task.fingerprint
    return same


def _damaged(entry: dict, task: VideoTask, out: IngestFolder) -> list[str]:
    """Why the shards of a video ingested ok cannot be trusted (none: they can)."""
    if entry["video"]["status"] != "ok":
        return []
    found = (out.shard_problem(kind, task.video_id, entry, True) for kind in SHARDS)
    return [problem for problem in found if problem]


def _with_detector(cfg: Config, out: IngestFolder) -> tuple[Config, str]:
    """``cfg`` with ``ingest.detector`` the absolute path of a detector bundle checked
    against the frame settings of the ingest folder ``out`` (Ray workers elsewhere read
    it, and must not find out late), and the bundle's version."""
    from usv_ray import bundle
    from usv_ray.ingest.automatic import tracker_settings

    try:  # settings out of range fail here, not as an error row per video
        tracker_settings(cfg.detect)
    except ValueError as exc:
        raise ConfigError(f"detect settings of the tracker: {exc}") from exc
    detector = bundle.read(cfg.ingest.detector, "detector")
    detector.check_data(out)
    log.info("videos without annotations get automatic tracklets from %s", detector.version)
    ingest = dataclasses.replace(cfg.ingest, detector=str(detector.folder.resolve()))
    return dataclasses.replace(cfg, ingest=ingest), detector.version


def _detected(task: VideoTask, version: str, cfg: Config) -> VideoTask:
    """``task`` whose fingerprint also names the detector (its bundle ``version``) and the
    tracker settings when its video has no annotations: another detector redoes those
    videos, never the annotated ones."""
    if task.annotations is not None:
        return task
    from usv_ray.ingest.automatic import tracking_settings

    stamp = json.dumps([task.fingerprint, version, tracking_settings(cfg.detect)], sort_keys=True)
    stamped = hashlib.sha256(stamp.encode()).hexdigest()[:32]
    return dataclasses.replace(task, fingerprint=stamped, plain_fingerprint=task.fingerprint)


@holds("ingest")
def run_ingest(cfg: Config, manifest: str | Path, out: str | Path) -> IngestSummary:
    """Ingest every video of ``manifest`` into ``out`` on Ray, skipping finished work.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    started = time.perf_counter()
    folder = IngestFolder(out)
    try:
        crop_region(cfg.ingest.crop_box, 1, 1)  # fail fast on a bad crop box
    except ValueError as exc:
        raise ConfigError(f"ingest.{exc}") from exc
    key = load_key(cfg.privacy)
    # another key than the folder's is refused before any video is read
    record_keying(folder.root, cfg.privacy, key)
    tasks, row_errors, rejected = read_manifest(manifest, key, cfg.ingest)
    folder.claim(cfg.ingest)  # one folder, one set of frame settings
    if cfg.ingest.detector:
        cfg, version = _with_detector(cfg, folder)
        tasks = [_detected(task, version, cfg) for task in tasks]
    for part in (folder.frames_dir, folder.tracklets_dir, folder.journal_dir):
        part.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(part)
    remove_stale_tmp(folder.root)
    journal = _load_journal(folder.journal_dir)

    rejected_now = 0
    for task, kind, message in rejected:
        if journal.get(task.video_id, {}).get("fingerprint") != task.fingerprint:
            rejected_now += 1
            write_journal(folder, task, *failed_video(task, folder, kind, message, "manifest", []))
    todo, repaired = [], 0
    for task in tasks:
        entry = journal.get(task.video_id)
        if not _same(entry, task):
            todo.append(task)
        elif damaged := _damaged(entry, task, folder):
            log.warning("video %s: %s; ingesting it again", task.video_id, "; ".join(damaged))
            todo.append(task)
            repaired += 1
    log.info(
        "manifest: %d videos to ingest (%d to repair), %d already done, %d rejected, %d bad rows",
        len(todo),
        repaired,
        len(tasks) - len(todo),
        len(rejected),
        len(row_errors),
    )
    done = failed = 0
    if todo:
        for table in _ingest_job(todo, cfg, key, folder):
            done += table.num_rows
            failed += sum(status != "ok" for status in table["status"].to_pylist())
            if done % 100 < table.num_rows or done == len(todo):
                log.info("ingested %d/%d videos (%d failed)", done, len(todo), failed)

    journal = _load_journal(folder.journal_dir)
    videos = sorted((e["video"] for e in journal.values()), key=lambda v: v["video_id"])
    errors = [e for vid in sorted(journal) for e in journal[vid]["errors"]] + row_errors
    write_table(rows_to_table(videos, VIDEOS), folder.videos)
    write_table(rows_to_table(errors, ERRORS), folder.errors)
    describe(folder.root)
    ok = sum(v["status"] == "ok" for v in videos)
    return IngestSummary(
        out=folder.root,
        videos=len(videos),
        ok=ok,
        failed=len(videos) - ok,
        decoded_now=done - failed,
        failed_now=failed + rejected_now,
        skipped=len(tasks) + len(rejected) - len(todo) - rejected_now,
        repaired=repaired,
        errors=len(errors),
        seconds=time.perf_counter() - started,
    )


def _ingest_job(
    todo: list[VideoTask], cfg: Config, key: bytes, out: IngestFolder
) -> Iterator[pa.Table]:
    """The videos on a pool of Ray actors (``ingest.workers``, else as many as fit), or
    with ``ingest.workers`` 0 in this process, one after another."""
    from usv_ray.pool import run_batches

    workers = cfg.ingest.workers
    gpus = 1 if cfg.ingest.detector and cfg.ingest.detector_gpu else 0
    if workers != 0:
        import ray

        from usv_ray.runtime import ensure_ray

        ensure_ray(cfg.ray)
        workers = workers or int(
            ray.cluster_resources().get("CPU", 1) // cfg.ingest.num_cpus_per_video
        )
        if gpus:  # one GPU per actor: as many actors as the cluster has GPUs, at most
            available = int(ray.cluster_resources().get("GPU", 0))
            if available == 0:
                raise ConfigError(
                    "ingest.detector_gpu gives each ingest actor a GPU, and the cluster has "
                    "none now (an autoscaling cluster: bring up a GPU worker first): set it "
                    "false to detect on the CPUs"
                )
            workers = min(workers, available)
        workers = max(1, min(workers, len(todo)))
    where = "in this process" if workers == 0 else f"with {workers} Ray workers"
    log.info("ingesting %d videos %s", len(todo), where)
    items = [{"task": json.dumps(dataclasses.asdict(t))} for t in todo]
    kwargs = {"cfg": cfg.ingest, "key": key, "out": str(out.root.resolve()), "detect": cfg.detect}
    yield from run_batches(
        IngestWorker,
        kwargs,
        items,
        workers=workers,
        ray=cfg.ray,
        cpus=cfg.ingest.num_cpus_per_video,
        gpus=gpus,
    )
