"""Every folder's paths: an ingest folder (:class:`IngestFolder`), each stage's output folder,
and a run of every stage (:class:`RunFolder`). A stage asks here for a video's frames
shard, a tracklet shard, a table or its own output paths; nothing joins a path by hand."""

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
)
TRACKLET_META = ["tracklet_id", "video_id", "patient_key", "study_key", "nodule_id"]


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

    def frame_shards(self, video_ids: Iterable[str]) -> list[str]:
        """The frames shards of ``video_ids``, in video_id order."""
        return [str(self.frames(video_id)) for video_id in sorted(video_ids)]

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

    def read_tracklets(self, columns: Sequence[str] = TRACKLET_META) -> pa.Table:
        """``columns`` of every tracklet of the folder (no clips unless asked), by tracklet_id.

        Raises:
            LayoutError: when the folder holds no tracklet shards.
        """
        import pyarrow.parquet as pq

        shards = self.tracklet_shards()
        if not shards:
            raise LayoutError(f"no tracklets under {self.tracklets_dir}: run ingest first")
        table = pa.concat_tables(pq.read_table(s, columns=list(columns)) for s in shards)
        return table.sort_by("tracklet_id")

    def settings(self) -> dict[str, Any]:
        """The ingest settings its frames and tracklets were made with (``ingest.json``).

        Raises:
            LayoutError: no record (not an ingest folder, or an older usv_ray wrote it) or a
                damaged one.
        """
        if not self.record.is_file():
            raise LayoutError(
                f"{self.root} has no {self.record.name}: it is not an ingest folder, or an "
                "older usv_ray wrote it; run `usv-ray ingest` into a new folder first"
            )
        try:
            return json.loads(self.record.read_text())["settings"]
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


class PredictFolder(Folder):
    """What ``usv-ray predict`` writes."""

    TITLE = "predict (`PRED`)"

    @property
    def diagnoses(self) -> Path:
        return self.root / "diagnoses.parquet"

    @property
    def tracklet_diagnoses(self) -> Path:
        return self.root / "tracklet_diagnoses.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


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
