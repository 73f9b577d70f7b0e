import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from toy_frames import write_toy_frames

from usv_ray.classify.cnn import CnnFold, collate_frames, fit_cnns
from usv_ray.config import ClassifyConfig, TrainConfig
from usv_ray.imaging import augment, normalise
from usv_ray.runner import load_model


def test_collate_and_augment_shapes():
    images = [np.full((4, 5), i, np.uint8).tobytes() for i in range(3)]
    batch = {
        "image": np.array(images, dtype=object),
        "label": np.array([0, 1, 1]),
        "height": np.array([4, 4, 4]),
        "width": np.array([5, 5, 5]),
    }
    x, y = collate_frames(batch)
    assert x.shape == (3, 1, 4, 5) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 1]
    assert x[2].unique().tolist() == [2]
    out = augment(normalise(x), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    again = augment(normalise(x), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: reruns augment the same way


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


def _registered_checkpoints(run) -> list[str]:
    """The checkpoints Ray Train's controller has registered for ``run`` so far (its snapshot,
    written once a reported checkpoint is registered: a restart from then on resumes from it)."""
    try:
        snapshot = json.loads((run / SNAPSHOT).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return []
    return [result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]]


def _live_training_workers() -> list[int]:
    from ray._private import state

    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE"
    ]


@pytest.fixture(scope="module")
def killed_run(ray_session, tmp_path_factory):
    """A fresh ``fit_cnns`` run of two folds whose training worker is SIGKILLed as soon as
    the first checkpoint of the second fold is registered; Ray Train restarts the worker,
    which skips the finished fold, resumes the second and finishes the run.

    One Ray Train run serves every test below (each run costs tens of seconds of start-up
    on 2 cores).
    """
    root = tmp_path_factory.mktemp("cnn")
    ids = write_toy_frames(root / "data")  # 8 videos x 4 frames of 32 x 32
    cfg = ClassifyConfig(
        cpus_per_worker=0.5, checkpoint_every_s=0, cnn=TrainConfig(epochs=4, batch_size=8, lr=1e-3)
    )  # a checkpoint every epoch: the kill lands between two
    folds = [CnnFold(0, tuple(ids[:6]), tuple(ids[6:])), CnnFold(1, tuple(ids[2:]), tuple(ids[:2]))]
    run = root / "runs" / "cnn"
    first_of_fold_1 = f"epoch_{cfg.cnn.epochs:04d}"  # one checkpoint per epoch, fold after fold
    result = {}

    def train():
        result["runs"] = fit_cnns(cfg, root / "data", folds, root / "runs", "cnn")

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 300
    registered: list[str] = []
    while first_of_fold_1 not in registered and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
        registered = _registered_checkpoints(run)
    # the kill lands in the second fold's next epoch: three more are left to train
    assert first_of_fold_1 in registered and thread.is_alive(), "the run ended before the kill"
    fold_0 = run / "models" / "fold=0.pt"
    finished_0 = fold_0.stat().st_mtime_ns
    workers = _live_training_workers()
    assert workers, "no live training worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "fit_cnns did not finish after the kill"
    return {
        "cfg": cfg,
        "folds": folds,
        "root": root,
        "runs": result["runs"],
        "killed_at": registered,
        "fold_0_written": finished_0,
    }


@pytest.mark.ray
@pytest.mark.slow
def test_fit_cnns_learns_every_fold_and_a_rerun_trains_only_what_is_missing(killed_run):
    from usv_ray.models.frame_cnn import FrameCNN

    cfg, folds, root, runs = (killed_run[k] for k in ("cfg", "folds", "root", "runs"))
    assert sorted(runs) == [0, 1]
    for run in runs.values():
        assert run.path.exists()
        assert run.best_value < 0.69  # below chance (ln 2): it learnt the toy labels
        assert run.samples_per_s > 0 and math.isfinite(run.samples_per_s)
        model = FrameCNN()
        model.load_state_dict(load_model(run.path)[0])  # the best weights load into a fresh model
    assert runs[0].path != runs[1].path

    # every fold finished: a rerun starts no Ray Train run and reports the same figures
    checkpoints = _registered_checkpoints(root / "runs" / "cnn")
    written = [run.path.stat().st_mtime_ns for run in runs.values()]
    again = fit_cnns(cfg, root / "data", folds, root / "runs", "cnn")
    assert again == runs
    assert _registered_checkpoints(root / "runs" / "cnn") == checkpoints
    assert [run.path.stat().st_mtime_ns for run in again.values()] == written

    # a lost weights file: a rerun (a new Ray Train run, restored from the checkpoint that
    # lists the fold as done) trains that fold again, from scratch, and leaves the other
    resumed = load_model(runs[1].path)[0]  # fold 1 was killed mid-run and resumed
    runs[1].path.unlink()
    redone = fit_cnns(cfg, root / "data", folds, root / "runs", "cnn")
    assert redone[1].path.exists() and redone[1].start_epoch == 0
    assert redone[1].best_value < 0.69
    assert redone[0] == runs[0] and runs[0].path.stat().st_mtime_ns == written[0]
    # reproducible: trained from scratch without a kill, it ends with the very weights that
    # the killed and resumed training ended with (same batches in the same order, the same
    # augmentation and dropout draws in every epoch, the optimizer state restored)
    uninterrupted = load_model(redone[1].path)[0]
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)
    assert redone[1].best_value == runs[1].best_value


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(killed_run):
    """SIGKILL the training worker mid-run: Ray Train restarts it from the last checkpoint,
    which skips the finished fold and continues the current one rather than restarting it."""
    cfg, runs = killed_run["cfg"], killed_run["runs"]
    assert killed_run["killed_at"][-1] == f"epoch_{cfg.cnn.epochs:04d}"
    assert runs[0].start_epoch == 0  # trained before the kill, whole
    assert (runs[0].path.stat().st_mtime_ns) == killed_run["fold_0_written"]  # not again
    assert 1 <= runs[1].start_epoch < cfg.cnn.epochs  # continued, not from scratch
