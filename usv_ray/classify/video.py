"""The 3D-CNN baselines of the variable-frame paper (method 1 of docs/methods.md), trained and
applied: the models live in :mod:`usv_ray.models.video`.

Each video becomes one clip of ``clip_frames`` frames spread uniformly over its kept frames
(videos with fewer frames repeat their nearest frames, so every video gets a clip), resized
to ``clip_size`` x ``clip_size``. For every model and every cross-validation fold k, the
model is trained on the clips of the videos outside fold k (less fold k's validation
videos, on which it picks its best epoch) and predicts the videos of fold k. All of it is
one run of the training runner (:mod:`usv_ray.runner`), (model, fold) by (model, fold).

Shapes: B clips, T frames per clip, S = clip_size; clips are gray, ``(B, 1, T, S, S)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from usv_ray.config import ClassifyConfig
from usv_ray.frames import resize_gray, uniform_positions
from usv_ray.imaging import augment, normalise
from usv_ray.layout import IngestFolder
from usv_ray.models.video import build_video_model
from usv_ray.runner import (
    RunSettings,
    Worker,
    classifier_scores,
    in_order,
    load_model,
    numpy_collate,
    shuffled_batches,
    train_models,
)

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

# One row per video, in memory only (a Ray Dataset between reading and training; never
# written to Parquet, so it is not one of the stage tables of usv_ray.schemas).
CLIPS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),  # 0 benign, 1 malignant
        pa.field("clip", pa.binary(), nullable=False),  # uint8 gray, frames x size x size
        pa.field("frames", pa.int16(), nullable=False),
        pa.field("size", pa.int16(), nullable=False),
    ]
)
TRAIN_COLUMNS = ["label", "clip", "frames", "size"]
VIDEOS_PER_TASK = 16  # videos one Ray Data task reads: many tiny tasks are slow on few CPUs


# -----------------------------------------------------------------------------
# Clips: a video's kept frames -> count frames of size x size


def make_clip(frames: np.ndarray, count: int, size: int) -> np.ndarray:
    """A video's frames ``(T, H, W)`` uint8 -> its clip ``(count, size, size)`` uint8.

    Frames are taken at :func:`uniform_positions` and resized by :func:`resize_gray`.

    Raises:
        ValueError: for an input that is not a non-empty uint8 stack of 2-D frames.
    """
    if frames.ndim != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"expected uint8 frames (T >= 1, H, W), got {frames.dtype} {tuple(frames.shape)}"
        )
    return np.stack(
        [resize_gray(frames[p], size, size) for p in uniform_positions(len(frames), count)]
    )


def read_clips(batch: dict[str, np.ndarray], count: int, size: int) -> pa.Table:
    """Ray Data batch of frames-shard paths (``path``) -> one :data:`CLIPS` row per video.

    Each shard holds one video's kept frames; only the frames the clip uses are decoded,
    each with its own height and width.

    Raises:
        ValueError: for a shard with no frames, or with more than one video in it.
    """
    import pyarrow.parquet as pq

    columns = ["video_id", "label", "seq_index", "image", "height", "width"]
    rows = {name: [] for name in CLIPS.names}
    for path in batch["path"]:
        table = pq.read_table(path, columns=columns).sort_by("seq_index")
        video_ids = pc.unique(table["video_id"]).to_pylist()
        if len(video_ids) != 1:
            raise ValueError(f"{path}: expected the frames of one video, found {video_ids}")
        images = table["image"].to_pylist()
        heights, widths = table["height"].to_pylist(), table["width"].to_pylist()
        clip = np.stack(
            [
                resize_gray(
                    np.frombuffer(images[p], np.uint8).reshape(heights[p], widths[p]), size, size
                )
                for p in uniform_positions(len(images), count)
            ]
        )  # (count, size, size)
        rows["video_id"].append(video_ids[0])
        rows["label"].append(table["label"][0].as_py())
        rows["clip"].append(clip.tobytes())
        rows["frames"].append(count)
        rows["size"].append(size)
    return pa.Table.from_pydict(rows, schema=CLIPS)


def load_clips(data: Path, video_ids: Sequence[str], count: int, size: int) -> ray.data.Dataset:
    """One :data:`CLIPS` row per video of ``video_ids`` (sorted), read from ``data/frames``.

    Lazy: a Ray Dataset over the shard paths, ~16 videos per task, each task reading whole
    shards, so a video's frames never straddle two batches. Clips stay uint8.
    """
    import ray.data

    paths = IngestFolder(data).frame_shards(video_ids)
    items = [{"path": path} for path in paths]
    blocks = max(1, math.ceil(len(items) / VIDEOS_PER_TASK))
    return in_order(ray.data.from_items(items, override_num_blocks=blocks)).map_batches(
        read_clips,
        fn_kwargs={"count": count, "size": size},
        batch_size=VIDEOS_PER_TASK,
        batch_format="numpy",
    )


def collate_clips(batch: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """Ray Data batch of :data:`CLIPS` rows -> (clips uint8 (B, 1, T, S, S), labels (B,))."""
    clips = batch["clip"]  # (B,) bytes, each T * S * S
    frames, size = int(batch["frames"][0]), int(batch["size"][0])
    pixels = np.frombuffer(b"".join(clips), np.uint8).reshape(len(clips), 1, frames, size, size)
    return torch.from_numpy(pixels.copy()), torch.from_numpy(batch["label"].astype(np.int64))


def augment_clips(clips: Tensor, generator: torch.Generator) -> Tensor:
    """:func:`usv_ray.classify.cnn.augment` for a float clip batch ``(B, 1, T, H, W)``.

    One flip, gain and shift per clip, the same for all its frames (one probe, one gain
    setting per video): the frames go in as the channels of a ``(B, T, H, W)`` batch.
    """
    return augment(clips[:, 0], generator)[:, None]  # (B, T, H, W) -> (B, 1, T, H, W)


def augmented_clips(clips: Tensor, generator: torch.Generator) -> Tensor:
    """A uint8 training batch (B, 1, T, S, S) as the model sees it: normalised, augmented."""
    return augment_clips(normalise(clips), generator)


# -----------------------------------------------------------------------------
# Training: every (model, fold) in one run of the training runner


def _model_key(method: str, fold: int) -> str:
    """A file name for a finished model: ``R(2+1)D`` fold 3 -> ``R2p1D_fold=3``."""
    slug = method.replace("(", "").replace(")", "").replace("+", "p")
    return f"{slug}_fold={fold}"


@dataclass(frozen=True)
class VideoTask:
    """One 3D CNN to train (a :class:`usv_ray.runner.Task`): ``method`` for fold ``fold``,
    on the clips of ``train_<fold>``, validated on ``val_<fold>`` when it has one."""

    cfg: ClassifyConfig
    method: str
    fold: int
    validates: bool  # False: no validation videos, the last epoch is kept

    @property
    def key(self) -> str:
        return _model_key(self.method, self.fold)

    def build(self) -> nn.Module:
        return build_video_model(self.method)

    def open(self, worker: Worker) -> tuple[Any, Any]:
        val = self.validates and worker.rank == 0
        return (
            worker.dataset(f"train_{self.fold}"),
            worker.dataset(f"val_{self.fold}") if val else None,
        )

    def batches(self, data: tuple[Any, Any], epoch: int, worker: Worker) -> Iterable[Any]:
        seed = self.cfg.seed + epoch
        return shuffled_batches(data[0], self.cfg.video.batch_size, collate_clips, seed)
        # (B, 1, T, S, S) uint8, (B,)

    def loss(
        self, model: nn.Module, batch: Any, worker: Worker, generator: torch.Generator
    ) -> tuple[Tensor, int]:
        clips, labels = batch
        logits = model(worker.model_input(augmented_clips(clips.to(worker.device), generator)))
        return nn.functional.cross_entropy(logits, labels.to(worker.device)), len(labels)

    def validate(self, model: nn.Module, data: tuple[Any, Any], worker: Worker) -> dict:
        if data[1] is None:
            return {}
        model.eval()
        batches = data[1].iter_torch_batches(
            batch_size=2 * self.cfg.video.batch_size, collate_fn=numpy_collate(collate_clips)
        )
        return classifier_scores(
            (model(normalise(clips.to(worker.device))).softmax(1), labels)
            for clips, labels in batches
        )

    def meta(self) -> dict:
        v = self.cfg.video
        return {"model": self.method, "fold": self.fold, "clip": (v.clip_frames, v.clip_size)}


def _keep_videos(table: pa.Table, video_ids: list[str]) -> pa.Table:
    """The rows of ``table`` whose video_id is in ``video_ids``."""
    return table.filter(pc.is_in(table["video_id"], value_set=pa.array(video_ids, pa.string())))


def fit_video_models(
    cfg: ClassifyConfig,
    data: Path,
    folds: dict[str, int],
    storage: Path,
    name: str,
    val_ids: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, dict[int, dict]]:
    """Train every model of ``cfg.video.models`` for every fold k, on the videos outside k
    but ``val_ids[k]`` (fold k's validation videos, which pick the best epoch).

    ``folds`` maps video_id -> fold (labelled videos only; labels come from the frames).
    One run of the training runner, ``storage / name``: calling again with the same name
    resumes from its last checkpoint, at the (model, fold, epoch) where it stopped.

    Returns method -> fold -> the model's best weights (CPU tensors).

    Raises:
        ValueError: for a fold outside ``range(cfg.folds)``, or a fold without training
            videos (all the videos in it).
    """
    outside = sorted({f for f in folds.values() if f not in range(cfg.folds)})
    if outside:
        raise ValueError(f"fold(s) {outside} outside 0..{cfg.folds - 1} (cfg.folds={cfg.folds})")
    val_ids = {k: sorted(val_ids.get(k, ())) if val_ids else [] for k in range(cfg.folds)}
    train_ids = {
        k: sorted(v for v, f in folds.items() if f != k and v not in set(val_ids[k]))
        for k in range(cfg.folds)
    }
    empty = [k for k, ids in train_ids.items() if not ids]
    if empty:
        raise ValueError(f"no training videos for fold(s) {empty}")
    tasks = [
        VideoTask(cfg, method, k, bool(val_ids[k]))
        for method in cfg.video.models
        for k in range(cfg.folds)
    ]

    def datasets(todo: Sequence[VideoTask]) -> dict[str, ray.data.Dataset]:
        # read every clip once and keep it in the object store; each fold's sets are
        # filtered copies, materialized so epochs do not re-run the filter
        clips = load_clips(
            data, sorted(folds), cfg.video.clip_frames, cfg.video.clip_size
        ).materialize()

        def subset(ids: list[str]) -> ray.data.Dataset:
            kept = clips.map_batches(
                _keep_videos, fn_kwargs={"video_ids": ids}, batch_format="pyarrow"
            )
            return kept.select_columns(TRAIN_COLUMNS).materialize()

        sets = {}
        for k in sorted({task.fold for task in todo}):
            sets[f"train_{k}"] = subset(train_ids[k])
            if val_ids[k]:
                sets[f"val_{k}"] = subset(val_ids[k])
        return sets

    trained = train_models(
        tasks,
        RunSettings.of(cfg.video, cfg, cfg.seed),
        storage,
        name,
        datasets,
        split=lambda task: [f"train_{task.fold}"],
    )
    return {
        method: {k: load_model(trained[_model_key(method, k)].path)[0] for k in range(cfg.folds)}
        for method in cfg.video.models
    }


# -----------------------------------------------------------------------------
# Prediction: fold k's videos by fold k's model


@torch.no_grad()
def predict_clips(model: nn.Module, clips: Tensor, batch_size: int) -> np.ndarray:
    """P(malignant) of each clip of ``clips`` uint8 ``(N, 1, T, S, S)``: float32 ``(N,)``.

    ``model`` is put in eval mode; the clips are normalised as in training, not augmented.
    """
    model.eval()
    probs = [
        model(normalise(clips[i : i + batch_size])).softmax(dim=1)[:, 1]  # (B,)
        for i in range(0, len(clips), batch_size)
    ]
    return torch.cat(probs).numpy().astype(np.float32) if probs else np.zeros(0, np.float32)


def predict_video_models(
    cfg: ClassifyConfig,
    states: dict[str, dict[int, dict]],
    data: Path,
    folds: dict[str, int],
) -> pd.DataFrame:
    """P(malignant) of every video of ``folds`` by every model of fold k = its fold's.

    ``states`` is :func:`fit_video_models`' result. Runs in the driver (eval mode, batched).
    Returns one row per (method, video): columns video_id, fold, method, prob (float).
    """
    import pandas as pd

    frames: list[pd.DataFrame] = []
    if folds:
        clips = load_clips(data, sorted(folds), cfg.video.clip_frames, cfg.video.clip_size)
        table = pa.concat_tables(clips.iter_batches(batch_format="pyarrow"))
    else:
        table = CLIPS.empty_table()
    for method in cfg.video.models:
        for fold in range(cfg.folds):
            rows = _keep_videos(table, [v for v, f in folds.items() if f == fold])
            if rows.num_rows == 0:
                continue
            model = build_video_model(method)
            model.load_state_dict(states[method][fold])
            clips, _ = collate_clips(
                {name: rows[name].to_numpy(zero_copy_only=False) for name in TRAIN_COLUMNS}
            )  # (N, 1, T, S, S) uint8
            prob = predict_clips(model, clips, 2 * cfg.video.batch_size)
            frames.append(
                pd.DataFrame(
                    {
                        "video_id": rows["video_id"].to_pylist(),
                        "fold": fold,
                        "method": method,
                        "prob": prob.astype(np.float64),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(
            {
                "video_id": pd.Series(dtype=str),
                "fold": pd.Series(dtype=np.int64),
                "method": pd.Series(dtype=str),
                "prob": pd.Series(dtype=np.float64),
            }
        )
    return pd.concat(frames, ignore_index=True)
