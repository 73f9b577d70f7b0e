"""Every folder's paths: an ingest folder (:class:`IngestFolder`), each stage's output folder,
and a run of every stage (:class:`RunFolder`). A stage asks here for a video's frames
shard, a tracklet shard, a table or its own output paths; nothing joins a path by hand.

One idea in one file, over 500 lines on purpose: the whole layout reads in one place, and
docs/folders.md is drawn from these classes (:mod:`usv_ray.layout.reference`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from usv_ray.errors import UsvRayError

# the ingest settings that decide what a model reads: a folder is made with one value of
# each (ingest.json), and a bundle names those its inputs need
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
    "crop_from_header",
)
TRACKLET_META = ["tracklet_id", "video_id", "patient_key", "study_key", "nodule_id"]
SHARDS = ("frames", "tracklets")  # the shards of a video, each checked against its journal


class DamagedDataError(UsvRayError, ValueError):
    """Shards of a data folder are missing or damaged: what a training stage would read."""


class LayoutError(UsvRayError, FileNotFoundError):
    """A folder lacks what a stage reads from it (a stage that did not run first)."""


class Folder:
    """A folder of a known layout at ``root``."""

    TITLE = ""  # the folder, as its reference section is titled (usv_ray.layout.reference)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def need(self, path: Path, stage: str) -> Path:
        """``path``, or a :class:`LayoutError` saying which stage writes it."""
        if not path.exists():
            raise LayoutError(f"{path} not found: run `usv-ray {stage}` into {self.root} first")
        return path


# ---------------------------------------------------------------------------- ingest


class IngestFolder(Folder):
    """What ``usv-ray ingest`` writes: the tables, and a frames and a tracklets shard per
    video; every later stage reads it."""

    TITLE = "ingest (`DATA`)"

    @property
    def videos(self) -> Path:
        return self.root / "videos.parquet"

    @property
    def errors(self) -> Path:
        return self.root / "errors.parquet"

    @property
    def record(self) -> Path:
        return self.root / "ingest.json"

    @property
    def keying(self) -> Path:
        return self.root / "keying.json"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def tracklets_dir(self) -> Path:
        return self.root / "tracklets"

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    @property
    def report(self) -> Path:
        """The data's report section (:mod:`usv_ray.report`)."""
        return self.root / "report.json"

    def frames(self, video_id: str) -> Path:
        """The frames shard of a video."""
        return self.frames_dir / f"{video_id}.parquet"

    def tracklets(self, video_id: str) -> Path:
        """The tracklets shard of a video (there only when it has tracklets)."""
        return self.tracklets_dir / f"{video_id}.parquet"

    def journal(self, video_id: str) -> Path:
        """The journal entry that marks a video done."""
        return self.journal_dir / f"{video_id}.json"

    def shard(self, kind: str, video_id: str) -> Path:
        """The ``frames`` or ``tracklets`` shard of a video."""
        return self.frames(video_id) if kind == "frames" else self.tracklets(video_id)

    def journal_entry(self, video_id: str) -> dict[str, Any] | None:
        """What ingest recorded of a video (None: not ingested, or an unreadable entry)."""
        import json

        try:
            entry = json.loads(self.journal(video_id).read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def shard_problem(
        self,
        kind: str,
        video_id: str,
        entry: dict[str, Any] | None = None,
        trust_unchanged: bool = False,
    ) -> str | None:
        """Why the ``kind`` shard of a video cannot be trusted (missing, or not the file ingest
        wrote: its size or its SHA-256 differs from what the journal recorded), or None when
        it can. With ``trust_unchanged``, a shard whose size and modification time are the
        recorded ones is not hashed (a rerun of ingest checks every shard this way; the
        stages that read a shard hash it). A shard the journal says there is none of, or an
        entry of an older ingest without digests, is only checked to exist when expected."""
        from usv_ray.io import file_digest

        entry = self.journal_entry(video_id) if entry is None else entry
        recorded = (entry or {}).get("shards", {}).get(kind, "unrecorded")
        path = self.shard(kind, video_id)
        if recorded is None:
            return None  # the video has no such shard
        if not path.is_file():
            return (
                f"its {kind} shard is missing"
                if recorded != "unrecorded" or kind == "frames"
                else None
            )
        if recorded == "unrecorded":
            return None
        stat = path.stat()
        if stat.st_size != recorded["bytes"]:
            changed = True
        elif trust_unchanged and stat.st_mtime_ns == recorded.get("mtime_ns"):
            changed = False
        else:
            changed = file_digest(path) != recorded["sha256"]
        if changed:
            return (
                f"its {kind} shard is damaged (not the file ingest wrote: size or SHA-256 differ)"
            )
        return None

    def check_shards(self, video_ids: Iterable[str], kinds: Sequence[str] = SHARDS) -> None:
        """Refuse to train on shards that are missing or damaged, naming them.

        Raises:
            DamagedDataError: the videos whose shards cannot be trusted, and the remedy.
        """
        problems = [
            f"{video_id}: {problem}"
            for video_id in sorted(video_ids)
            for kind in kinds
            if (problem := self.shard_problem(kind, video_id))
        ]
        if problems:
            shown = "; ".join(problems[:3]) + (
                f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            raise DamagedDataError(
                f"{len(problems)} shards of {self.root} cannot be trusted ({shown}): run `usv-ray "
                "ingest` again with the manifests that hold these videos, which writes them again"
            )

    def frame_shards(self, video_ids: Iterable[str]) -> list[str]:
        """The frames shards of ``video_ids``, in video_id order, checked against their
        journal (what trains or is scored must be the frames ingest wrote).

        Raises:
            DamagedDataError: a shard is missing or damaged (see :meth:`check_shards`).
        """
        video_ids = sorted(video_ids)
        self.check_shards(video_ids, ("frames",))
        return [str(self.frames(video_id)) for video_id in video_ids]

    def tracklet_shards(self) -> list[str]:
        """Every tracklets shard, in video_id order."""
        return sorted(str(p) for p in self.tracklets_dir.glob("*.parquet"))

    def read_videos(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The videos table (``columns`` of it).

        Raises:
            LayoutError: not an ingest folder.
        """
        import pyarrow.parquet as pq

        path = self.need(self.videos, "ingest")
        return pq.read_table(path, columns=None if columns is None else list(columns)).to_pandas()

    def read_tracklets(
        self, columns: Sequence[str] = TRACKLET_META, unreadable: dict[str, str] | None = None
    ) -> pa.Table:
        """``columns`` of every tracklet of the folder (no clips unless asked), by tracklet_id.

        A shard that cannot be read (a damaged file) is left out: with ``unreadable`` given,
        its video_id and why are added to it; without, it is an error.

        Raises:
            LayoutError: when the folder holds no tracklet shards.
            DamagedDataError: an unreadable shard, when ``unreadable`` is not given.
        """
        import pyarrow.parquet as pq

        shards = self.tracklet_shards()
        if not shards:
            raise LayoutError(f"no tracklets under {self.tracklets_dir}: run ingest first")
        tables = []
        for shard in shards:
            try:
                tables.append(pq.read_table(shard, columns=list(columns)))
            except (OSError, ValueError) as exc:  # pyarrow's errors of a damaged file
                why = f"its tracklets shard cannot be read ({type(exc).__name__}: {exc})"
                if unreadable is None:
                    raise DamagedDataError(
                        f"{shard}: {why}: run `usv-ray ingest` again with the manifest that "
                        "holds the video"
                    ) from exc
                unreadable[Path(shard).stem] = why
        if not tables:
            return pa.schema([pa.field(c, pa.string()) for c in columns]).empty_table()
        return pa.concat_tables(tables, promote_options="permissive").sort_by("tracklet_id")

    def settings(self) -> dict[str, Any]:
        """The ingest settings its frames and tracklets were made with (``ingest.json``);
        a setting :func:`~usv_ray.config.added` since the folder was made has its default.

        Raises:
            LayoutError: no record (not an ingest folder, or an older usv_ray wrote it) or a
                damaged one.
        """
        from usv_ray.config import IngestConfig, added_defaults

        if not self.record.is_file():
            raise LayoutError(
                f"{self.root} has no {self.record.name}: it is not an ingest folder, or an "
                "older usv_ray wrote it; run `usv-ray ingest` into a new folder first"
            )
        try:
            recorded = json.loads(self.record.read_text())["settings"]
            return {**added_defaults(IngestConfig), **recorded}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LayoutError(
                f"{self.record} is damaged ({exc!r}): ingest into a new folder"
            ) from exc

    def claim(self, cfg: Any) -> None:
        """Record the :data:`INGEST_CONTENT` settings of ``cfg`` (an ``IngestConfig``), or
        refuse a folder whose frames were made with other values: one folder holds one
        sampling, frame size, crop and patch shape, so a model trained on it reads every
        video alike, and a night's manifest extends it only as it was made.

        Raises:
            FolderClaimed: naming the settings that differ.
        """
        from usv_ray.io import FolderClaimed, write_json

        settings = ingest_settings(cfg)
        if self.record.is_file():
            found = self.settings()
            differ = [
                f"ingest.{name}={settings[name]!r} (the folder has {found.get(name)!r})"
                for name in INGEST_CONTENT
                if found.get(name) != settings[name]
            ]
            if not differ:
                return
            raise FolderClaimed(
                f"{self.root} holds videos ingested with other settings: "
                + ", ".join(differ)
                + "; ingest into a new --out folder (or delete this one) rather than mixing them"
            )
        write_json({"format": 1, "settings": settings}, self.record)


def read_checked(
    path: str | Path, recorded: dict[str, Any] | None, columns: Sequence[str] | None = None
) -> pa.Table:
    """A shard read once and checked against the size and SHA-256 its journal ``recorded``
    (None: an older ingest's, checked only by reading it).

    Raises:
        DamagedDataError: the shard is missing, is not the file ingest wrote, or cannot be
            read; the message says which and what to do.
    """
    import hashlib

    import pyarrow.parquet as pq

    remedy = "run `usv-ray ingest` again with the manifest that holds the video"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DamagedDataError(f"{Path(path).name} is missing ({exc.strerror}): {remedy}") from exc
    if recorded is not None and (
        len(data) != recorded["bytes"] or hashlib.sha256(data).hexdigest() != recorded["sha256"]
    ):
        raise DamagedDataError(
            f"{Path(path).name} is damaged: not the file ingest wrote (size or SHA-256 "
            f"differ): {remedy}"
        )
    try:
        return pq.read_table(
            pa.BufferReader(data), columns=None if columns is None else list(columns)
        )
    except (OSError, ValueError) as exc:  # pyarrow's errors of a damaged file
        raise DamagedDataError(
            f"{Path(path).name} cannot be read ({type(exc).__name__}: {exc}): {remedy}"
        ) from exc


def ingest_settings(cfg: Any) -> dict[str, Any]:
    """The :data:`INGEST_CONTENT` settings of an ``IngestConfig``, as plain JSON values."""
    from usv_ray.config import to_dict

    values = to_dict(cfg)
    return {name: values[name] for name in INGEST_CONTENT}


# ---------------------------------------------------------------------------- stages


class StageFolder(Folder):
    """A training or evaluation stage's ``--out``: its record, tables, plots and bundle."""

    STAGE = ""

    @property
    def record(self) -> Path:
        """The stage's claim and summary (:class:`StageRun`)."""
        return self.root / f"{self.STAGE}.json"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def runs(self) -> Path:
        """Ray Train runs: checkpoints, and each finished model in ``<run>/models/``."""
        return self.root / "runs"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def report(self) -> Path:
        """The stage's report section (:mod:`usv_ray.report`)."""
        return self.root / "report.json"


class ClassifyFolder(StageFolder):
    """What ``usv-ray classify`` writes."""

    STAGE = "classify"
    TITLE = "classify (`CLS`)"

    @property
    def folds(self) -> Path:
        return self.root / "folds.parquet"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions" / "predictions.parquet"

    @property
    def calibration_share(self) -> Path:
        return self.root / "calibration_share.parquet"


class ReidFolder(StageFolder):
    """What ``usv-ray reid`` writes."""

    STAGE = "reid"
    TITLE = "reid (`REID`)"

    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"


class DetectFolder(StageFolder):
    """What ``usv-ray detect`` writes."""

    STAGE = "detect"
    TITLE = "detect (`DET`)"

    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"


class PretrainFolder(StageFolder):
    """What ``usv-ray pretrain`` writes."""

    STAGE = "pretrain"
    TITLE = "pretrain (`PRE`)"

    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"


class PredictFolder(Folder):
    """What ``usv-ray predict`` writes."""

    TITLE = "predict (`PRED`)"

    @property
    def diagnoses(self) -> Path:
        return self.root / "diagnoses.parquet"

    @property
    def tracklet_diagnoses(self) -> Path:
        return self.root / "tracklet_diagnoses.parquet"

    def latest(self) -> tuple[str, pd.DataFrame]:
        """The bundle version predict ran last (its summary's) and that version's diagnoses
        of the videos it could read (status ok); the summary must exist."""
        import pyarrow.parquet as pq

        from usv_ray.schemas import DIAGNOSES

        version = json.loads(self.summary.read_text())["latest"]
        rows = pq.read_table(self.diagnoses, schema=DIAGNOSES).to_pandas()
        return version, rows[(rows["model_version"] == version) & (rows["status"] == "ok")]

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def parts_root(self) -> Path:
        """The rows runs have committed and not yet merged, by bundle version."""
        return self.root / "parts"

    def parts_dir(self, version: str) -> Path:
        """The rows a run of the bundle ``version`` has committed so far (merged at its end)."""
        return self.parts_root / version

    def parts(self, version: str) -> list[Path]:
        """The committed parts of ``version``, in order."""
        return sorted(self.parts_dir(version).glob("part-*.parquet"))

    def part(self, version: str, number: int) -> Path:
        return self.parts_dir(version) / f"part-{number:05d}.parquet"


class ExportFolder(Folder):
    """What ``usv-ray export`` writes: one document per exam and format, each named by the
    first 16 characters of its keyed ``study_key`` (never by a source identifier)."""

    TITLE = "export (`EXPORT`)"

    @property
    def sr_dir(self) -> Path:
        return self.root / "sr"

    @property
    def fhir_dir(self) -> Path:
        return self.root / "fhir"

    def sr(self, study_key: str) -> Path:
        return self.sr_dir / f"{study_key[:16]}.dcm"

    def fhir(self, study_key: str) -> Path:
        return self.fhir_dir / f"{study_key[:16]}.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


class IndexFolder(Folder):
    """What ``usv-ray index`` writes."""

    TITLE = "index (`INDEX`)"

    @property
    def nodules(self) -> Path:
        return self.root / "nodules.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def embedding_runs(self) -> list[Path]:
        """The folders of embeddings each run added, in order."""
        return sorted(p for p in self.embeddings.glob("[0-9]" * 5) if p.is_dir())

    def embedding_run(self, number: int) -> Path:
        return self.embeddings / f"{number:05d}"

    @property
    def errors(self) -> Path:
        return self.root / "errors.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


class ScoreFolder(Folder):
    """What ``usv-ray score`` writes, under its ``--out``'s ``score/``."""

    TITLE = "score (`DIR/score`)"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def gap(self) -> Path:
        return self.root / "gap"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


class TuneFolder(Folder):
    """What ``usv-ray tune`` writes."""

    TITLE = "tune (`TUNE`)"

    @property
    def record(self) -> Path:
        return self.root / "tune.json"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def best(self) -> Path:
        return self.root / "best.yaml"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def experiment(self) -> Path:
        """The Tune experiment, which a rerun resumes."""
        return self.root / "sweep"

    @property
    def tau_interval(self) -> Path:
        """The tau target's chosen tau and its interval over patient resamples."""
        return self.root / "tau_interval"

    @property
    def link(self) -> Path:
        """The tau target's link model, cross-fitted on the validation patients."""
        return self.root / "link"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


@dataclass(frozen=True)
class Part:
    """A stage folder of a :class:`RunFolder`: its name there, its report section's title
    and place; ``each``: what each subfolder is when every subfolder is a section."""

    folder: str
    title: str
    order: int
    each: str = ""


class RunFolder(Folder):
    """A folder of stage outputs laid out as ``usv-ray demo`` lays it out (what ``usv-ray
    score`` and ``usv-ray report`` read): one subfolder per stage."""

    # every stage folder of a run, in the order of the report's sections
    PARTS = (
        Part("data", "Data", 0),
        Part("pretrain", "Self-supervised pretraining of the frame trunk", 5),
        Part("classify", "Classification (benign / malignant per video)", 10),
        Part("reid", "Nodule re-identification (same nodule or not, within a patient)", 20),
        Part("detect", "Nodule detection (the detector that makes automatic tracklets)", 30),
        Part("predict", "Diagnoses (the diagnosis bundle applied to every ingested video)", 40),
        Part("index", "Nodule index (tracklets clustered into nodules per patient)", 50),
        Part("score", "The night against the hidden truth (synthetic archives only)", 60),
        Part("tune", "Tuning sweeps", 70, each="sweep"),
    )

    @classmethod
    def part(cls, folder: str) -> Part:
        """The part of a run that the stage folder ``folder`` is."""
        return next(p for p in cls.PARTS if p.folder == folder)

    @property
    def archive(self) -> Path:
        """A demo's synthetic archive (synth)."""
        return self.root / "archive"

    @property
    def data(self) -> IngestFolder:
        return IngestFolder(self.root / "data")

    @property
    def pretrain(self) -> PretrainFolder:
        return PretrainFolder(self.root / "pretrain")

    @property
    def classify(self) -> ClassifyFolder:
        return ClassifyFolder(self.root / "classify")

    @property
    def reid(self) -> ReidFolder:
        return ReidFolder(self.root / "reid")

    @property
    def detect(self) -> DetectFolder:
        return DetectFolder(self.root / "detect")

    @property
    def predict(self) -> PredictFolder:
        return PredictFolder(self.root / "predict")

    @property
    def index(self) -> IndexFolder:
        return IndexFolder(self.root / "index")

    @property
    def score(self) -> ScoreFolder:
        return ScoreFolder(self.root / "score")

    def tune(self, target: str) -> TuneFolder:
        return TuneFolder(self.root / "tune" / target)

    def tunes(self) -> list[TuneFolder]:
        """Every sweep under ``tune/``."""
        return [TuneFolder(p) for p in sorted((self.root / "tune").glob("*/")) if p.is_dir()]
