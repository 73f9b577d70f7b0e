"""Train and apply the LSTM over cached frame features, on Ray Train.

Variable-frame: every video with all its cached frames (1 to 30), packed without padding.
Equal-frame: N frames uniformly sampled from each video; videos shorter than N are left
out, as in the paper (the variable-frame set keeps more videos).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from usv_ray.classify.train import fit, report_epoch, resume_state, unwrap
from usv_ray.config import ClassifyConfig
from usv_ray.schemas import FEATURE_DIM


@dataclass(frozen=True)
class VideoFeatures:
    """One video's cached features, in frame order."""

    video_id: str
    label: int
    features: np.ndarray  # (T, 512) float32


def load_sequences(folder: Path, labels: dict[str, int]) -> list[VideoFeatures]:
    """The videos of ``labels`` (video_id -> 0/1) from one fold's feature cache."""
    table = pq.read_table(folder, columns=["video_id", "seq_index", "feature"])
    if table.num_rows == 0:
        return []
    table = table.sort_by([("video_id", "ascending"), ("seq_index", "ascending")])
    video_ids = np.asarray(table["video_id"].to_pylist(), dtype=object)
    features = np.asarray(table["feature"].combine_chunks().flatten(), np.float32)
    features = features.reshape(len(video_ids), FEATURE_DIM)  # (rows, 512)
    starts = np.flatnonzero(np.r_[True, video_ids[1:] != video_ids[:-1]])
    ends = np.r_[starts[1:], len(video_ids)]
    return [
        VideoFeatures(video_ids[a], labels[video_ids[a]], features[a:b])
        for a, b in zip(starts, ends, strict=True)
        if video_ids[a] in labels
    ]


def uniform_positions(length: int, count: int) -> np.ndarray:
    """``count`` positions spread uniformly over ``length`` frames (count <= length)."""
    return np.rint(np.linspace(0, length - 1, count)).astype(int)


def equal_frame_set(sequences: Sequence[VideoFeatures], n: int) -> list[VideoFeatures]:
    """Each video cut to N uniformly sampled frames; videos shorter than N are left out."""
    return [
        VideoFeatures(s.video_id, s.label, s.features[uniform_positions(len(s.features), n)])
        for s in sequences
        if len(s.features) >= n
    ]


def _rows(sequences: Sequence[VideoFeatures]) -> list[dict]:
    return [
        {"label": s.label, "length": len(s.features), "features": s.features.tobytes()}
        for s in sequences
    ]


def collate_sequences(batch: dict[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """Ray Data batch -> (padded (B, T_max, 512), lengths (B,), labels (B,))."""
    lengths = batch["length"].astype(np.int64)  # (B,)
    padded = np.zeros((len(lengths), int(lengths.max()), FEATURE_DIM), np.float32)
    for i, (raw, length) in enumerate(zip(batch["features"], lengths, strict=True)):
        padded[i, :length] = np.frombuffer(raw, np.float32).reshape(length, FEATURE_DIM)
    return (
        torch.from_numpy(padded),
        torch.from_numpy(lengths),
        torch.from_numpy(batch["label"].astype(np.int64)),
    )


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from usv_ray.classify.models import VariableFrameLSTM, video_nll

    cfg: ClassifyConfig = config["cfg"]
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = VariableFrameLSTM(hidden_size=cfg.lstm_hidden)
    state = resume_state()
    start_epoch = 0 if state is None else state["epoch"] + 1
    if state is not None:
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lstm_lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.lstm_epochs):
        model.train()
        total, count = 0.0, 0
        batches = shard.iter_torch_batches(
            batch_size=cfg.lstm_batch_size,
            collate_fn=collate_sequences,
            local_shuffle_buffer_size=4 * cfg.lstm_batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for padded, lengths, labels in batches:  # (B, T, 512), (B,), (B,)
            loss = video_nll(model(padded.to(device), lengths), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
        }
        report_epoch({"epoch": epoch, "train_loss": total / max(count, 1)}, state, epoch)
    return {"start_epoch": start_epoch}


@dataclass(frozen=True)
class LstmRun:
    model: dict  # VariableFrameLSTM state dict (EqualFrameLSTM takes the same)
    start_epoch: int  # 0, or the epoch a rerun resumed from


def fit_lstm(
    cfg: ClassifyConfig, sequences: Sequence[VideoFeatures], storage: Path, name: str
) -> LstmRun:
    """Train the LSTM on ``sequences`` (variable-length, or an equal-frame set)."""
    import ray.data

    if not sequences:
        raise ValueError("no training videos for the LSTM")
    train = ray.data.from_items(_rows(sequences)).materialize()
    state, summary = fit(_train_loop, {"cfg": cfg}, cfg, {"train": train}, storage, name)
    return LstmRun(state["model"], (summary or {}).get("start_epoch", 0))


@torch.no_grad()
def predict(
    cfg: ClassifyConfig, model_state: dict, sequences: Sequence[VideoFeatures]
) -> np.ndarray:
    """P(malignant) of each video, ``(len(sequences),)``, in order; empty in, empty out."""
    from usv_ray.classify.models import VariableFrameLSTM, pad_features

    model = VariableFrameLSTM(hidden_size=cfg.lstm_hidden)
    model.load_state_dict(model_state)
    model.eval()
    probs = []
    for start in range(0, len(sequences), 256):
        chunk = sequences[start : start + 256]
        padded, lengths = pad_features([torch.from_numpy(s.features) for s in chunk])
        probs.append(model(padded, lengths)[:, 1].numpy())  # (B,)
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)
