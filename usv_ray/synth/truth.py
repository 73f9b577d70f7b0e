"""The hidden truth of a synthetic archive, ``out/truth.json``: for evaluation code only.

:func:`~usv_ray.synth.archive.write_archive` writes it beside the archive's manifest. It
holds what the manifests leave out (the labels of tonight's exams, the boxes of videos
without annotations, the real patient ID of rows that leave it to a DICOM tag), so the
pipeline never reads it; evaluation code does, through :func:`load_truth`.

Format 1, one compact JSON object::

    {"format": 1, "seed": S, "videos": [
      {"video": "videos/<stem>.mp4",       # the manifest's video cell, relative to it
       "manifest": "manifest.csv",         # or "night/manifest.csv", relative to out/
       "batch": "archive",                 # or "night"
       "patient_id": "MRN...", "study_id": "YYYY-MM-DD", "exam_date": "YYYY-MM-DD",
       "label": "malignant",               # or "benign": malignant iff a shown nodule is
       "annotated": true,                  # the manifest row gives an annotations file
       "n_frames": T, "width": W, "height": H,
       "nodules": [                        # every nodule visible in at least one frame
         {"nodule_id": "n1", "malignant": true,
          "frames": [f, ...],              # the visible frames, increasing
          "boxes": [[x0, y0, x1, y1], ...]}  # integer pixels, one per visible frame
       ]}, ...]}

A nodule is visible in a frame when the synthetic annotator would box it there; an
annotated video's key frames are some of these frames, with the same boxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from usv_ray.errors import UsvRayError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TRUTH_FILE", "TRUTH_FORMAT", "Truth", "TruthError", "load_truth", "nodule_table"]

TRUTH_FILE = "truth.json"  # in the archive's folder, beside manifest.csv
TRUTH_FORMAT = 1  # the version of the schema above; a reader rejects any other

VIDEO_COLUMNS = (
    "video", "manifest", "batch", "patient_id", "study_id", "exam_date", "label",
    "annotated", "n_frames", "width", "height", "n_nodules",
)  # fmt: skip
APPEARANCE_COLUMNS = ("video", "batch", "patient_id", "nodule_id", "malignant", "n_visible")
BOX_COLUMNS = ("video", "batch", "nodule_id", "frame", "x0", "y0", "x1", "y1")


class TruthError(UsvRayError, ValueError):
    """A truth file that is missing or that this reader cannot read."""


@dataclass(frozen=True, eq=False)
class Truth:
    """The truth of an archive and its night batch, as tables.

    A video is keyed by ``(batch, video)``: its video cell is relative to its manifest.
    """

    seed: int  # the synth seed the archive was written with
    videos: pd.DataFrame  # one row per video, in manifest order: VIDEO_COLUMNS
    appearances: pd.DataFrame  # one row per nodule a video shows: APPEARANCE_COLUMNS
    boxes: pd.DataFrame  # one row per visible frame of a shown nodule: BOX_COLUMNS


def load_truth(path: str | Path) -> Truth:
    """Read ``truth.json`` (or the archive folder holding it) into a :class:`Truth`.

    Raises:
        TruthError: when the file is missing, is not JSON, or has another format.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    if not path.is_file():
        raise TruthError(
            f"{path} not found: the truth file is written by `usv-ray synth` beside the "
            "archive's manifest.csv (synthetic archives only)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TruthError(f"{path} is not a truth file: {exc}") from exc
    found = data.get("format") if isinstance(data, dict) else None
    if found != TRUTH_FORMAT:
        raise TruthError(
            f"{path}: truth format {found!r} is not the one this reader knows ({TRUTH_FORMAT})"
        )

    videos, appearances, boxes = [], [], []
    for v in data["videos"]:
        videos.append({c: v[c] for c in VIDEO_COLUMNS[:-1]} | {"n_nodules": len(v["nodules"])})
        for n in v["nodules"]:
            appearances.append(
                {
                    "video": v["video"],
                    "batch": v["batch"],
                    "patient_id": v["patient_id"],
                    "nodule_id": n["nodule_id"],
                    "malignant": n["malignant"],
                    "n_visible": len(n["frames"]),
                }
            )
            boxes.extend(
                (v["video"], v["batch"], n["nodule_id"], frame, *box)
                for frame, box in zip(n["frames"], n["boxes"], strict=True)
            )
    video_table = pd.DataFrame(videos, columns=list(VIDEO_COLUMNS))
    video_table["exam_date"] = pd.to_datetime(video_table["exam_date"], format="%Y-%m-%d")
    video_table = video_table.astype(
        {"annotated": bool, "n_frames": "int64", "width": "int64", "height": "int64"}
    )
    appearance_table = pd.DataFrame(appearances, columns=list(APPEARANCE_COLUMNS)).astype(
        {"malignant": bool, "n_visible": "int64"}
    )
    box_table = pd.DataFrame(boxes, columns=list(BOX_COLUMNS)).astype(
        {c: "int64" for c in ("frame", "x0", "y0", "x1", "y1")}
    )
    return Truth(int(data["seed"]), video_table, appearance_table, box_table)


def nodule_table(truth: Truth) -> pd.DataFrame:
    """Every nodule shown in some video: ``patient_id, nodule_id, malignant``, sorted.

    A nodule's identity is ``(patient_id, nodule_id)``; one that no video shows is not
    in the truth file, so it is not here either.
    """
    table = truth.appearances[["patient_id", "nodule_id", "malignant"]].drop_duplicates()
    return table.sort_values(["patient_id", "nodule_id"], ignore_index=True)
