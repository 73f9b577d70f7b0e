"""Ray Tune sweeps: tau on toy embeddings, and a re-ID training sweep with ASHA that is
interrupted after its first trial and resumed."""

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from ray import tune
from toy_tracklets import write_toy_tracklets

from usv_ray.cli import main
from usv_ray.config import load_config
from usv_ray.io import write_table
from usv_ray.schemas import EMBEDDINGS
from usv_ray.tune import TuneError, run_tau_sweep, run_tune
from usv_ray.tune.sweep import apply_params

pytestmark = [pytest.mark.ray]


def write_toy_reid_folder(reid: Path, seed: int = 0) -> None:
    """A re-ID folder whose validation embeddings are separable at tau = 0.5 only.

    Each patient has 3 nodules whose centres have cosine 0.25; a tracklet is its centre
    plus an independent direction, cos(tracklet, centre)^2 = 0.6. So two tracklets of one
    nodule are at cosine distance ~0.4, of two nodules of one patient at ~0.85: tau 0.2
    splits nodules, 0.95 merges them, 0.5 finds them exactly.
    """
    rng = np.random.default_rng(seed)
    dim, rows, splits = 512, [], []
    for p in range(6):
        shared = rng.normal(size=dim)
        centres = []
        for _ in range(3):  # cos between centres: 0.25 through a shared component
            c = 0.5 * shared / np.linalg.norm(shared) + np.sqrt(0.75) * _unit(rng, dim)
            centres.append(c / np.linalg.norm(c))
        split = "val" if p < 4 else "train"
        for n, centre in enumerate(centres):
            for t in range(3):
                x = np.sqrt(0.6) * centre + np.sqrt(0.4) * _unit(rng, dim)
                tracklet = f"t{p}{n}{t}"
                rows.append(
                    {
                        "tracklet_id": tracklet,
                        "patient_key": f"pk{p}",
                        "study_key": "s",
                        "embedding": (x / np.linalg.norm(x)).astype(np.float32).tolist(),
                        "model": "CM:toy",
                    }
                )
                splits.append(
                    {"tracklet_id": tracklet, "patient_key": f"pk{p}", "nodule_id": f"n{n}"}
                )
                splits[-1]["split"] = split
    # a validation tracklet without a nodule is left out of the scores
    splits.append({"tracklet_id": "t999", "patient_key": "pk0", "nodule_id": None, "split": "val"})
    rows.append({**rows[0], "tracklet_id": "t999"})
    write_table(pa.Table.from_pylist(rows, schema=EMBEDDINGS), reid / "embeddings" / "part.parquet")
    write_table(pa.Table.from_pandas(pd.DataFrame(splits)), reid / "splits.parquet")


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim)
    return v / np.linalg.norm(v)


def test_apply_params_keeps_field_types():
    cfg = apply_params(load_config(), {"reid.p": np.int64(4), "classify.cnn_lr": 0.01})
    assert cfg.reid.p == 4 and type(cfg.reid.p) is int
    assert cfg.classify.cnn_lr == 0.01


@pytest.mark.slow
def test_tau_sweep_finds_the_separating_tau(ray_session, tmp_path, capsys):
    write_toy_reid_folder(tmp_path / "reid")
    cfg = load_config(None, ["tune.tau=[0.95, 0.2, 0.5]"])
    summary = run_tau_sweep(cfg, tmp_path / "reid", tmp_path / "tune")
    table = summary.table.set_index("tau")
    assert list(table.index) == [0.2, 0.5, 0.95]
    assert summary.best == {"index.tau": 0.5}
    print(f"tau sweep of 3 values: {summary.seconds:.1f} s")
    assert table.loc[0.5, "f_score"] == 1.0 and table.loc[0.5, "clusters"] == 12
    assert table.loc[0.2, "recall"] == 0 and table.loc[0.2, "clusters"] == 36  # singletons
    assert table.loc[0.95, "precision"] < 1 and table.loc[0.95, "recall"] == 1
    best = load_config(summary.best_config)
    assert best.index.tau == 0.5 and best.tune.tau == (0.95, 0.2, 0.5)
    for name in ("results.csv", "results.md", "tune.json"):
        assert (tmp_path / "tune" / name).exists()
    # the command line on the same folder resumes the finished sweep: nothing to evaluate
    argv = ["tune", "--target", "tau", "--data", str(tmp_path / "reid")]
    argv += ["--out", str(tmp_path / "tune"), "--set", "tune.tau=[0.95, 0.2, 0.5]"]
    assert main(argv) == 0
    assert "best index.tau=0.5 (f_score 1)" in capsys.readouterr().out
    # the same folder with other settings is refused rather than mixed
    with pytest.raises(Exception, match="other settings"):
        run_tau_sweep(load_config(None, ["tune.tau=[0.3]"]), tmp_path / "reid", tmp_path / "tune")


def test_tau_sweep_needs_a_reid_folder(tmp_path):
    with pytest.raises(TuneError, match="re-ID folder"):
        run_tau_sweep(load_config(), tmp_path, tmp_path / "tune")


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


class InterruptOnce(tune.Callback):
    """Ctrl+C once, after the first trial ends, while a marker file exists."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if os.path.exists(self.marker):
            os.unlink(self.marker)
            os.kill(os.getpid(), signal.SIGINT)


REID = [
    "reid.epochs=2",
    "reid.clip_frames=2",
    "reid.clip_height=16",
    "reid.clip_width=8",
    "reid.k=2",
    "reid.cpus_per_worker=0.5",
    "tune.num_samples=2",
    "tune.max_concurrent=1",
    "tune.reid_p=[2]",
    "tune.grace_period=1",
]


@pytest.mark.slow
def test_reid_sweep_with_asha_resumes_after_an_interruption(ray_session, tmp_path):
    data, out = tmp_path / "data", tmp_path / "tune"
    write_toy_tracklets(data, patients=8)
    cfg = load_config(None, REID)
    marker = tmp_path / "interrupt"
    marker.touch()
    with pytest.raises(TuneError, match="interrupted"):
        run_tune(cfg, "reid", data, out, callbacks=[InterruptOnce(str(marker))])
    first = sorted(p.name for p in (out / "runs").iterdir())
    assert len(first) >= 1  # the first trial's Train run (maybe the second's, started)
    # the first trial finished both epochs (ASHA never stops the first one to report)
    finished = [out / "runs" / n for n in first if (out / "runs" / n / "epoch_0001").exists()]
    assert len(finished) == 1
    before = _files(finished[0])

    summary = run_tune(cfg, "reid", data, out)
    table = summary.table
    assert len(table) == 2 and (table["status"] != "").all()
    assert not table["status"].str.startswith("error").any()
    # the finished trial was not run again: nothing in its Train run changed
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2 and set(first) <= set(runs)
    assert _files(finished[0]) == before
    assert table["best_val_acc"].between(0, 1).all()
    assert summary.metric == "best_val_acc" and summary.mode == "max"
    assert summary.best_value == table["best_val_acc"].max()
    assert set(summary.best) == {"reid.lr", "reid.p"} and summary.best["reid.p"] == 2
    best = load_config(summary.best_config)
    assert best.reid.lr == pytest.approx(summary.best["reid.lr"])
    assert best.reid.epochs == 2  # the rest of the config comes along
    assert (out / "results.csv").exists() and (out / "results.md").exists()
    # ASHA's verdict or a full run: every trial reports its epochs
    assert set(table["epoch"].astype(int)) <= {0, 1}

    # a third run finds every trial finished and trains nothing
    again = run_tune(cfg, "reid", data, out)
    pd.testing.assert_frame_equal(again.table, table)
