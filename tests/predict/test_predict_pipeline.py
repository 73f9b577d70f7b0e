"""`usv-ray predict` on a toy archive that grows as a hospital's does: the first night,
a rerun with nothing new, a new video, a re-ingested one, another bundle, and the checks
that refuse a bundle or data it cannot trust. One archive runs through the module's tests
in order (each run costs seconds of Ray start-up)."""

import shutil

import pyarrow.parquet as pq
import pytest
from toy_bundle import INGEST, write_toy_bundle, write_toy_data, write_toy_video, write_videos_table

from usv_ray.bundle import BundleError
from usv_ray.config import Config, PredictConfig, RayConfig
from usv_ray.predict.pipeline import PredictError, run_predict
from usv_ray.schemas import DIAGNOSES, TRACKLET_DIAGNOSES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the first night diagnoses through Ray Data; the later ones in this process (predict.workers
# 0: the same diagnoser without an actor pool's start-up in every test)
RAY_CFG = Config(ray=RayConfig(progress=False), predict=PredictConfig(cpus_per_worker=0.5))
CFG = Config(ray=RayConfig(progress=False), predict=PredictConfig(workers=0))


@pytest.fixture(scope="module")
def night(ray_session, tmp_path_factory):
    """A data folder of 4 ok videos and one that ingest could not read, and a bundle."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    ids = write_toy_data(data, n_videos=4, frames=5, tracklets=2)
    videos = [{"video_id": v, "patient_key": f"p{i % 2}"} for i, v in enumerate(ids)]
    videos.append(
        {"video_id": "broken", "patient_key": "p0", "status": "error", "error": "not_video: x"}
    )
    write_videos_table(data, videos)
    return {"root": root, "data": data, "videos": videos, "bundle": write_toy_bundle(root / "cls")}


def _tables(out):
    return (
        pq.read_table(out / "diagnoses.parquet").to_pandas(),
        pq.read_table(out / "tracklet_diagnoses.parquet").to_pandas(),
    )


def test_the_first_night_diagnoses_every_video(night):
    out = night["root"] / "predict"
    s = run_predict(RAY_CFG, night["bundle"], night["data"], out)
    assert (s.videos, s.diagnosed, s.not_ingested, s.failed) == (5, 4, 1, 0) and s.written
    assert (s.errors, s.tracklets, s.unchanged, s.resumed) == (1, 8, 0, 0)
    # tonight's share read malignant; a bundle that records no expected share warns of none
    assert s.tonight == 4 and s.tonight_malignant == s.malignant
    assert s.expected_share is None and s.share_warning() is None
    assert pq.read_schema(out / "diagnoses.parquet").equals(DIAGNOSES)
    assert pq.read_schema(out / "tracklet_diagnoses.parquet").equals(TRACKLET_DIAGNOSES)
    videos, tracklets = _tables(out)
    assert videos["video_id"].tolist() == ["broken", "v0", "v1", "v2", "v3"]
    broken = videos.set_index("video_id").loc["broken"]
    assert broken["status"] == "error" and broken["error"] == "not ingested: not_video: x"
    ok = videos[videos["status"] == "ok"]
    assert ok["prob"].between(0, 1).all() and set(ok["reading"]) <= {"malignant", "benign"}
    assert (ok["member_probs"].map(len) == 2).all()
    assert sorted(tracklets["tracklet_id"]) == [f"v{i}-t{j}" for i in range(4) for j in (0, 1)]


def test_a_rerun_with_nothing_new_writes_nothing(night):
    out = night["root"] / "predict"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    s = run_predict(CFG, night["bundle"], night["data"], out)
    assert s.diagnosed == 0 and not s.written and s.videos == s.unchanged == 5
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_new_video_and_a_reingested_one_are_all_that_is_diagnosed(night):
    out, data = night["root"] / "predict", night["data"]
    old, _ = _tables(out)
    write_toy_video(data, "v4", "p1", frames=3, seed=9, tracklets=1)
    write_toy_video(data, "v1", "p1", frames=5, seed=1, tracklets=3)  # re-ingested: a tracklet more
    write_videos_table(data, [*night["videos"], {"video_id": "v4", "patient_key": "p1"}])
    s = run_predict(CFG, night["bundle"], data, out)
    assert s.diagnosed == 2 and s.unchanged == 4 and s.videos == 6 and s.tracklets == 10
    new, tracklets = _tables(out)
    unchanged = ["broken", "v0", "v2", "v3"]
    kept = new.set_index("video_id").loc[unchanged, "diagnosed_at"]
    assert (kept == old.set_index("video_id").loc[unchanged, "diagnosed_at"]).all()
    assert set(tracklets.loc[tracklets["video_id"] == "v1", "tracklet_id"]) == {
        "v1-t0",
        "v1-t1",
        "v1-t2",
    }


def test_another_bundle_adds_its_own_version_beside_the_first(night):
    out = night["root"] / "predict"
    first, _ = _tables(out)
    other = write_toy_bundle(night["root"] / "cls2", seed=1)
    s = run_predict(CFG, other, night["data"], out)
    assert (s.diagnosed, s.not_ingested) == (5, 1)
    assert s.model_version != first["model_version"][0]
    both, _ = _tables(out)
    assert both.groupby("model_version").size().tolist() == [6, 6]
    earlier = both[both["model_version"] == first["model_version"][0]].reset_index(drop=True)
    assert earlier.equals(first)  # the first version's rows, untouched


def test_a_bundle_moved_elsewhere_still_diagnoses(night):
    moved = night["root"] / "moved"
    shutil.copytree(night["bundle"], moved)
    s = run_predict(CFG, moved, night["data"], night["root"] / "predict_moved")
    assert s.videos == 6 and s.errors == 1


def test_a_bundle_it_cannot_trust_or_data_made_otherwise_are_clear_errors(night, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(night["bundle"], bad)
    next(bad.glob("lstm_*.pt")).unlink()
    with pytest.raises(BundleError, match=r"the weights file lstm_fold=\d\.pt is missing"):
        run_predict(CFG, bad, night["data"], tmp_path / "out")
    other = write_toy_data(tmp_path / "data224", n_videos=1) and tmp_path / "data224"
    bigger = write_toy_bundle(tmp_path / "cls", ingest=INGEST.__class__(frame_size=224))
    with pytest.raises(BundleError, match=r"ingest\.frame_size: 32 there, 224 for the model"):
        run_predict(CFG, bigger, other, tmp_path / "out")
    with pytest.raises(PredictError, match="run `usv-ray ingest` first"):
        run_predict(CFG, night["bundle"], tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
