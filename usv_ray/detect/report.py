"""Detect's section of the report: the detector's AP on the validation and test patients,
its precision-recall curve and example frames; counts from ``splits.parquet``."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import DetectFolder, RunFolder

PART = RunFolder.part("detect")
TITLE, ORDER = PART.title, PART.order
FIRST = ("detection",)
TITLES = {
    "detection": "Detection of nodules in frames: AP at IoU 0.5 and over IoU 0.5:0.95 "
    "(COCO's evaluation), on the validation and test patients",
    "pr": "Detection: precision-recall at IoU 0.5",
    "examples": "Detection: test frames with their true boxes and the detections",
}
HEADINGS = {
    "detection": {
        "videos": "Videos",
        "frames": "Frames",
        "nodule_boxes": "Nodule boxes",
        "ap50": "AP at IoU 0.5, %",
        "ap": "AP at IoU 0.5:0.95, %",
    },
}


def _counts(folder: DetectFolder) -> tuple[str, str] | None:
    """What the detector trained and was tested on (its splits table)."""
    counted = sections.videos_by_split(folder.splits, ("train", "val", "test"))
    if counted is None:
        return None
    words, videos = counted
    return f"annotated videos split by patient: {words}", f"{videos} annotated videos"


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write detect's report section (``out/report.json``) from what ``out`` holds: its
    table, plots, splits and record; ``data``, the data folder it read, else the record's.
    Returns the path. Detect calls it at the end of its run, after its record."""
    folder = DetectFolder(out)
    names = (TITLES, HEADINGS, FIRST)
    return sections.write_training_section(folder, TITLE, ORDER, names, _counts(folder), data)
