import dataclasses
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

from usv_ray.classify.cnn import collate_frames, fit_cnn
from usv_ray.config import ClassifyConfig
from usv_ray.imaging import augment, normalise


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
    """A fresh ``fit_cnn`` run whose training worker is SIGKILLed as soon as its first
    checkpoint is registered; Ray Train restarts the worker, which finishes the run.

    One Ray Train run serves both tests below (each run costs tens of seconds of start-up
    on 2 cores): the killed run is also the first run that the rerun test continues.
    """
    root = tmp_path_factory.mktemp("cnn")
    ids = write_toy_frames(root / "data")  # 8 videos x 4 frames of 32 x 32
    cfg = ClassifyConfig(cnn_epochs=4, cnn_batch_size=8, cnn_lr=1e-3, cpus_per_worker=0.5)
    run = root / "runs" / "fold0"
    result = {}

    def train():
        result["run"] = fit_cnn(cfg, root / "data", ids[:6], ids[6:], root / "runs", "fold0")

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 300
    registered: list[str] = []
    while not registered and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
        registered = _registered_checkpoints(run)
    # the kill lands in the next epoch: three more are left to train
    assert registered and thread.is_alive(), "no checkpoint registered while the run lasted"
    workers = _live_training_workers()
    assert workers, "no live training worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "fit_cnn did not finish after the kill"
    return {"cfg": cfg, "ids": ids, "root": root, "run": result["run"], "killed_at": registered}


@pytest.mark.ray
@pytest.mark.slow
def test_fit_cnn_learns_and_a_rerun_resumes(killed_run):
    from usv_ray.classify.models import FrameCNN

    cfg, ids, root, first = (killed_run[k] for k in ("cfg", "ids", "root", "run"))
    assert first.best.exists()
    assert first.best_val_loss < 0.69  # below chance (ln 2): it learnt the toy labels
    assert first.images_per_s > 0 and math.isfinite(first.images_per_s)  # a later epoch's rate
    model = FrameCNN()
    model.load_state_dict(torch.load(first.best))  # the best weights load into a fresh model

    # the same run name with more epochs continues from the last checkpoint
    more = dataclasses.replace(cfg, cnn_epochs=cfg.cnn_epochs + 1)
    resumed = fit_cnn(more, root / "data", ids[:6], ids[6:], root / "runs", "fold0")
    assert resumed.start_epoch == cfg.cnn_epochs
    assert resumed.images_per_s > 0  # one epoch trained: its own rate
    assert resumed.best_val_loss <= first.best_val_loss


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(killed_run):
    """SIGKILL the training worker mid-run: Ray Train restarts it from the last checkpoint."""
    cfg, run = killed_run["cfg"], killed_run["run"]
    assert killed_run["killed_at"] == ["epoch_0000"]  # a fresh run starts at epoch 0
    assert 1 <= run.start_epoch < cfg.cnn_epochs  # continued, not from scratch
    assert run.best.exists()
