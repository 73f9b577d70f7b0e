"""The 3D-CNN baselines of the variable-frame paper (METHODS.md section 1): C3D_BN, R3D, R(2+1)D.

Each video becomes one clip of ``clip_frames`` frames spread uniformly over its kept frames
(videos with fewer frames repeat their nearest frames, so every video gets a clip), resized
to ``clip_size`` x ``clip_size``. For every model and every cross-validation fold k, the
model is trained on the clips of the videos outside fold k and predicts the videos of fold k.

All of it is one Ray Train run: the workers train the models one after the other, (model,
fold) by (model, fold), and report after every epoch. A finished model's weights go to
``<run>/models/`` (rank 0, before the report); the checkpoint lists what is finished and
holds the current model's weights, optimizer and epoch, so it stays the size of one model
and a rerun with the same run name continues from the (model, fold, epoch) where the last
one stopped.

Shapes: B clips, T frames per clip, S = clip_size; clips are gray, ``(B, 1, T, S, S)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from usv_ray.classify.cnn import frame_shards
from usv_ray.config import ClassifyConfig
from usv_ray.imaging import augment, normalise
from usv_ray.train import (
    EpochReporter,
    cpu_weights,
    fit,
    in_order,
    last_state,
    model_path,
    numpy_collate,
    resume_state,
    save_model,
    seed_epoch,
    train_epoch,
    unwrap,
)
from usv_ray.video3d import clip_positions, gray_r2plus1d_18, gray_stem_conv

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

NUM_CLASSES = 2  # benign, malignant

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
# Models: a gray clip (B, 1, T, H, W) -> class logits (B, 2)


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    """C3D's 3x3x3 convolution (stride 1, padding 1), then batch norm and ReLU."""
    return [
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


class C3DBN(nn.Module):
    """C3D (Tran et al. 2015) with batch norm after every convolution, for short clips.

    C3D's layout: eight 3x3x3 convolutions of 64, 128, 256, 256, 512, 512, 512, 512 channels,
    and five max pools, the first spatial only (1x2x2) so early layers keep the temporal
    detail, the others 2x2x2. Adapted to 12 frames and any clip size: the pools round up
    (``ceil_mode``), so a clip of any T >= 1 and H, W >= 1 keeps at least one cell, and an
    adaptive average pool to 1 x 4 x 4 (C3D's pool5 grid for 16 x 112 x 112 input) feeds
    the fc layers. The fc layers are narrower than C3D's 4096 (``hidden`` = 1024 by
    default): 4096-wide fc6/fc7 would add 50 M parameters to a model trained on a few
    hundred videos.
    """

    def __init__(
        self,
        hidden: int = 1024,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.5,
        in_channels: int = 1,
    ) -> None:
        """Build the network.

        Args:
            hidden: width of fc6 and fc7 (C3D: 4096).
            num_classes: output logits.
            dropout: dropout after fc6 and fc7 (C3D: 0.5).
            in_channels: input channels (1: gray ultrasound).
        """
        super().__init__()

        def pool(kernel: tuple[int, int, int]) -> nn.Module:
            return nn.MaxPool3d(kernel, stride=kernel, ceil_mode=True)

        self.features = nn.Sequential(
            *_conv_bn(in_channels, 64),  # conv1a
            pool((1, 2, 2)),
            *_conv_bn(64, 128),  # conv2a
            pool((2, 2, 2)),
            *_conv_bn(128, 256),  # conv3a, conv3b
            *_conv_bn(256, 256),
            pool((2, 2, 2)),
            *_conv_bn(256, 512),  # conv4a, conv4b
            *_conv_bn(512, 512),
            pool((2, 2, 2)),
            *_conv_bn(512, 512),  # conv5a, conv5b
            *_conv_bn(512, 512),
            pool((2, 2, 2)),
            nn.AdaptiveAvgPool3d((1, 4, 4)),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 4 * 4, hidden),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # fc8
        )

    def forward(self, clips: Tensor) -> Tensor:
        """Class logits of each clip: ``(B, 1, T, H, W) -> (B, num_classes)``."""
        grid = self.features(clips)  # (B, 512, 1, 4, 4)
        return self.head(grid)  # (B, 8192) -> (B, C)


def c3d_bn() -> nn.Module:
    """C3D with batch norm (:class:`C3DBN`), one gray input channel, 2 classes."""
    return C3DBN()


def r3d() -> nn.Module:
    """torchvision's R3D-18 (random init) with a gray stem and a 2-class fc.

    Its global adaptive pool takes any T >= 1 and H, W >= 16 (at 16 the last stage is 1x1).
    """
    from torchvision.models.video import r3d_18

    model = r3d_18(weights=None)
    model.stem[0] = gray_stem_conv(model.stem[0])  # (3, 7, 7) kernel, stride (1, 2, 2)
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


def r2plus1d() -> nn.Module:
    """torchvision's R(2+1)D-18 (random init) with a gray stem and a 2-class fc."""
    model = gray_r2plus1d_18()
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


# The one explicit choice point: ClassifyConfig.video_models names -> builders.
VIDEO_MODELS: dict[str, Callable[[], nn.Module]] = {
    "C3D_BN": c3d_bn,
    "R3D": r3d,
    "R(2+1)D": r2plus1d,
}


def build_video_model(name: str) -> nn.Module:
    """A freshly initialised 3D CNN: gray clips ``(B, 1, T, H, W)`` -> logits ``(B, 2)``.

    Never downloads weights. Seed torch first for reproducible initial weights.

    Raises:
        ValueError: for a name not in :data:`VIDEO_MODELS`.
    """
    if name not in VIDEO_MODELS:
        raise ValueError(f"unknown video model {name!r} (known: {', '.join(VIDEO_MODELS)})")
    return VIDEO_MODELS[name]()


# -----------------------------------------------------------------------------
# Clips: a video's kept frames -> count frames of size x size


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """One gray frame (H, W) uint8 -> (size, size) uint8, area-averaged."""
    import cv2

    if frame.shape == (size, size):
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def make_clip(frames: np.ndarray, count: int, size: int) -> np.ndarray:
    """A video's frames ``(T, H, W)`` uint8 -> its clip ``(count, size, size)`` uint8.

    Frames are taken at :func:`clip_positions` and resized with OpenCV's INTER_AREA.

    Raises:
        ValueError: for an input that is not a non-empty uint8 stack of 2-D frames.
    """
    if frames.ndim != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"expected uint8 frames (T >= 1, H, W), got {frames.dtype} {tuple(frames.shape)}"
        )
    return np.stack([_resize(frames[p], size) for p in clip_positions(len(frames), count)])


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
                _resize(np.frombuffer(images[p], np.uint8).reshape(heights[p], widths[p]), size)
                for p in clip_positions(len(images), count)
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

    paths = frame_shards(data, video_ids)
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
# Training: every (model, fold) in one Ray Train run


def _model_key(method: str, fold: int) -> str:
    """A file name for a finished model: ``R(2+1)D`` fold 3 -> ``R2p1D_fold=3``."""
    slug = method.replace("(", "").replace(")", "").replace("+", "p")
    return f"{slug}_fold={fold}"


def model_file(models: Path, method: str, fold: int) -> Path:
    """Where a run keeps the finished ``method`` model of ``fold``."""
    return model_path(models, _model_key(method, fold))


def _fresh_state() -> dict:
    return {
        "done": {},  # method -> fold -> epochs trained (the weights: model_file, not here)
        "current": None,  # the unfinished (model, fold): method, fold, model, optimizer, epoch
        "step": -1,  # reports so far - 1, across (model, fold, epoch) and reruns
        "attempt": 0,  # times the loop has started on this run name (reruns, restarts)
        "log": [],  # the metrics of every report
    }


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg: ClassifyConfig = config["cfg"]
    models: Path = config["models"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    state = resume_state() or _fresh_state()
    report = EpochReporter(cfg.checkpoint_every_s)
    state["attempt"] += 1
    loss_fn = nn.CrossEntropyLoss()
    for method in cfg.video_models:
        for fold in range(cfg.folds):
            torch.manual_seed(cfg.seed)  # the same initial weights on every rank
            model = build_video_model(method)
            current, done = state["current"], state["done"].get(method, {})
            optimizer_state, start_epoch = None, 0
            if current is not None and (current["method"], current["fold"]) == (method, fold):
                model.load_state_dict(current["model"])
                optimizer_state, start_epoch = current["optimizer"], current["epoch"] + 1
            elif fold in done:
                # finished by an earlier run with fewer epochs: continue from its weights
                # (Adam's moments are not kept for finished models, only for the current one)
                model.load_state_dict(torch.load(model_file(models, method, fold)))
                start_epoch = done[fold]
            if start_epoch >= cfg.video_epochs:
                continue
            model = ray.train.torch.prepare_model(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.video_lr)
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
            shard = ray.train.get_dataset_shard(f"train_{fold}")
            for epoch in range(start_epoch, cfg.video_epochs):
                generator = seed_epoch(cfg.seed, epoch, rank)
                batches = shard.iter_torch_batches(
                    batch_size=cfg.video_batch_size,
                    collate_fn=numpy_collate(collate_clips),
                    local_shuffle_buffer_size=4 * cfg.video_batch_size,
                    local_shuffle_seed=cfg.seed + epoch,
                )  # (B, 1, T, S, S) uint8, (B,)
                train_loss, count, seconds = train_epoch(
                    model,
                    batches,
                    optimizer,
                    loss_fn,
                    augmented_clips,
                    generator,
                    device,
                )
                state["step"] += 1
                metrics = {
                    "method": method,
                    "fold": fold,
                    "epoch": epoch,
                    "step": state["step"],
                    "attempt": state["attempt"],
                    "train_loss": train_loss,
                    "train_clips": count,  # this rank's
                    "clips_per_s": count / seconds if seconds > 0 else math.nan,  # this rank's
                }
                state["log"].append(metrics)
                weights = cpu_weights(unwrap(model).state_dict())
                finished = epoch + 1 == cfg.video_epochs
                if finished:
                    if rank == 0:  # before the report, so a checkpoint never lists a missing file
                        save_model(models, _model_key(method, fold), weights)
                    state["done"].setdefault(method, {})[fold] = epoch + 1
                    state["current"] = None
                else:
                    state["current"] = {
                        "method": method,
                        "fold": fold,
                        "model": weights,
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                    }
                report(metrics, state, state["step"], finished=finished)
            del model, optimizer
    return {"attempt": state["attempt"], "steps": state["step"] + 1}


def _keep_videos(table: pa.Table, video_ids: list[str]) -> pa.Table:
    """The rows of ``table`` whose video_id is in ``video_ids``."""
    return table.filter(pc.is_in(table["video_id"], value_set=pa.array(video_ids, pa.string())))


def fit_video_models(
    cfg: ClassifyConfig, data: Path, folds: dict[str, int], storage: Path, name: str
) -> dict[str, dict[int, dict]]:
    """Train every model of ``cfg.video_models`` for every fold k, on the videos outside k.

    ``folds`` maps video_id -> fold (labelled videos only; labels come from the frames).
    One Ray Train run, ``storage / name``: calling again with the same name resumes from its
    last checkpoint, at the (model, fold, epoch) where it stopped; a rerun with more
    ``video_epochs`` continues every finished (model, fold) from its weights.

    Returns method -> fold -> the model's state dict (CPU tensors).

    Raises:
        ValueError: for a fold outside ``range(cfg.folds)``, or a fold without training
            videos (all the videos in it).
    """
    outside = sorted({f for f in folds.values() if f not in range(cfg.folds)})
    if outside:
        raise ValueError(f"fold(s) {outside} outside 0..{cfg.folds - 1} (cfg.folds={cfg.folds})")
    train_ids = {k: sorted(v for v, f in folds.items() if f != k) for k in range(cfg.folds)}
    empty = [k for k, ids in train_ids.items() if not ids]
    if empty:
        raise ValueError(f"no training videos for fold(s) {empty}")
    models = (Path(storage) / name / "models").resolve()
    state = last_state(storage, name)
    finished = state is not None and all(
        state["done"].get(method, {}).get(k, 0) >= cfg.video_epochs
        and model_file(models, method, k).exists()
        for method in cfg.video_models
        for k in range(cfg.folds)
    )
    if not finished:  # a rerun of a finished run starts no Ray Train run: minutes on a laptop
        _fit(cfg, data, folds, train_ids, storage, name, models)
    return {
        method: {k: torch.load(model_file(models, method, k)) for k in range(cfg.folds)}
        for method in cfg.video_models
    }


def _fit(
    cfg: ClassifyConfig,
    data: Path,
    folds: dict[str, int],
    train_ids: dict[int, list[str]],
    storage: Path,
    name: str,
    models: Path,
) -> None:
    """The Ray Train run of :func:`fit_video_models`."""
    # read every clip once and keep it in the object store; each fold's training set is a
    # filtered copy, materialized so epochs do not re-run the filter
    clips = load_clips(data, sorted(folds), cfg.clip_frames, cfg.clip_size).materialize()
    datasets = {
        f"train_{k}": clips.map_batches(
            _keep_videos, fn_kwargs={"video_ids": ids}, batch_format="pyarrow"
        )
        .select_columns(TRAIN_COLUMNS)
        .materialize()
        for k, ids in train_ids.items()
    }
    loop_config = {"cfg": cfg, "models": models}
    fit(_train_loop, loop_config, cfg, datasets, storage, name, split=list(datasets))


def training_log(storage: Path, name: str) -> list[dict]:
    """The metrics of every report of run ``storage / name`` so far (from its last checkpoint).

    Each has method, fold, epoch, step, attempt (1 for the first start of the run, then one
    more for each rerun or restart) and train_loss. Empty when the run has no checkpoint.
    """
    state = last_state(storage, name)
    return [] if state is None else state["log"]


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
        clips = load_clips(data, sorted(folds), cfg.clip_frames, cfg.clip_size)
        table = pa.concat_tables(clips.iter_batches(batch_format="pyarrow"))
    else:
        table = CLIPS.empty_table()
    for method in cfg.video_models:
        for fold in range(cfg.folds):
            rows = _keep_videos(table, [v for v, f in folds.items() if f == fold])
            if rows.num_rows == 0:
                continue
            model = build_video_model(method)
            model.load_state_dict(states[method][fold])
            clips, _ = collate_clips(
                {name: rows[name].to_numpy(zero_copy_only=False) for name in TRAIN_COLUMNS}
            )  # (N, 1, T, S, S) uint8
            prob = predict_clips(model, clips, 2 * cfg.video_batch_size)
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
