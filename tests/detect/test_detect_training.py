"""Training the detector: what it trains on, a clear error when it cannot, and the runner's
resume guarantee."""

import pandas as pd
import pytest
from runner_checks import assert_resume_is_exact
from toy_boxes import write_boxed_frames
from toy_bundle import write_videos_table

from usv_ray.config import DetectConfig
from usv_ray.detect.data import DetectError, annotated_videos, split_videos
from usv_ray.detect.training import DetectorTask, frames_dataset
from usv_ray.runner import RunSettings, train_models


def test_only_videos_with_whole_annotations_train_the_detector(tmp_path):
    videos = [
        {"video_id": "a", "patient_key": "p1", "annotated": True},
        {"video_id": "b", "patient_key": "p1", "annotated": False},
        {"video_id": "c", "patient_key": "p2", "annotated": True, "status": "error"},
        {"video_id": "d", "patient_key": "p3", "annotated": None},
    ]
    write_videos_table(tmp_path, videos)
    assert annotated_videos(tmp_path)["video_id"].tolist() == ["a"]
    write_videos_table(tmp_path, videos[1:])
    with pytest.raises(DetectError, match=r"no video in .* has whole annotations"):
        annotated_videos(tmp_path)
    with pytest.raises(DetectError, match="run `usv-ray ingest`"):
        annotated_videos(tmp_path / "none")


def test_the_split_is_by_patient():
    ids = [f"v{i}" for i in range(12)]
    videos = pd.DataFrame({"video_id": ids, "patient_key": [f"p{i // 2}" for i in range(12)]})
    videos = split_videos(videos, DetectConfig())
    assert (videos.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(videos["split"]) == {"train", "val", "test"}
    with pytest.raises(DetectError, match="detector split"):
        split_videos(videos.iloc[:2], DetectConfig())  # one patient cannot fill three splits


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_detector_run_resumes_exactly(ray_session, monkeypatch, tmp_path):
    ids = write_boxed_frames(tmp_path / "data", n_videos=4, frames=6)
    cfg = DetectConfig(epochs=3, batch_size=8, workers=0, checkpoint_every_s=0)

    def fit(storage):
        sets = {
            "train": frames_dataset(tmp_path / "data", ids[:3]),
            "val": frames_dataset(tmp_path / "data", ids[3:]),
        }
        run = train_models(
            [DetectorTask(cfg, 32)],
            RunSettings.of(cfg, cfg, cfg.seed),
            storage,
            "detector",
            lambda _: sets,
        )
        return {"detector": run["detector"].path}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, "detector", kill_after=2)
