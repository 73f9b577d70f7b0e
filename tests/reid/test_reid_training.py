import pytest
from runner_checks import assert_resume_is_exact
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ReidConfig
from usv_ray.reid.training import fit_reid
from usv_ray.runner import load_model, training_log


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["CM", "VM"])
def test_a_killed_reid_run_resumes_exactly(monkeypatch, tmp_path, kind):
    # the runner's loop in this process (workers: 0): 4 training patients, 2 validating
    ids = write_toy_tracklets(tmp_path / "data", patients=6, nodules=2, per_nodule=2)
    train, val = [t for t in ids if t < "t04"], [t for t in ids if t >= "t04"]
    cfg = ReidConfig(
        workers=0,
        epochs=2,
        clip_frames=2,
        clip_height=16,
        clip_width=8,
        p=2,
        k=2,
        batch_size=4,
        lr=1e-3,
        checkpoint_every_s=0,
    )

    def fit(storage):
        trained = fit_reid(cfg, kind, tmp_path / "data", train, val, storage, kind)
        return {kind: trained.path}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, kind, kill_after=1)
    log = training_log(tmp_path / "uninterrupted", kind)
    assert all(0 <= row["val_acc"] <= 1 for row in log)  # every epoch validates
    _, meta = load_model(tmp_path / "uninterrupted" / kind / "models" / f"{kind}.pt")
    assert meta["model"] == kind and meta["n_identities"] == 8 and meta["metric"] == "val_acc"
