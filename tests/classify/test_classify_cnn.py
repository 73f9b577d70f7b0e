import math

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


@pytest.mark.ray
@pytest.mark.slow
def test_fit_cnn_learns_and_a_rerun_resumes(ray_session, tmp_path):
    from usv_ray.classify.models import FrameCNN

    ids = write_toy_frames(tmp_path / "data")
    cfg = ClassifyConfig(cnn_epochs=2, cnn_batch_size=8, cnn_lr=1e-3, cpus_per_worker=0.5)
    first = fit_cnn(cfg, tmp_path / "data", ids[:6], ids[6:], tmp_path / "runs", "fold0")
    assert first.start_epoch == 0 and first.best.exists()
    assert first.best_val_loss < 0.69  # below chance (ln 2): it learnt the toy labels
    assert first.images_per_s > 0 and math.isfinite(first.images_per_s)  # epoch 2's rate
    model = FrameCNN()
    model.load_state_dict(torch.load(first.best))  # the best weights load into a fresh model

    # the same run name with more epochs continues from the last checkpoint
    more = ClassifyConfig(cnn_epochs=3, cnn_batch_size=8, cnn_lr=1e-3, cpus_per_worker=0.5)
    resumed = fit_cnn(more, tmp_path / "data", ids[:6], ids[6:], tmp_path / "runs", "fold0")
    assert resumed.start_epoch == 2
    assert resumed.images_per_s > 0  # one epoch trained: its own rate
    assert resumed.best_val_loss <= first.best_val_loss


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_session, tmp_path):
    """SIGKILL the training worker mid-run: Ray Train restarts it from the last checkpoint."""
    import os
    import signal
    import threading
    import time

    from ray._private import state

    ids = write_toy_frames(tmp_path / "data", n_videos=8, frames=8)
    cfg = ClassifyConfig(cnn_epochs=12, cnn_batch_size=8, cpus_per_worker=0.5)
    result = {}

    def train():
        result["run"] = fit_cnn(cfg, tmp_path / "data", ids[:6], ids[6:], tmp_path, "killed")

    thread = threading.Thread(target=train)
    thread.start()
    second = tmp_path / "killed" / "epoch_0001"  # its existence means epoch_0000 is complete
    deadline = time.monotonic() + 300
    while not second.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE"
    ]
    assert workers, "no live training worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    run = result["run"]
    assert 1 <= run.start_epoch < cfg.cnn_epochs  # continued, not from scratch
    assert run.best.exists()
