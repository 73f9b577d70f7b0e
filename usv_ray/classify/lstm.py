"""Train and apply the LSTMs over cached frame features, on Ray Train.

Variable-frame: every video with all its cached frames (1 to 30), packed without padding.
Equal-frame: N frames uniformly sampled from each video; videos shorter than N are left
out, as in the paper (the variable-frame set keeps more videos).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from usv_ray.config import ClassifyConfig
from usv_ray.schemas import FEATURE_DIM
from usv_ray.train import fit, model_path, save_model, unwrap


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


@dataclass(frozen=True)
class LstmJob:
    """One LSTM to train: fold k's model, on the variable-frame set or an equal-frame set."""

    fold: int  # trained on the other folds' videos, with fold k's cached features
    frames: int | None = None  # None: variable-frame (all cached frames); N: equal-frame

    @property
    def key(self) -> str:
        """A file-name-safe name, e.g. ``fold=2_variable`` or ``fold=2_equal12``."""
        kind = "variable" if self.frames is None else f"equal{self.frames}"
        return f"fold={self.fold}_{kind}"


def job_sequences(
    features: Path, videos: Mapping[str, tuple[int, int]], job: LstmJob, train: bool
) -> list[VideoFeatures]:
    """The videos ``job`` trains on (``train``: every fold but its own) or predicts (its fold).

    ``videos`` maps video_id -> (label, fold); features come from fold ``job.fold``'s cache.
    """
    labels = {
        video_id: label for video_id, (label, fold) in videos.items() if (fold != job.fold) == train
    }
    sequences = load_sequences(Path(features) / f"fold={job.fold}", labels)
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


def _train_jobs(
    config: dict,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model,
    report: Callable[[dict], None] = lambda metrics: None,
) -> list[str]:
    """Train each job of ``config`` not finished yet, one after another, as rank ``rank`` of
    ``world`` (``prepare`` wraps a model for DDP, ``report`` reports a finished one); rank
    0 saves every model. Returns the keys of the jobs it trained."""
    from usv_ray.classify.models import VariableFrameLSTM, pad_features, video_nll

    cfg: ClassifyConfig = config["cfg"]
    models: Path = config["models"]
    device = device or torch.device("cpu")
    trained = []
    for job in config["jobs"]:
        if model_path(models, job.key).exists():
            continue  # finished before a restart or a rerun
        sequences = job_sequences(config["features"], config["videos"], job, train=True)
        if not sequences:
            raise ValueError(f"LSTM {job.key}: no training videos (with >= {job.frames} frames)")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = prepare(VariableFrameLSTM(hidden_size=cfg.lstm_hidden))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lstm_lr)
        rng = np.random.default_rng([cfg.seed, job.fold, job.frames or 0])
        losses = []
        for _ in range(cfg.lstm_epochs):
            model.train()
            total = 0.0
            batches = rank_batches(len(sequences), cfg.lstm_batch_size, rank, world, rng)
            for index in batches:
                padded, lengths = pad_features(
                    [torch.from_numpy(sequences[i].features) for i in index]
                )  # (B, T_max, 512), (B,)
                labels = torch.tensor([sequences[i].label for i in index])  # (B,)
                loss = video_nll(model(padded.to(device), lengths), labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            losses.append(total / sum(len(index) for index in batches))
        if rank == 0:
            save_model(models, job.key, unwrap(model).state_dict())
        report({"job": job.key, "first_loss": losses[0], "train_loss": losses[-1]})
        trained.append(job.key)
    return trained


def _train_loop(config: dict) -> dict:
    """Runs on every Ray Train worker: trains each job not yet finished (DDP)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    trained = _train_jobs(
        config,
        context.get_world_rank(),
        context.get_world_size(),
        ray.train.torch.get_device(),
        ray.train.torch.prepare_model,
        ray.train.report,
    )
    return {"trained": trained}


def fit_lstms(
    cfg: ClassifyConfig,
    features: Path,
    videos: Mapping[str, tuple[int, int]],
    jobs: Sequence[LstmJob],
    storage: Path,
    name: str,
) -> dict[LstmJob, Path]:
    """Train every LSTM of ``jobs`` in one Ray Train run of ``cfg.lstm_workers`` workers (0:
    in this process, on its CPU, without Ray Train); returns each one's weights file.

    ``videos`` maps video_id -> (label, fold); ``features`` is the cache folder holding
    ``fold=k``. Workers read the cache from it (a folder every node sees), each taking its
    share of every batch. Finished models are kept in ``storage / name / models``: a
    restarted or rerun run trains only the ones not finished yet, and a run whose models
    all exist starts no workers at all.
    """
    models = Path(storage) / name / "models"
    paths = {job: model_path(models, job.key) for job in jobs}
    if any(not path.exists() for path in paths.values()):
        loop_config = {
            "cfg": cfg,
            "features": Path(features).resolve(),
            "videos": dict(videos),
            "jobs": list(jobs),
            "models": models.resolve(),
        }
        if cfg.lstm_workers == 0:  # here, without Ray Train: what a small sweep's trial wants
            _train_jobs(loop_config)
        else:
            scaling = dataclasses.replace(cfg, workers=cfg.lstm_workers)
            fit(_train_loop, loop_config, scaling, {}, storage, name, split=())
    return paths


@torch.no_grad()
def predict(cfg: ClassifyConfig, weights: Path, sequences: Sequence[VideoFeatures]) -> np.ndarray:
    """P(malignant) of each video, ``(len(sequences),)``, in order; empty in, empty out."""
    from usv_ray.classify.models import VariableFrameLSTM, pad_features

    model = VariableFrameLSTM(hidden_size=cfg.lstm_hidden)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    probs = []
    for start in range(0, len(sequences), 256):
        chunk = sequences[start : start + 256]
        padded, lengths = pad_features([torch.from_numpy(s.features) for s in chunk])
        probs.append(model(padded, lengths)[:, 1].numpy())  # (B,)
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)
