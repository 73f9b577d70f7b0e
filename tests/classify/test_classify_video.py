import numpy as np
import pytest
import torch
from runner_checks import assert_resume_is_exact
from toy_frames import write_toy_frames

from usv_ray.classify.video import (
    augment_clips,
    collate_clips,
    fit_video_models,
    make_clip,
    predict_video_models,
    read_clips,
)
from usv_ray.config import ClassifyConfig, VideoConfig
from usv_ray.frames import uniform_positions
from usv_ray.layout import IngestFolder
from usv_ray.runner import training_log


def test_make_clip_resizes_and_samples():
    frames = np.stack([np.full((40, 30), 10 * t, np.uint8) for t in range(5)])  # (5, 40, 30)
    clip = make_clip(frames, 12, 16)
    assert clip.shape == (12, 16, 16) and clip.dtype == np.uint8
    assert clip[:, 0, 0].tolist() == [10 * p for p in uniform_positions(5, 12)]
    square = frames[:, :30, :]  # (5, 30, 30): already the size, all frames: unchanged
    assert np.array_equal(make_clip(square, 5, 30), square)
    with pytest.raises(ValueError):
        make_clip(frames.astype(np.float32), 12, 16)


def test_read_clips_gives_one_row_per_video(tmp_path):
    ids = write_toy_frames(tmp_path, n_videos=3, frames=2)
    shards = IngestFolder(tmp_path).frame_shards(ids)
    table = read_clips({"path": np.array(shards)}, count=5, size=16)
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
def test_fit_and_predict_every_fold_and_a_rerun_trains_nothing(ray_session, tmp_path):
    # the smallest set that has every part: one model (every model's forward and backward:
    # test_models_take_any_clip_length_and_learn), two folds, three videos per fold, one
    # of them validating the other fold's model, two-frame 16 x 16 clips; the runner in
    # this process (its Ray Train path, the same for every model: test_classify_cnn.py)
    data, runs = tmp_path / "data", tmp_path / "runs"
    ids = write_toy_frames(data, n_videos=6, frames=2)
    folds = {video: i % 2 for i, video in enumerate(ids)}
    val_ids = {0: [ids[1]], 1: [ids[0]]}
    cfg = ClassifyConfig(
        folds=2,
        workers=0,
        video=VideoConfig(models=("C3D_BN",), clip_frames=2, clip_size=16, epochs=1, batch_size=4),
    )
    first = fit_video_models(cfg, data, folds, runs, "video", val_ids)
    assert set(first) == {"C3D_BN"} and set(first["C3D_BN"]) == {0, 1}
    rows = training_log(runs, "video")
    log = [(r["model"], r["epoch"], r["attempt"]) for r in rows]
    assert log == [("C3D_BN_fold=0", 0, 1), ("C3D_BN_fold=1", 0, 1)]
    assert [r["train_samples"] for r in rows] == [2, 2]  # outside the fold, less validation
    assert [r["val_samples"] for r in rows] == [1, 1]

    # a rerun of the finished run starts no training, and returns the same models
    checkpoints = sorted(p.name for p in (runs / "video").glob("epoch_*"))
    again = fit_video_models(cfg, data, folds, runs, "video", val_ids)
    assert training_log(runs, "video") == rows
    assert sorted(p.name for p in (runs / "video").glob("epoch_*")) == checkpoints
    name = "head.1.weight"  # fc6
    assert torch.equal(again["C3D_BN"][1][name], first["C3D_BN"][1][name])

    predictions = predict_video_models(cfg, first, data, folds)
    assert list(predictions.columns) == ["video_id", "fold", "method", "prob"]
    assert sorted(zip(predictions.video_id, predictions.fold, strict=True)) == sorted(folds.items())
    assert set(predictions.method) == {"C3D_BN"}
    assert predictions.prob.between(0, 1).all()


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_video_run_resumes_exactly(ray_session, monkeypatch, tmp_path):
    data = tmp_path / "data"
    ids = write_toy_frames(data, n_videos=6, frames=2)  # 2 train per fold: batch norm needs 2
    folds = {video: i % 2 for i, video in enumerate(ids)}
    cfg = ClassifyConfig(
        folds=2,
        workers=0,  # the runner's loop in this process
        checkpoint_every_s=0,
        video=VideoConfig(models=("R3D",), clip_frames=2, clip_size=16, epochs=2, batch_size=2),
    )

    def fit(storage):
        fit_video_models(cfg, data, folds, storage, "video", {0: [ids[1]], 1: [ids[0]]})
        return {p.stem: p for p in (storage / "video" / "models").glob("*.pt")}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, "video", kill_after=3)
