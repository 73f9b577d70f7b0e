"""Contrastive pretraining's parts, in this process and without Ray: the loss against a
plain reference, the B-mode views, the pairs of nearby frames, the batches each rank
draws, and a killed run that resumes with the weights of an uninterrupted one."""

import math

import numpy as np
import pytest
import torch
from runner_checks import assert_resume_is_exact

from usv_ray.config import PretrainConfig
from usv_ray.imaging import bmode_views
from usv_ray.models.contrastive import ContrastiveTrunk, nt_xent, trunk_weights
from usv_ray.models.frame_cnn import gray_resnet18
from usv_ray.pretrain.task import Frames, PretrainTask, pair_rows, read_frames
from usv_ray.runner import RunSettings, Worker, load_model, train_models, training_log


def _reference_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """SimCLR's loss written out view by view."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    b, losses = len(z1), []
    for i in range(2 * b):
        positive = (i + b) % (2 * b)
        others = [j for j in range(2 * b) if j != i]
        logits = np.array([z[i] @ z[j] / temperature for j in others])
        losses.append(-(z[i] @ z[positive] / temperature) + math.log(np.exp(logits).sum()))
    return float(np.mean(losses))


def test_nt_xent_is_simclrs_loss_and_its_accuracy_finds_the_pairs():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    unrelated, _ = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.3)
    assert float(unrelated) == pytest.approx(_reference_nt_xent(z1, z2, 0.3), rel=1e-5)
    # pairs that are near copies of each other: a far lower loss, every positive found
    near = z1 + 0.01 * rng.normal(size=z1.shape)
    loss, accuracy = nt_xent(torch.tensor(z1), torch.tensor(near), 0.3)
    assert float(loss) < 0.5 * float(unrelated) and float(accuracy) == 1.0
    with pytest.raises(ValueError, match="B >= 2"):
        nt_xent(torch.zeros(1, 4), torch.zeros(1, 4), 0.1)


def test_bmode_views_are_gray_reproducible_and_differ_from_view_to_view():
    frames = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    first = bmode_views(frames, torch.Generator().manual_seed(1))
    again = bmode_views(frames, torch.Generator().manual_seed(1))
    other = bmode_views(frames, torch.Generator().manual_seed(2))
    assert first.shape == (4, 1, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert first.min() >= -2 and first.max() <= 2  # [0, 1] normalised as imaging.normalise


def test_a_pair_is_two_nearby_frames_of_one_video():
    frames = Frames(np.zeros((12, 2, 2), np.uint8), [np.arange(0, 8), np.arange(8, 11), [11]])
    rng = np.random.default_rng(0)
    for _ in range(50):
        first, second = pair_rows(frames, np.array([0, 1, 2]), 2, rng)
        for video, a, b in zip(range(3), first, second, strict=True):
            rows = list(frames.videos[video])
            assert a in rows and b in rows and abs(rows.index(a) - rows.index(b)) <= 2
            assert a != b or len(rows) == 1  # the same frame only for a one-frame video


class ToyDataset:
    """What read_frames reads (a Ray Dataset's iter_batches), in memory: 2-frame batches."""

    def __init__(self, videos: int, frames: int, size: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rows = [
            {
                "video_id": f"v{v}",
                "seq_index": t,
                "image": (rng.integers(0, 40, (size, size)) + 20 * v).astype(np.uint8).tobytes(),
                "height": size,
                "width": size,
            }
            for t in reversed(range(frames))  # out of order: read_frames sorts them
            for v in range(videos)
        ]

    def iter_batches(self, batch_size: int, batch_format: str):
        assert batch_format == "numpy"
        for i in range(0, len(self.rows), 2):
            part = self.rows[i : i + 2]
            yield {k: np.array([r[k] for r in part], dtype=object) for k in part[0]}


def test_read_frames_groups_each_videos_frames_in_order():
    frames = read_frames(ToyDataset(videos=3, frames=4))
    assert frames.images.shape == (12, 16, 16) and len(frames.videos) == 3
    for v, rows in enumerate(frames.videos):
        assert len(rows) == 4 and (frames.images[rows] >= 20 * v).all()


class Rank(Worker):
    """An in-process worker that says it is rank ``rank`` of ``world``."""

    def __init__(self, rank: int, world: int, datasets):
        super().__init__(RunSettings(PretrainConfig(), 0, workers=0), None, datasets)
        self.rank, self.world = rank, world


def test_every_rank_draws_as_many_batches_of_distinct_videos_as_the_others():
    cfg = PretrainConfig(batch_size=4)
    task = PretrainTask(cfg, train_frames=20, validated=False)
    shards = {0: ToyDataset(videos=7, frames=3), 1: ToyDataset(videos=3, frames=2, seed=1)}
    counts = []
    for rank, shard in shards.items():
        worker = Rank(rank, 2, {"train": shard})
        data = task.open(worker)[0], None
        batches = list(task.batches(data, epoch=0, worker=worker))
        counts.append(len(batches))
        assert all(a.shape == b.shape and a.dtype == torch.uint8 for a, b in batches)
        again = list(task.batches(data, epoch=0, worker=worker))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert counts == [task.steps(2)] * 2 == [3, 3]  # 20 frames / (4 x 2 ranks), rounded up


def test_a_rank_with_one_video_is_a_clear_error():
    task = PretrainTask(PretrainConfig(), train_frames=2)
    with pytest.raises(ValueError, match="needs two"):
        task.open(Rank(0, 1, {"train": ToyDataset(videos=1, frames=3)}))


@pytest.mark.slow
def test_a_killed_pretraining_run_resumes_exactly(monkeypatch, tmp_path):
    cfg = PretrainConfig(
        epochs=2, batch_size=4, workers=0, checkpoint_every_s=0, lr=1e-3, projection=16
    )
    task = PretrainTask(cfg, train_frames=18)
    sets = {"train": ToyDataset(videos=6, frames=3), "val": ToyDataset(videos=4, frames=2)}

    def fit(storage):
        trained = train_models([task], RunSettings.of(cfg, cfg, cfg.seed), storage, "trunk",
                               lambda _: sets)  # fmt: skip
        return {"trunk": trained["trunk"].path}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, "trunk", kill_after=1)
    log = training_log(tmp_path / "uninterrupted", "trunk")
    assert all(row["val_loss"] > 0 and 0 <= row["val_pair_acc"] <= 1 for row in log)
    weights, meta = load_model(tmp_path / "uninterrupted" / "trunk" / "models" / "trunk.pt")
    assert meta["model"] == "ContrastiveTrunk" and meta["metric"] == "val_loss"
    # the trunk alone is a gray ResNet-18's state, the head left behind
    trunk = gray_resnet18()
    trunk.load_state_dict(trunk_weights(weights), strict=True)
    assert ContrastiveTrunk(16).load_state_dict(weights, strict=True)
