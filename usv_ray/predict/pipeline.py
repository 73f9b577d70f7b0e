"""``usv-ray predict --model BUNDLE --data DATA --out DIR``: diagnose every ingested video.

The night's diagnosis step. It loads a diagnosis bundle (``classify/bundle``, or a copy of
it anywhere), checks that ``DATA`` was ingested with the settings the bundle needs, and
diagnoses the videos of ``DATA`` (labelled or not) with a Ray Data batch-inference job:
one :class:`~usv_ray.predict.diagnose.Diagnoser` per actor, the bundle loaded once per
actor, frames read from the Parquet shards. Layout of ``--out``::

    diagnoses.parquet           one row per video and model version (schemas.DIAGNOSES)
    tracklet_diagnoses.parquet  one row per tracklet and model version: the frames each
                                tracklet spans, read on their own (schemas.TRACKLET_DIAGNOSES)
    summary.json                what the tables hold, by model version

Incremental, as the index is: a rerun diagnoses only the videos this model version has not
diagnosed, and those whose shards ingest rewrote since (a video re-ingested, tracklets added
to it); with nothing new it writes nothing and the tables stay byte for byte the same. A
run commits its rows in parts as it goes (``predict.commit_every`` videos or
``commit_every_s`` seconds, under ``parts/``): a run stopped midway keeps them, and the
next takes them as they are and redoes at most the part it was writing. Each shard is
checked against what ingest recorded of it as it is read; a damaged or missing one is an
error row naming why, tried again once ingest writes it again.
Another bundle is another model version: its rows are added beside the earlier version's,
never mixed with them. A video whose frames cannot be read is an error row (``status``
error, ``error`` why), and is tried again once ingest rewrites it; a video that ingest
could not read is an error row too, so every video of the archive has a row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.config import Config
from usv_ray.errors import UsvRayError
from usv_ray.io import write_json, write_table
from usv_ray.layout import IngestFolder, PredictFolder, holds
from usv_ray.predict.diagnose import ROW_SCHEMA
from usv_ray.predict.report import describe
from usv_ray.schemas import DIAGNOSES, TRACKLET_DIAGNOSES

log = logging.getLogger(__name__)


class PredictError(UsvRayError, ValueError):
    """Nothing can be diagnosed as asked (no ingest folder)."""


@dataclass(frozen=True)
class PredictSummary:
    out: Path
    model_version: str
    videos: int  # rows of this model version (every video of the data folder)
    diagnosed: int  # videos this run diagnosed
    failed: int  # videos this run tried and could not read (a damaged shard, ...)
    not_ingested: int  # videos this run found that ingest could not read
    resumed: int  # videos a killed run had diagnosed and committed, taken as they were
    unchanged: int  # videos diagnosed before and unchanged since: not read again
    lost_shards: int  # videos diagnosed before whose frames shard is gone or damaged since
    errors: int  # error rows of this model version
    malignant: int  # videos of this model version that read malignant
    tracklets: int  # tracklet rows of this model version
    written: bool  # False: nothing new, the tables were left as they were
    seconds: float
    tonight: int = 0  # videos diagnosed tonight (this run and a stopped run it resumed)
    tonight_malignant: int = 0  # of them, read malignant
    # the share the bundle reads malignant at its threshold (cross-fitted out-of-fold:
    # value, low, high), None for a bundle that does not record it
    expected_share: dict | None = None

    def share_warning(self) -> str | None:
        """One line when tonight's share read malignant lies outside the share the bundle
        expects by more than tonight's count explains (:func:`share_is_far`)."""
        if not self.expected_share or not share_is_far(
            self.tonight_malignant, self.tonight, self.expected_share
        ):
            return None
        e = self.expected_share
        return (
            f"predict: {self.tonight_malignant} of {self.tonight} videos tonight "
            f"({100 * self.tonight_malignant / self.tonight:.0f}%) read malignant; the bundle "
            f"reads {100 * e['value']:.0f}% (95% CI {100 * e['low']:.0f}-{100 * e['high']:.0f}) "
            "of its cross-validated videos malignant at its threshold: tonight's videos differ "
            "from those it was trained on (another case mix, scanner or setting), or the "
            "bundle does; check a sample of tonight's readings before acting on them"
        )

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        what = (
            f"{self.diagnosed} diagnosed now, {self.failed} could not be read, "
            f"{self.not_ingested} not ingested, {self.resumed} from a run that was stopped, "
            f"{self.unchanged} unchanged"
            if self.written
            else f"nothing new, the tables are unchanged ({self.unchanged} videos)"
        )
        lost = (
            f"\n  {self.lost_shards} diagnosed videos have lost their frames shard or hold a "
            "damaged one since: ingest their manifest again to repair them"
            if self.lost_shards
            else ""
        )
        share = ""
        if self.tonight:
            share = (
                f"\n  tonight: {self.tonight_malignant} of {self.tonight} read malignant "
                f"({100 * self.tonight_malignant / self.tonight:.0f}%)"
            )
            if e := self.expected_share:
                share += (
                    f"; the bundle expects {100 * e['value']:.0f}% "
                    f"({100 * e['low']:.0f}-{100 * e['high']:.0f})"
                )
        return (
            f"predict: {self.videos} videos by {self.model_version} ({what}; "
            f"{self.malignant} read malignant, {self.errors} not diagnosed) in "
            f"{self.seconds:.0f} s{share}{lost}\n"
            f"  diagnoses: {self.out / 'diagnoses.parquet'}\n"
            f"  tracklets: {self.out / 'tracklet_diagnoses.parquet'} ({self.tracklets} rows)"
        )


def share_is_far(malignant: int, videos: int, expected: dict, alpha: float = 0.001) -> bool:
    """Whether ``malignant`` of ``videos`` lies outside ``expected``'s interval (value, low,
    high: shares) by more than chance: an exact binomial test against the nearer end
    rejects at ``alpha``. Never with no videos."""
    from scipy.stats import binomtest

    if videos == 0:
        return False
    share = malignant / videos
    if expected["low"] <= share <= expected["high"]:
        return False
    end = expected["low"] if share < expected["low"] else expected["high"]
    return bool(binomtest(malignant, videos, min(max(end, 0.0), 1.0)).pvalue < alpha)


NOT_INGESTED = "not ingested: "  # the error of a video ingest could not read


def _read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """A table as pandas, or an empty one of ``schema``."""
    table = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
    return table.to_pandas()


def _stale(data: IngestFolder, video_id: str, diagnosed_at: pd.Timestamp) -> bool:
    """Whether ingest wrote the video's frames or tracklets after it was diagnosed."""
    stamp = diagnosed_at.timestamp()
    return any(
        path.exists() and path.stat().st_mtime > stamp
        for path in (data.frames(video_id), data.tracklets(video_id))
    )


def _todo(data: IngestFolder, videos: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """The videos to diagnose now: without a row of this version, written since, or that
    failed here rather than at ingest (a shard that could not be read, a lost worker): those
    are tried again on every run."""
    when = dict(zip(done["video_id"], done["diagnosed_at"], strict=True))
    ingest_failed = done["error"].fillna("").str.startswith(NOT_INGESTED)
    retry = set(done.loc[(done["status"] == "error") & ~ingest_failed, "video_id"])
    keep = [
        video_id not in when or video_id in retry or _stale(data, video_id, when[video_id])
        for video_id in videos["video_id"]
    ]
    return videos[keep]


def _not_readable(videos: pd.DataFrame, version: str, threshold: float) -> list[dict]:
    """Error rows of videos ingest could not read (no frames to diagnose)."""
    now = datetime.now(UTC)
    return [
        {
            "video_id": row.video_id,
            "patient_key": row.patient_key,
            "study_key": row.study_key,
            "model_version": version,
            "status": "error",
            "error": f"{NOT_INGESTED}{row.error}",
            "threshold": threshold,
            "diagnosed_at": now,
            "tracklets": [],
        }
        for row in videos.itertuples(index=False)
    ]


def _diagnose(
    cfg: Config, bundle: Path, data: IngestFolder, videos: pd.DataFrame
) -> Iterator[pa.Table]:
    """The batch job over ``videos`` (ingested ok), on ``predict.workers`` actors each
    holding the bundle (0: in this process): a table of rows per batch, as they come."""
    from usv_ray.pool import run_batches
    from usv_ray.predict.diagnose import Diagnoser

    p = cfg.predict
    items = [
        {
            "video_id": row.video_id,
            "patient_key": row.patient_key,
            "study_key": row.study_key,
            "frames": str(data.frames(row.video_id)),
            "tracklets": str(path) if (path := data.tracklets(row.video_id)).exists() else "",
            # what ingest recorded of the shards: checked as they are read
            "shards": json.dumps((data.journal_entry(row.video_id) or {}).get("shards")),
        }
        for row in videos.itertuples(index=False)
    ]
    kwargs = {"bundle": str(bundle), "use_gpu": p.use_gpu, "precision": p.precision}
    done, shown = 0, time.monotonic()
    for table in run_batches(
        Diagnoser,
        kwargs,
        items,
        workers=p.workers,
        ray=cfg.ray,
        batch_size=p.batch_size,
        cpus=p.cpus_per_worker,
        gpus=1 if p.use_gpu else 0,
    ):
        yield table
        done += table.num_rows
        if done == len(items) or time.monotonic() - shown > 20:
            shown = time.monotonic()
            log.info("predict: diagnosed %d/%d videos", done, len(items))


def _split(rows: pa.Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Diagnoser rows -> (DIAGNOSES rows, TRACKLET_DIAGNOSES rows)."""
    videos = rows.select(DIAGNOSES.names).cast(DIAGNOSES).to_pandas()
    columns = ["video_id", "patient_key", "study_key", "model_version", "diagnosed_at"]
    nested = rows.select([*columns, "tracklets"]).to_pandas()
    nested = nested.explode("tracklets").dropna(subset=["tracklets"])
    if nested.empty:
        return videos, TRACKLET_DIAGNOSES.empty_table().to_pandas()
    parts = pd.DataFrame(nested.pop("tracklets").tolist(), index=nested.index)
    tracklets = pd.concat([nested, parts], axis=1)[TRACKLET_DIAGNOSES.names]
    return videos, tracklets


def _merge(
    old: pd.DataFrame, new: pd.DataFrame, version: str, redone: set[str], schema: pa.Schema
) -> pa.Table:
    """``old`` less its rows of ``version`` for the ``redone`` videos, plus ``new``, sorted by
    model version, then by the table's first column (video_id, tracklet_id)."""
    drop = (old["model_version"] == version) & old["video_id"].isin(redone)
    parts = [frame for frame in (old[~drop], new) if len(frame)]
    merged = pd.concat(parts) if parts else old.iloc[:0]
    keys = ["model_version", schema.names[0]]
    merged = merged.sort_values(keys, kind="stable").reset_index(drop=True)
    return pa.Table.from_pandas(merged, schema=schema, preserve_index=False)


def _read_parts(out: PredictFolder, version: str) -> pa.Table:
    """The rows a stopped run of ``version`` committed (Diagnoser rows), or none."""
    files = out.parts(version)
    if not files:
        return ROW_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(f, schema=ROW_SCHEMA) for f in files)


class _Committer:
    """Commits a run's rows as they come, in parts of ``every`` videos or ``every_s``
    seconds, whichever comes first: a run stopped midway keeps what it committed."""

    def __init__(self, out: PredictFolder, version: str, every: int, every_s: float) -> None:
        self.out, self.version = out, version
        self.every, self.every_s = max(1, every), every_s
        self.pending: list[pa.Table] = []
        self.rows, self.last = 0, time.monotonic()
        self.number = len(out.parts(version))

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.every or time.monotonic() - self.last >= self.every_s:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            rows = pa.concat_tables(self.pending).cast(ROW_SCHEMA)
            write_table(rows, self.out.part(self.version, self.number))
            self.number += 1
        self.pending, self.rows, self.last = [], 0, time.monotonic()


@holds("predict")
def run_predict(
    cfg: Config, model: str | Path, data: str | Path, out: str | Path
) -> PredictSummary:
    """Diagnose the videos of ``data`` that the bundle ``model`` has not diagnosed into ``out``.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray import bundle
    from usv_ray.io import remove_stale_tmp

    started = time.perf_counter()
    data, out = IngestFolder(data), PredictFolder(out)
    diagnosis = bundle.read(model, "diagnosis")
    version = diagnosis.version
    threshold = float(diagnosis.record["operating_point"]["threshold"])
    expected = diagnosis.record["operating_point"].get("positive_share_cross_fitted")
    if not data.videos.exists():
        raise PredictError(f"{data.videos} not found: run `usv-ray ingest` first")
    diagnosis.check_data(data)
    remove_stale_tmp(out.root)
    videos = data.read_videos(["video_id", "patient_key", "study_key", "status", "error"])
    diagnoses = _read(out.diagnoses, DIAGNOSES)
    tracklets = _read(out.tracklet_diagnoses, TRACKLET_DIAGNOSES)
    # what a stopped run committed counts as done, unless ingest wrote the video since
    resumed = _read_parts(out, version)
    resumed_videos, _ = _split(resumed)
    mine = diagnoses[diagnoses["model_version"] == version]
    done = pd.concat([frame for frame in (mine, resumed_videos) if len(frame)] or [mine])
    done = done.drop_duplicates("video_id", keep="last")
    todo = _todo(data, videos, done)
    resumed = resumed.filter(
        pc.invert(pc.is_in(resumed["video_id"], pa.array(list(todo["video_id"]), pa.string())))
    )
    lost = _lost_shards(data, videos, set(todo["video_id"]))
    readable = todo[todo["status"] == "ok"]
    log.info(
        "predict: %d videos in %s, %d to diagnose with %s (%d members)%s",
        len(videos),
        data.root,
        len(todo),
        version,
        len(diagnosis.record["members"]),
        f", {resumed.num_rows} committed by a run that was stopped" if resumed.num_rows else "",
    )
    counts = {"resumed": resumed.num_rows, "unchanged": len(videos) - len(todo) - resumed.num_rows}
    counts["lost_shards"] = len(lost)
    if todo.empty and not resumed.num_rows:
        log.info("predict: nothing new for %s", version)
        counts.update(diagnosed=0, failed=0, not_ingested=0, tonight=0, tonight_malignant=0)
        return _summary(out, data, version, diagnoses, tracklets, counts, False, started, expected)

    p = cfg.predict
    committer = _Committer(out, version, p.commit_every, p.commit_every_s)
    failed = todo[todo["status"] != "ok"]
    if len(failed):
        committer.add(
            pa.Table.from_pylist(_not_readable(failed, version, threshold), schema=ROW_SCHEMA)
        )
    if len(readable):
        for table in _diagnose(cfg, diagnosis.folder, data, readable):
            committer.add(table)
    committer.commit()
    rows = _read_parts(out, version)
    new_videos, new_tracklets = _split(rows)
    tried = new_videos[new_videos["video_id"].isin(set(readable["video_id"]))]
    for row in tried[tried["status"] == "error"].itertuples(index=False):
        log.warning("predict: video %s not diagnosed: %s", row.video_id, row.error)
    tonight = new_videos[new_videos["status"] == "ok"]
    counts.update(
        tonight=len(tonight),
        tonight_malignant=int((tonight["reading"] == "malignant").sum()),
        diagnosed=int((tried["status"] == "ok").sum()),
        failed=int((tried["status"] == "error").sum()),
        not_ingested=len(failed),
    )
    redone = set(new_videos["video_id"])
    diagnoses_table = _merge(diagnoses, new_videos, version, redone, DIAGNOSES)
    tracklets_table = _merge(tracklets, new_tracklets, version, redone, TRACKLET_DIAGNOSES)
    write_table(tracklets_table, out.tracklet_diagnoses)
    write_table(diagnoses_table, out.diagnoses)  # last: it marks the work done
    shutil.rmtree(out.parts_dir(version), ignore_errors=True)  # merged: the parts are done
    with contextlib.suppress(OSError):  # and their folder, when no other version's is left
        out.parts_root.rmdir()
    return _summary(
        out,
        data,
        version,
        diagnoses_table.to_pandas(),
        tracklets_table.to_pandas(),
        counts,
        True,
        started,
        expected,
    )


def _lost_shards(data: IngestFolder, videos: pd.DataFrame, todo: set[str]) -> list[str]:
    """Videos ingested ok, not to be read tonight, whose frames shard is gone or is not the
    file ingest wrote (its size, or its modification time and then its SHA-256, differ):
    a diagnosis stays as it was, and the operator hears of it (ingest writes the shard
    again)."""
    ok = videos.loc[videos["status"] == "ok", "video_id"]
    lost = [
        v
        for v in ok
        if v not in todo and data.shard_problem("frames", v, trust_unchanged=True) is not None
    ]
    if lost:
        log.warning(
            "predict: %d diagnosed videos have lost their frames shard or hold a damaged one "
            "since (e.g. %s): their diagnoses stay; ingest their manifest again to repair the "
            "shards",
            len(lost),
            lost[0],
        )
    return lost


def _summary(
    out: PredictFolder,
    data: IngestFolder,
    version: str,
    diagnoses: pd.DataFrame,
    tracklets: pd.DataFrame,
    counts: dict[str, int],
    written: bool,
    started: float,
    expected: dict | None,
) -> PredictSummary:
    """The summary of ``version``'s rows; written to summary.json when the tables were, or
    when it names another version latest (this one ran last: index and score read it).
    ``expected``: the share the bundle reads malignant (its record's), warned against."""
    mine = diagnoses[diagnoses["model_version"] == version]
    summary = PredictSummary(
        out.root,
        version,
        len(mine),
        counts["diagnosed"],
        counts["failed"],
        counts["not_ingested"],
        counts["resumed"],
        counts["unchanged"],
        counts["lost_shards"],
        int((mine["status"] == "error").sum()),
        int((mine["reading"] == "malignant").sum()),
        int((tracklets["model_version"] == version).sum()),
        written,
        time.perf_counter() - started,
        counts["tonight"],
        counts["tonight_malignant"],
        expected,
    )
    if warning := summary.share_warning():
        log.warning(warning)
    recorded = out.summary
    if not recorded.exists() or written or json.loads(recorded.read_text())["latest"] != version:
        versions = {
            v: {
                "videos": len(part),
                "errors": int((part["status"] == "error").sum()),
                "malignant": int((part["reading"] == "malignant").sum()),
            }
            for v, part in diagnoses.groupby("model_version")
        }
        last_run = {**counts, "expected_share": expected}
        write_json({"latest": version, "versions": versions, "last_run": last_run}, out.summary)
        describe(out.root, data.root)
    elif not out.report.exists():  # a folder an older usv_ray wrote: its section now
        describe(out.root, data.root)
    return summary
