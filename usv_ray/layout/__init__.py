"""Where everything is: the layer that knows every folder's layout.

Stages meet here, at the schemas (:mod:`usv_ray.schemas`) and at the bundles
(:mod:`usv_ray.bundle`), never in each other's modules:

- :mod:`~usv_ray.layout.folders`: every folder's paths (an ingest folder, each stage's
  output folder, a run of every stage);
- :mod:`~usv_ray.layout.claim`: how a stage claims its ``--out`` (:class:`StageRun`: one
  fingerprint policy, a record, the stage's summary);
- :mod:`~usv_ray.layout.reference`: what each folder holds, for ``docs/folders.md``.
"""

from usv_ray.layout.claim import FolderBusy, StageRun, digest_rows, fingerprint, hold, holds
from usv_ray.layout.folders import (
    INGEST_CONTENT,
    SHARDS,
    TRACKLET_META,
    ClassifyFolder,
    DamagedDataError,
    DetectFolder,
    ExportFolder,
    Folder,
    IndexFolder,
    IngestFolder,
    LayoutError,
    Part,
    PredictFolder,
    PretrainFolder,
    ReidFolder,
    RunFolder,
    ScoreFolder,
    StageFolder,
    TuneFolder,
    ingest_settings,
    read_checked,
)

__all__ = [
    "INGEST_CONTENT",
    "SHARDS",
    "TRACKLET_META",
    "ClassifyFolder",
    "DamagedDataError",
    "DetectFolder",
    "ExportFolder",
    "Folder",
    "FolderBusy",
    "IndexFolder",
    "IngestFolder",
    "LayoutError",
    "Part",
    "PredictFolder",
    "PretrainFolder",
    "ReidFolder",
    "RunFolder",
    "ScoreFolder",
    "StageFolder",
    "StageRun",
    "TuneFolder",
    "digest_rows",
    "fingerprint",
    "hold",
    "holds",
    "ingest_settings",
    "read_checked",
]
