"""Pretrain's section of the report: its training curve per epoch; counts from
``splits.parquet``."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import PretrainFolder, RunFolder

PART = RunFolder.part("pretrain")
TITLE, ORDER = PART.title, PART.order
FIRST = ("pretraining",)
TITLES = {
    "pretraining": "Contrastive pretraining of the frame trunk, per epoch: training loss, "
    "and on the held-out patients' videos the contrastive loss and the pair accuracy (the "
    "share of views whose nearest view is their pair); the bundle keeps the best epoch",
    "losses": "Contrastive pretraining: the losses per epoch",
}
HEADINGS = {
    "pretraining": {
        "epoch": "Epoch",
        "train_loss": "Training loss",
        "val_loss": "Validation loss",
        "val_pair_acc": "Pair accuracy, validation",
        "best": "Kept",
    },
}


def _counts(folder: PretrainFolder) -> tuple[str, str] | None:
    """What the trunk learnt from (its splits table)."""
    counted = sections.videos_by_split(folder.splits, ("train", "val"))
    if counted is None:
        return None
    words, videos = counted
    return f"every ingested video, no label read, split by patient: {words}", f"{videos} videos"


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write pretrain's report section (``out/report.json``) from what ``out`` holds.
    Returns the path. Pretrain calls it at the end of its run, after its record."""
    folder = PretrainFolder(out)
    names = (TITLES, HEADINGS, FIRST)
    return sections.write_training_section(folder, TITLE, ORDER, names, _counts(folder), data)
