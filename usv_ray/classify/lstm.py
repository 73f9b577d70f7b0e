"""Train and apply the LSTMs over cached frame features, on Ray Train.

Variable-frame: every video with all its cached frames (1 to 30), packed without padding.
Equal-frame: N frames uniformly sampled from each video; videos shorter than N are left
out, as in the paper (the variable-frame set keeps more videos).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from usv_ray.config import ClassifyConfig
from usv_ray.frames import uniform_positions
from usv_ray.runner import RunSettings, Worker, classifier_scores, train_models
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
    features = np.array(table["feature"].combine_chunks().flatten(), np.float32)  # writable
    features = features.reshape(len(video_ids), FEATURE_DIM)  # (rows, 512)
    starts = np.flatnonzero(np.r_[True, video_ids[1:] != video_ids[:-1]])
    ends = np.r_[starts[1:], len(video_ids)]
    return [
        VideoFeatures(video_ids[a], labels[video_ids[a]], features[a:b])
        for a, b in zip(starts, ends, strict=True)
        if video_ids[a] in labels
    ]


def equal_frame_set(sequences: Sequence[VideoFeatures], n: int) -> list[VideoFeatures]:
    """Each video cut to N uniformly sampled frames; videos shorter than N are left out."""
    return [
        VideoFeatures(s.video_id, s.label, s.features[uniform_positions(len(s.features), n)])
        for s in sequences
        if len(s.features) >= n
    ]


@dataclass(frozen=True)
class LstmJob:
    """One LSTM to train: fold k's model, on the variable-frame set or an equal-frame set."""

    fold: int  # trained on the other folds' videos, with fold k's cached features
    frames: int | None = None  # None: variable-frame (all cached frames); N: equal-frame

    @property
    def key(self) -> str:
        """A file-name-safe name, e.g. ``fold=2_variable``, ``fold=2_equal12`` or
        ``final_variable``."""
        from usv_ray.classify.folds import fold_name

        kind = "variable" if self.frames is None else f"equal{self.frames}"
        return f"{fold_name(self.fold)}_{kind}"


def job_sequences(
    features: Path, videos: Mapping[str, tuple[int, int]], job: LstmJob, train: bool
) -> list[VideoFeatures]:
    """The videos ``job`` trains on (``train``: every fold but its own; the final model's:
    every video) or predicts (its fold).

    ``videos`` maps video_id -> (label, fold); features come from fold ``job.fold``'s cache.
    """
    labels = {
        video_id: label for video_id, (label, fold) in videos.items() if (fold != job.fold) == train
    }
    from usv_ray.classify.folds import fold_name

    sequences = load_sequences(Path(features) / fold_name(job.fold), labels)
    return sequences if job.frames is None else equal_frame_set(sequences, job.frames)


def rank_batches(
    n: int, batch_size: int, rank: int, world: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """This rank's batches of one epoch, as indices into the ``n`` training videos.

    Every rank draws the same seeded permutation and takes every ``world``-th video of it;
    when ``n`` does not divide by ``world`` the permutation wraps around, so every rank runs
    the same number of batches (DDP needs that) and no video is left out.
    """
    order = rng.permutation(n)
    per_rank = -(-n // world)  # ceil
    mine = np.resize(order, per_rank * world)[rank::world]  # (per_rank,)
    return [mine[i : i + batch_size] for i in range(0, per_rank, batch_size)]


@dataclass(frozen=True)
class LstmTask:
    """One LSTM to train (a :class:`usv_ray.runner.Task`): ``job``, on the videos outside its
    fold but ``val_ids``, validated on ``val_ids`` (its fold's validation videos, those
    that validated its frame CNN, whose features that CNN computed without training on them).
    """

    cfg: ClassifyConfig
    job: LstmJob
    features: Path  # the cache folder holding fold=k
    videos: Mapping[str, tuple[int, int]]  # video_id -> (label, fold)
    val_ids: frozenset[str]

    @property
    def key(self) -> str:
        return self.job.key

    def build(self) -> torch.nn.Module:
        from usv_ray.models.lstm import VariableFrameLSTM

        return VariableFrameLSTM(hidden_size=self.cfg.lstm.hidden)

    def open(self, worker: Worker) -> tuple[list[VideoFeatures], list[VideoFeatures]]:
        sequences = job_sequences(self.features, self.videos, self.job, train=True)
        train = [s for s in sequences if s.video_id not in self.val_ids]
        if not train:
            raise ValueError(
                f"LSTM {self.key}: no training videos (with >= {self.job.frames} frames)"
            )
        val = [s for s in sequences if s.video_id in self.val_ids] if worker.rank == 0 else []
        return train, val

    def batches(self, data: tuple[list, list], epoch: int, worker: Worker) -> Iterable[Any]:
        train = data[0]
        # the final model's fold is -1: seed entropy must be non-negative (folds 0.. unchanged)
        fold = self.job.fold % 2**32
        rng = np.random.default_rng([self.cfg.seed, fold, self.job.frames or 0, epoch])
        for index in rank_batches(
            len(train), self.cfg.lstm.batch_size, worker.rank, worker.world, rng
        ):
            yield [train[i] for i in index]

    def loss(
        self, model: torch.nn.Module, batch: list[VideoFeatures], worker: Worker, generator: Any
    ) -> tuple[torch.Tensor, int]:
        from usv_ray.models.lstm import video_nll

        padded, lengths, labels = _batch(batch)  # (B, T_max, 512), (B,), (B,)
        return video_nll(model(padded.to(worker.device), lengths), labels.to(worker.device)), len(
            batch
        )

    def validate(self, model: torch.nn.Module, data: tuple[list, list], worker: Worker) -> dict:
        model.eval()
        val = data[1]
        chunks = (_batch(val[i : i + 256]) for i in range(0, len(val), 256))
        return classifier_scores(
            (model(padded.to(worker.device), lengths), labels) for padded, lengths, labels in chunks
        )

    def meta(self) -> dict:
        from usv_ray.models.lstm import lstm_meta

        return {**lstm_meta(self.cfg.lstm.hidden), "fold": self.job.fold, "frames": self.job.frames}


def _batch(sequences: Sequence[VideoFeatures]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Videos -> (features (B, T_max, 512) zero-padded, lengths (B,), labels (B,))."""
    from usv_ray.models.lstm import pad_features

    padded, lengths = pad_features([torch.from_numpy(s.features) for s in sequences])
    return padded, lengths, torch.tensor([s.label for s in sequences], dtype=torch.int64)


def fit_lstms(
    cfg: ClassifyConfig,
    features: Path,
    videos: Mapping[str, tuple[int, int]],
    jobs: Sequence[LstmJob],
    storage: Path,
    name: str,
    val_ids: Mapping[int, Sequence[str]] | None = None,
) -> dict[LstmJob, Path]:
    """Train every LSTM of ``jobs`` in one run of ``cfg.lstm.workers`` Ray Train workers (0:
    in this process, on its CPU, without Ray Train); returns each one's model file.

    ``videos`` maps video_id -> (label, fold); ``features`` is the cache folder holding
    ``fold=k``, which workers read (a folder every node sees), each taking its share of
    every batch. Fold k's LSTMs leave out ``val_ids[k]`` and pick their best epoch on them
    (none given: every video outside the fold trains, and the last epoch is kept).
    Finished models are kept in ``storage / name / models``: a restarted or rerun run
    trains only the ones not finished yet, and a run whose models all exist starts nothing.
    """
    features = Path(features).resolve()
    tasks = [
        LstmTask(cfg, job, features, dict(videos), frozenset((val_ids or {}).get(job.fold, ())))
        for job in jobs
    ]
    settings = RunSettings.of(cfg.lstm, cfg, cfg.seed, workers=cfg.lstm.workers)
    trained = train_models(tasks, settings, storage, name)
    return {job: trained[job.key].path for job in jobs}


@torch.no_grad()
def predict(weights: Path, sequences: Sequence[VideoFeatures]) -> np.ndarray:
    """P(malignant) of each video by the LSTM in the file ``weights``, ``(len(sequences),)``,
    in order; empty in, empty out."""
    from usv_ray.models import load
    from usv_ray.models.lstm import pad_features

    model, _ = load(weights)
    probs = []
    for start in range(0, len(sequences), 256):
        chunk = sequences[start : start + 256]
        padded, lengths = pad_features([torch.from_numpy(s.features) for s in chunk])
        probs.append(model(padded, lengths)[:, 1].numpy())  # (B,)
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)
