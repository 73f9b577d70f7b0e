import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from runner_checks import assert_resume_is_exact
from toy_features import toy_videos, write_feature_cache

from usv_ray.classify.lstm import (
    LstmJob,
    equal_frame_set,
    fit_lstms,
    job_sequences,
    load_sequences,
    predict,
    rank_batches,
)
from usv_ray.config import ClassifyConfig, LstmConfig
from usv_ray.io import write_table
from usv_ray.runner import training_log
from usv_ray.schemas import FEATURE_DIM, FEATURES


def test_load_sequences_orders_frames_and_keeps_labelledtoy_videos(tmp_path):
    rows = []
    for video, frames in (("b", [2, 0, 1]), ("a", [1, 0]), ("unlabelled", [0])):
        for seq in frames:
            rows.append(
                {
                    "video_id": video,
                    "fold": 0,
                    "seq_index": seq,
                    "frame_index": seq,
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


def test_equal_frame_set_drops_shorttoy_videos():
    videos = toy_videos(20)
    equal = equal_frame_set(videos, 12)
    assert all(len(v.features) == 12 for v in equal)
    assert {v.video_id for v in equal} == {v.video_id for v in videos if len(v.features) >= 12}


def test_job_keys_are_distinct_file_names():
    keys = {LstmJob(0).key, LstmJob(0, 12).key, LstmJob(1).key, LstmJob(1, 12).key}
    assert len(keys) == 4 and all("/" not in key for key in keys)


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (7, 2), (1, 2), (5, 3)])
def test_rank_batches_cover_every_video_with_equal_batch_counts(n, world):
    per_rank = [rank_batches(n, 3, rank, world, np.random.default_rng(0)) for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1  # DDP: same steps on every rank
    seen = np.concatenate([np.concatenate(batches) for batches in per_rank])
    assert set(seen.tolist()) == set(range(n))
    assert len(seen) == -(-n // world) * world  # wrapped around by fewer than `world` videos


def test_job_sequences_split_by_fold_and_frames(tmp_path):
    videos = toy_videos(12)
    folds = {v.video_id: i % 3 for i, v in enumerate(videos)}
    write_feature_cache(tmp_path, videos, folds=range(3))
    table = {v.video_id: (v.label, folds[v.video_id]) for v in videos}
    train = job_sequences(tmp_path, table, LstmJob(1), train=True)
    test = job_sequences(tmp_path, table, LstmJob(1), train=False)
    assert {s.video_id for s in train} == {v for v, f in folds.items() if f != 1}
    assert {s.video_id for s in test} == {v for v, f in folds.items() if f == 1}
    equal = job_sequences(tmp_path, table, LstmJob(1, 12), train=True)
    long_ones = {v.video_id for v in videos if len(v.features) >= 12 and folds[v.video_id] != 1}
    assert {s.video_id for s in equal} == long_ones
    assert all(len(s.features) == 12 for s in equal)


@pytest.mark.ray
@pytest.mark.slow
def test_fit_lstms_learns_and_reruns_only_what_is_missing(ray_session, tmp_path):
    videos = toy_videos(96, seed=1)
    folds = {v.video_id: (i // 2) % 2 for i, v in enumerate(videos)}  # both labels per fold
    write_feature_cache(tmp_path / "features", videos, folds=range(2))
    table = {v.video_id: (v.label, folds[v.video_id]) for v in videos}
    cfg = ClassifyConfig(
        cpus_per_worker=0.5, lstm=LstmConfig(epochs=4, batch_size=8, hidden=32, lr=5e-3)
    )
    jobs = [LstmJob(0), LstmJob(1), LstmJob(1, 12)]
    paths = fit_lstms(cfg, tmp_path / "features", table, jobs, tmp_path, "lstm")  # 1 worker
    assert all(path.exists() for path in paths.values())
    test = job_sequences(tmp_path / "features", table, LstmJob(1), train=False)
    probs = predict(paths[LstmJob(1)], test)
    labels = np.array([v.label for v in test])
    assert probs.shape == (48,) and ((probs >= 0.5) == labels).mean() > 0.75
    assert predict(paths[LstmJob(1)], []).shape == (0,)

    # a crash after the first model: the rerun trains the missing ones and keeps the rest;
    # in this process (lstm.workers=0, without Ray Train): the same jobs, no start-up
    kept = paths[LstmJob(0)].stat().st_mtime_ns
    missing = paths[LstmJob(1, 12)]
    missing.unlink()
    local = dataclasses.replace(cfg, lstm=dataclasses.replace(cfg.lstm, workers=0))
    again = fit_lstms(local, tmp_path / "features", table, jobs, tmp_path, "lstm")
    assert again == paths and missing.exists()
    assert paths[LstmJob(0)].stat().st_mtime_ns == kept
    equal = job_sequences(tmp_path / "features", table, LstmJob(1, 12), train=False)
    equal_labels = np.array([v.label for v in equal])
    assert ((predict(missing, equal) >= 0.5) == equal_labels).mean() > 0.75  # it learnt


def test_fit_lstms_validates_and_a_killed_run_resumes_exactly(monkeypatch, tmp_path):
    # in this process (lstm.workers: 0): the runner's loop as on a Ray Train worker
    videos = toy_videos(24, seed=2)
    folds = {v.video_id: i % 2 for i, v in enumerate(videos)}
    write_feature_cache(tmp_path / "features", videos, folds=range(2))
    table = {v.video_id: (v.label, folds[v.video_id]) for v in videos}
    val_ids = {0: ["v001", "v003"], 1: ["v000", "v002"]}  # held out of training, validate
    cfg = ClassifyConfig(
        checkpoint_every_s=0, lstm=LstmConfig(epochs=3, batch_size=4, hidden=8, workers=0)
    )
    jobs = [LstmJob(0), LstmJob(1, 4)]

    def fit(storage):
        paths = fit_lstms(cfg, tmp_path / "features", table, jobs, storage, "lstm", val_ids)
        return {job.key: path for job, path in paths.items()}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, "lstm", kill_after=4)
    log = training_log(tmp_path / "uninterrupted", "lstm")
    assert all(row["val_samples"] == 2 for row in log)  # every epoch validates the held-out two
    assert {row["train_samples"] for row in log if row["model"] == "fold=0_variable"} == {10}
