import numpy as np
import pyarrow as pa
import pytest
import torch

from usv_ray.classify.lstm import (
    VideoFeatures,
    collate_sequences,
    equal_frame_set,
    fit_lstm,
    load_sequences,
    predict,
    uniform_positions,
)
from usv_ray.config import ClassifyConfig
from usv_ray.io import write_table
from usv_ray.schemas import FEATURE_DIM, FEATURES


def _videos(n: int, seed: int = 0) -> list[VideoFeatures]:
    """Videos of 1..30 frames whose features carry their label: a learnable toy set."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        length = int(rng.integers(1, 31))
        features = rng.normal(0.6 * label, 1.0, (length, FEATURE_DIM)).astype(np.float32)
        out.append(VideoFeatures(f"v{i:03d}", label, features))
    return out


def test_load_sequences_orders_frames_and_keeps_labelled_videos(tmp_path):
    rows = []
    for video, frames in (("b", [2, 0, 1]), ("a", [1, 0]), ("unlabelled", [0])):
        for seq in frames:
            rows.append(
                {
                    "video_id": video,
                    "fold": 0,
                    "seq_index": seq,
                    "feature": [float(seq)] * FEATURE_DIM,
                    "frame_prob": 0.5,
                }
            )
    write_table(pa.Table.from_pylist(rows, schema=FEATURES), tmp_path / "fold=0" / "part.parquet")
    loaded = load_sequences(tmp_path / "fold=0", {"a": 1, "b": 0})
    assert [(s.video_id, s.label) for s in loaded] == [("a", 1), ("b", 0)]
    assert loaded[1].features[:, 0].tolist() == [0.0, 1.0, 2.0]  # frame order restored
    write_table(FEATURES.empty_table(), tmp_path / "fold=1" / "part.parquet")
    assert load_sequences(tmp_path / "fold=1", {"a": 1}) == []


@pytest.mark.parametrize(
    ("length", "count", "expected"), [(30, 3, [0, 14, 29]), (12, 12, list(range(12)))]
)
def test_uniform_positions(length, count, expected):
    assert uniform_positions(length, count).tolist() == expected


def test_equal_frame_set_drops_short_videos():
    videos = _videos(20)
    equal = equal_frame_set(videos, 12)
    assert all(len(v.features) == 12 for v in equal)
    assert {v.video_id for v in equal} == {v.video_id for v in videos if len(v.features) >= 12}


def test_collate_pads_and_keeps_lengths():
    videos = _videos(3)
    batch = {
        "features": np.array([v.features.tobytes() for v in videos], dtype=object),
        "length": np.array([len(v.features) for v in videos]),
        "label": np.array([v.label for v in videos]),
    }
    padded, lengths, labels = collate_sequences(batch)
    assert padded.shape == (3, int(lengths.max()), FEATURE_DIM)
    for i, v in enumerate(videos):
        assert torch.equal(padded[i, : len(v.features)], torch.from_numpy(v.features))
        assert not padded[i, len(v.features) :].any()
    assert labels.tolist() == [0, 1, 0]


@pytest.mark.ray
@pytest.mark.slow
def test_fit_lstm_learns_and_resumes(ray_session, tmp_path):
    train, test = _videos(64, seed=1), _videos(32, seed=2)
    cfg = ClassifyConfig(
        lstm_epochs=4, lstm_batch_size=8, lstm_hidden=32, lstm_lr=5e-3, cpus_per_worker=0.5
    )
    run = fit_lstm(cfg, train, tmp_path, "lstm")
    probs = predict(cfg, run.model, test)
    labels = np.array([v.label for v in test])
    assert probs.shape == (32,) and ((probs >= 0.5) == labels).mean() > 0.75
    more = ClassifyConfig(
        lstm_epochs=5, lstm_batch_size=8, lstm_hidden=32, lstm_lr=5e-3, cpus_per_worker=0.5
    )
    assert fit_lstm(more, train, tmp_path, "lstm").start_epoch == 4
    assert predict(cfg, run.model, []).shape == (0,)
