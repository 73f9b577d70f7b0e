import dataclasses
import typing

import numpy as np
import pytest
import torch
from toy_frames import write_toy_frames

from usv_ray.classify.cnn import frame_shards
from usv_ray.classify.video import (
    VIDEO_MODELS,
    augment_clips,
    build_video_model,
    collate_clips,
    fit_video_models,
    make_clip,
    predict_video_models,
    read_clips,
    training_log,
)
from usv_ray.config import ClassifyConfig, VideoModel
from usv_ray.video3d import clip_positions


def test_every_configurable_model_has_a_builder():
    assert tuple(VIDEO_MODELS) == typing.get_args(VideoModel)
    with pytest.raises(ValueError, match="unknown video model"):
        build_video_model("C3D")


@pytest.mark.parametrize("name", list(VIDEO_MODELS))
def test_models_take_any_clip_length_and_learn(name):
    torch.manual_seed(0)
    model = build_video_model(name)
    with torch.no_grad():  # shapes only: backward is the slow part on a CPU
        for frames, size in ((12, 32), (1, 16)):
            assert model(torch.randn(2, 1, frames, size, size)).shape == (2, 2)
    logits = model(torch.randn(2, 1, 3, 16, 16))  # (B, 1, T, H, W) -> (B, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    stem = next(p for p in model.parameters() if p.dim() == 5)  # the first 3D conv
    assert stem.shape[1] == 1  # one gray input channel
    assert all(p.grad is not None for p in model.parameters())
    assert stem.grad.abs().sum() > 0
    model.eval()  # batch norm from running stats: a single clip works
    assert model(torch.randn(1, 1, 12, 16, 16)).shape == (1, 2)


def test_make_clip_resizes_and_samples():
    frames = np.stack([np.full((40, 30), 10 * t, np.uint8) for t in range(5)])  # (5, 40, 30)
    clip = make_clip(frames, 12, 16)
    assert clip.shape == (12, 16, 16) and clip.dtype == np.uint8
    assert clip[:, 0, 0].tolist() == [10 * p for p in clip_positions(5, 12)]
    square = frames[:, :30, :]  # (5, 30, 30): already the size, all frames: unchanged
    assert np.array_equal(make_clip(square, 5, 30), square)
    with pytest.raises(ValueError):
        make_clip(frames.astype(np.float32), 12, 16)


def test_read_clips_gives_one_row_per_video(tmp_path):
    ids = write_toy_frames(tmp_path, n_videos=3, frames=2)
    table = read_clips({"path": np.array(frame_shards(tmp_path, ids))}, count=5, size=16)
    assert table["video_id"].to_pylist() == ids
    assert table["label"].to_pylist() == [0, 1, 0]
    clips, labels = collate_clips(
        {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    )
    assert clips.shape == (3, 1, 5, 16, 16) and clips.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 0]
    # the label shows in the brightness of the toy frames, and survives the resize
    assert clips[1].float().mean() > clips[0].float().mean() + 50


def test_augment_clips_is_one_transform_per_clip():
    frame = torch.rand(4, 1, 1, 8, 8)  # (B, 1, 1, H, W)
    clips = frame.expand(4, 1, 6, 8, 8)  # every frame of a clip the same
    out = augment_clips(clips, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape
    assert torch.equal(out, out[:, :, :1].expand_as(out))  # frames still all the same
    assert torch.equal(out, augment_clips(clips, torch.Generator().manual_seed(0)))  # seeded


@pytest.mark.ray
@pytest.mark.slow
def test_fit_and_predict_every_fold_and_a_rerun_resumes(ray_session, tmp_path):
    # the resume mechanics on the smallest run that has them: one model (every model's
    # forward and backward: test_models_take_any_clip_length_and_learn), the fewest folds,
    # two videos per fold (one of each label), two-frame 16 x 16 clips
    data, runs = tmp_path / "data", tmp_path / "runs"
    ids = write_toy_frames(data, n_videos=4, frames=2)
    folds = {video: (i // 2) % 2 for i, video in enumerate(ids)}  # both labels in each fold
    cfg = ClassifyConfig(
        folds=2,
        video_models=("C3D_BN",),
        clip_frames=2,
        clip_size=16,
        video_epochs=1,
        video_batch_size=4,
        cpus_per_worker=0.5,
    )
    first = fit_video_models(cfg, data, folds, runs, "video")
    assert set(first) == {"C3D_BN"} and set(first["C3D_BN"]) == {0, 1}
    log = [(r["method"], r["fold"], r["epoch"], r["attempt"]) for r in training_log(runs, "video")]
    assert log == [("C3D_BN", 0, 0, 1), ("C3D_BN", 1, 0, 1)]

    # the same run name with more epochs: epoch 1 of the first (model, fold), not epoch 0
    more = dataclasses.replace(cfg, video_epochs=2)
    second = fit_video_models(more, data, folds, runs, "video")
    rows = training_log(runs, "video")
    log = [(r["method"], r["fold"], r["epoch"], r["attempt"]) for r in rows]
    assert log[2:] == [("C3D_BN", 0, 1, 2), ("C3D_BN", 1, 1, 2)]
    assert [r["train_clips"] for r in rows] == [2] * 4  # the videos outside the fold
    name = "head.1.weight"  # fc6
    assert not torch.equal(first["C3D_BN"][0][name], second["C3D_BN"][0][name])

    # a rerun of the finished run starts no training, and returns the same models
    checkpoints = sorted(p.name for p in (runs / "video").glob("epoch_*"))
    third = fit_video_models(more, data, folds, runs, "video")
    assert training_log(runs, "video") == rows
    assert sorted(p.name for p in (runs / "video").glob("epoch_*")) == checkpoints
    assert torch.equal(third["C3D_BN"][1][name], second["C3D_BN"][1][name])

    predictions = predict_video_models(more, second, data, folds)
    assert list(predictions.columns) == ["video_id", "fold", "method", "prob"]
    assert sorted(zip(predictions.video_id, predictions.fold, strict=True)) == sorted(folds.items())
    assert set(predictions.method) == {"C3D_BN"}
    assert predictions.prob.between(0, 1).all()
