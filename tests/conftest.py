"""One local Ray per test session, small and quiet: Ray on 2 cores in pytest needs its Train
health check polled often and its progress bars off, and one Ray shared by every test."""

import os

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# the Parquet reader a local Ray uses in the product (see usv_ray.runtime._init)
os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test that needs one; shut down after the session."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


DEMO_OVERRIDES = (
    "synth.patients=9",
    "synth.night_new_patients=1",  # the night: 4 or 5 follow-ups and one new patient
    # every archive video annotated: re-ID's few test pairs need them all (the night has
    # none, so the detector's tracklets still run)
    "synth.annotated_fraction=1.0",
    "classify.folds=2",  # each fold trains and caches a CNN: the fixture's largest cost
    "classify.cnn.epochs=1",
    "classify.lstm.epochs=2",
    # the LSTMs in this process: a Train run costs ~25 s of start-up, and Ray Train's LSTM
    # path has its own test (tests/classify/test_classify_lstm.py)
    "classify.lstm.workers=0",
    "classify.video.models=[]",
    "classify.frame_counts=[12, 31]",  # no video has 31 frames (ingest keeps 30): no N=31 LSTM
    "classify.n_boot=50",
    "classify.final_model=true",  # one more bundle member: a CNN Train run, an in-process LSTM
    "reid.epochs=1",
    "reid.p=2",
    "reid.k=2",
    "reid.n_boot=50",
    "tune.tau=[0.1, 0.3]",
    "detect.epochs=1",
    # a detector of one epoch is unsure of everything: track what it finds anyway, so the
    # automatic tracklets (and what scores them) run
    "detect.track.high=0.05",
    "detect.track.new_score=0.05",
    "detect.track.low=0.01",
    "detect.track.min_frames=2",
    "detect.track.min_score=0.0",
    # the small jobs in this process: an actor's start-up is most of their time here, and
    # the Ray Data paths have their own tests (tests/ingest, tests/predict, tests/index)
    "ingest.workers=0",
    "predict.workers=0",
    "index.workers=0",
    # the training runs too: each Ray Train run costs ~20 s of start-up here, and the
    # runner's Ray Train path has its own tests (tests/runner, tests/classify, tests/reid)
    "classify.workers=0",
    "reid.workers=0",
    "detect.workers=0",
    "ray.progress=false",
)


@pytest.fixture(scope="session")
def demo_run(ray_session, tmp_path_factory):
    """`usv-ray demo` on a small archive: synth, ingest, classify, re-ID, the tau sweep, the
    detector, predict, the index, a night, the score and the report. Returns (its config,
    its output folder).

    Few patients, folds and epochs, no 3D-CNN baselines and one frame count keep the suite quick.
    One run serves the demo's tests and the re-ID stage's (each Ray Train run costs ~20 s of
    start-up on 2 cores); tests that change a stage's output work on a copy.
    """
    import contextlib
    import io

    from usv_ray.cli import main, resolve_config_path
    from usv_ray.config import load_config

    root = tmp_path_factory.mktemp("demo")
    sets = [arg for override in DEMO_OVERRIDES for arg in ("--set", override)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(root), *sets]) == 0
    assert "demo finished" in printed.getvalue()
    (root / "printed.txt").write_text(printed.getvalue())  # scanned by the privacy test
    return load_config(resolve_config_path("demo"), DEMO_OVERRIDES), root
