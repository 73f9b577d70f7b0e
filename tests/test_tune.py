"""Ray Tune sweeps: tau on toy embeddings, a re-ID training sweep with ASHA that is
interrupted after its first trial and resumed, the classify targets (cnn on toy frames;
lstm, equal_frames and variable_max on a toy feature cache), and the targets' splits
against the stages' own."""

import ast
import functools
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray import tune
from toy_tracklets import write_toy_tracklets

import usv_ray.tune.sweep
from usv_ray.cli import build_config, build_parser, main
from usv_ray.config import load_config
from usv_ray.io import write_table
from usv_ray.schemas import EMBEDDINGS
from usv_ray.tune import TuneError, run_tune
from usv_ray.tune.sweep import apply_params, grid_points
from usv_ray.tune.targets import TARGETS, _lengths, _lstm_inputs, reid_trial
from usv_ray.tune.tau import edge_warning, tau_interval, validation_embeddings

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
    cfg = apply_params(load_config(), {"reid.p": np.int64(4), "classify.cnn.lr": 0.01})
    assert cfg.reid.p == 4 and type(cfg.reid.p) is int
    assert cfg.classify.cnn.lr == 0.01


def test_the_engine_knows_no_target():
    """sweep.py imports no target module and no stage: the registry imports the engine."""
    tree = ast.parse(Path(usv_ray.tune.sweep.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {name for name in imported if name and name.startswith("usv_ray")}
    assert ours == {
        "usv_ray.config",
        "usv_ray.errors",
        "usv_ray.io",
        "usv_ray.layout",
        "usv_ray.runtime",
        "usv_ray.evaluate.tables",
        "usv_ray.tune.report",
    }
    assert grid_points({"a": {"grid_search": [1, 2]}, "b": 3}) == [
        {"a": 1, "b": 3},
        {"a": 2, "b": 3},
    ]
    with pytest.raises(TuneError, match="grids"):
        grid_points({"a": tune.uniform(0, 1)})


def test_tau_sweep_finds_the_separating_tau(tmp_path, capsys):
    """A plain loop (no Ray) through the same entry point as every target."""
    write_toy_reid_folder(tmp_path / "reid")
    cfg = load_config(None, ["tune.tau=[0.95, 0.2, 0.5]"])
    summary = run_tune(cfg, "tau", tmp_path / "reid", tmp_path / "tune")
    table = summary.table.set_index("tau")
    assert list(table.index) == [0.2, 0.5, 0.95]
    assert summary.best == {"index.tau": 0.5}
    print(f"tau sweep of 3 values: {summary.seconds:.2f} s")
    assert table.loc[0.5, "f_score"] == 1.0 and table.loc[0.5, "clusters"] == 12
    assert table.loc[0.2, "recall"] == 0 and table.loc[0.2, "clusters"] == 36  # singletons
    assert table.loc[0.95, "precision"] < 1 and table.loc[0.95, "recall"] == 1
    assert (table["status"] == "done").all()
    # best.yaml is the whole config the sweep ran with, the best tau applied ...
    best = load_config(summary.best_config)
    assert best == apply_params(cfg, {"index.tau": 0.5})
    assert best.index.tau == 0.5 and best.tune.tau == (0.95, 0.2, 0.5)
    # ... so the nightly `usv-ray index --config <out>/best.yaml` indexes with the tuned tau
    argv = ["index", "--config", str(summary.best_config), "--data", "d", "--model", "m"]
    assert build_config(build_parser().parse_args([*argv, "--out", "o"])).index.tau == 0.5
    for name in ("results.csv", "results.md", "tune.json"):
        assert (tmp_path / "tune" / name).exists()
    # the chosen tau's interval over patient resamples: every resample chooses 0.5 here
    (row,) = pd.read_csv(tmp_path / "tune" / "tau_interval.csv").to_dict("records")
    assert (row["tau"], row["tau_low"], row["tau_high"], row["f_low"]) == (0.5, 0.5, 0.5, 1.0)
    assert (row["tracklets"], row["patients"], row["resamples"]) == (36, 4, 200)
    report = (tmp_path / "tune" / "report.json").read_text()
    assert "tau_interval.csv" in report and "Patient resamples" in report
    # the command line on the same folder sweeps again, to the same result
    argv = ["tune", "--target", "tau", "--data", str(tmp_path / "reid")]
    argv += ["--out", str(tmp_path / "tune"), "--set", "tune.tau=[0.95, 0.2, 0.5]"]
    assert main(argv) == 0
    assert "best index.tau=0.5 (f_score 1)" in capsys.readouterr().out
    # the same folder with other settings is refused rather than mixed
    with pytest.raises(Exception, match="other settings"):
        run_tune(load_config(None, ["tune.tau=[0.3]"]), "tau", tmp_path / "reid", tmp_path / "tune")


def test_the_chosen_taus_interval_comes_from_resampled_patients(tmp_path):
    write_toy_reid_folder(tmp_path / "reid")
    embeddings, patients, nodules = validation_embeddings(tmp_path / "reid")
    grid = [0.2, 0.5, 0.95]
    kwargs = {"method": "closure", "seed": 0, "n_boot": 50}
    interval = tau_interval(grid, embeddings, patients, nodules, **kwargs)
    # every patient separates at 0.5 only: every resample chooses it, with F 1
    assert interval == {"tau_low": 0.5, "tau_high": 0.5, "f_low": 1.0, "f_high": 1.0,
                        "resamples": 50}  # fmt: skip
    assert tau_interval(grid, embeddings, patients, nodules, **kwargs) == interval  # seeded
    # with one patient's nodules shuffled, resamples disagree: the interval widens
    noisy = nodules.copy()
    noisy[patients == patients[0]] = np.random.default_rng(1).permutation(
        noisy[patients == patients[0]]
    )
    wider = tau_interval(grid, embeddings, patients, noisy, **kwargs)
    assert wider["f_low"] < 1.0


def write_look_alike_reid_folder(root: Path) -> Path:
    """A re-ID folder over an ingest folder in which each patient's three nodules look alike
    (their embeddings are one patient's, with noise) but lie at their own depths, in two
    exams of two videos each: only the boxes tell them apart, within an exam."""
    import json

    data, reid = root / "data", root / "reid"
    write_toy_tracklets(data, patients=12, nodules=3, per_nodule=4)
    rng = np.random.default_rng(0)
    rows, splits = [], []
    for shard in sorted((data / "tracklets").iterdir()):
        table = pq.read_table(shard).to_pandas()
        depth = table["nodule_id"].map({"n0": 20.0, "n1": 120.0, "n2": 220.0})
        table["boxes"] = [[[0.0, d, 16.0, d + 30.0]] * 4 for d in depth]
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), shard)
        for row in table.itertuples():
            patient = int(row.patient_key[2:])
            look = np.random.default_rng(patient).normal(size=16) + 0.3 * rng.normal(size=16)
            rows.append(
                {"tracklet_id": row.tracklet_id, "patient_key": row.patient_key,
                 "study_key": row.study_key, "model": "CM:toy",
                 "embedding": (look / np.linalg.norm(look)).astype(np.float32).tolist()}
            )  # fmt: skip
            split = "val" if patient < 9 else "train"
            splits.append({**{k: getattr(row, k) for k in ("tracklet_id", "patient_key",
                           "nodule_id")}, "split": split})  # fmt: skip
    embedding = pa.field("embedding", pa.list_(pa.float32(), 16))
    schema = pa.schema([*[*EMBEDDINGS][:-2], embedding, EMBEDDINGS.field("model")])
    write_table(pa.Table.from_pylist(rows, schema=schema), reid / "embeddings" / "part.parquet")
    write_table(pa.Table.from_pandas(pd.DataFrame(splits)), reid / "splits.parquet")
    (reid / "reid.json").write_text(json.dumps({"data": str(data)}))
    return reid


def test_the_link_model_tells_look_alikes_apart_by_their_depth_within_an_exam(tmp_path):
    from usv_ray.tune.tau import validation_link

    reid = write_look_alike_reid_folder(tmp_path)
    model, measured = validation_link(reid, 0.5, method="closure", seed=0, n_boot=100)
    # 9 validation patients, 12 tracklets each: 66 pairs apiece, 18 of one nodule
    assert (measured["patients"], measured["pairs"], measured["same_pairs"]) == (9, 594, 162)
    assert model.coef[1] < 0 and (model.pairs, model.same) == (594, 162)
    # cross-fitted: within an exam the depth splits the look-alikes; across exams the look
    # cannot, and a third of those pairs are of one nodule, so none links: each nodule's
    # two tracklets of each exam (2 of its 6 pairs) link, and nothing else
    assert measured["precision"] == 1.0 and measured["recall"] == pytest.approx(1 / 3)
    assert measured["f_low"] <= measured["f_score"] <= measured["f_high"]
    # above lumping each patient's tracklets into one nodule: 2 x 162 / (162 + 594)
    assert measured["f_one_per_patient"] == pytest.approx(324 / 756)
    # the tau sweep fits it beside the tau, and its table says how it links
    cfg = load_config(None, ["tune.tau=[0.01, 0.1, 0.5]"])
    run_tune(cfg, "tau", reid, tmp_path / "tune")
    (row,) = pd.read_csv(tmp_path / "tune" / "link.csv").to_dict("records")
    assert row["pairs"] == 594 and row["f_score"] == pytest.approx(measured["f_score"])
    assert "link.csv" in (tmp_path / "tune" / "report.json").read_text()


def test_a_link_model_that_cannot_be_fitted_or_links_no_better_than_lumping_warns(tmp_path, caplog):
    reid = write_look_alike_reid_folder(tmp_path)
    splits = pq.read_table(reid / "splits.parquet").to_pandas()
    cfg = load_config(None, ["tune.tau=[0.01, 0.1]"])
    # nodules drawn at random within each patient: neither look nor depth tells them
    rng = np.random.default_rng(0)
    shuffled = splits.assign(nodule_id=rng.permutation(splits["nodule_id"].to_numpy()))
    write_table(pa.Table.from_pandas(shuffled), reid / "splits.parquet")
    with caplog.at_level("WARNING", logger="usv_ray"):
        run_tune(cfg, "tau", reid, tmp_path / "tune")
    assert "the link model links no better than one nodule per patient" in caplog.text
    # every validation tracklet of a patient one nodule: no pair to tell apart, no model
    write_table(pa.Table.from_pandas(splits.assign(nodule_id="n0")), reid / "splits.parquet")
    caplog.clear()
    with caplog.at_level("WARNING", logger="usv_ray"):
        run_tune(cfg, "tau", reid, tmp_path / "tune2")
    assert "no link model: 594 same-nodule and 0 different-nodule pairs" in caplog.text
    assert not (tmp_path / "tune2" / "link.csv").exists()


def test_a_tau_at_the_edge_or_a_flat_curve_warns():
    grid = [0.1, 0.2, 0.4]

    def curve(*f):
        return [{"tau": t, "f_score": v} for t, v in zip(grid, f, strict=True)]

    assert edge_warning(grid, curve(0.5, 0.9, 0.6), 0.2) is None
    assert "smallest of the grid" in edge_warning(grid, curve(0.9, 0.5, 0.4), 0.1)
    assert "largest of the grid" in edge_warning(grid, curve(0.4, 0.5, 0.9), 0.4)
    assert "do not separate" in edge_warning(grid, curve(0.6, 0.6, 0.6), 0.2)
    assert edge_warning(grid, curve(np.nan, np.nan, np.nan), 0.2) is None  # no pairs: no claim


def test_tau_sweep_needs_a_reid_folder(tmp_path):
    with pytest.raises(TuneError, match="re-ID folder"):
        run_tune(load_config(), "tau", tmp_path, tmp_path / "tune")


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
    "reid.workers=0",  # each trial trains in its own actor: no Train start-up per trial
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


# -- the classify targets: cnn on an ingest folder, the LSTMs on a classify folder --------

CLASSIFY = [
    "classify.folds=2",
    "classify.val_fraction=0.3",  # 2 of fold 0's 6 training patients validate
    "classify.cpus_per_worker=0.5",  # two trials at once on 2 CPUs
    "classify.lstm.workers=0",  # the LSTM trials train in their own actors: no Train start-up
    "classify.cnn.epochs=1",
    "classify.lstm.epochs=1",
    "classify.lstm.hidden=8",
    "tune.num_samples=2",
    "tune.cnn_batch_size=[4, 8]",
    "tune.lstm_batch_size=[4, 8]",
]


@pytest.fixture(scope="module")
def classify_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(an ingest folder of 12 toy videos, a classify folder with fold 0's feature cache).

    The features carry the label (the LSTMs can learn it) and the videos keep 2 to 9
    cached frames, so an equal-frame N or a frame cap changes which frames a trial sees.
    """
    from classify.toy_frames import write_toy_frames  # tests/classify/toy_frames.py

    from usv_ray.classify.folds import assign_folds
    from usv_ray.config import to_dict
    from usv_ray.io import rows_to_table, write_json
    from usv_ray.schemas import FEATURE_DIM, FEATURES, VIDEOS

    root = tmp_path_factory.mktemp("classify_inputs")
    data, classify = root / "data", root / "classify"
    ids = write_toy_frames(data, n_videos=12, frames=3)  # patient p{i}, label i % 2
    videos = pd.DataFrame(
        {
            "video_id": ids,
            "patient_key": [f"p{i}" for i in range(12)],
            "label": [i % 2 for i in range(12)],
        }
    )
    rows = [
        {**row, "source": f"toy/{row['video_id']}", "status": "ok"}
        for row in videos.to_dict("records")
    ]
    write_table(rows_to_table(rows, VIDEOS), data / "videos.parquet")
    fold_of = assign_folds(videos["video_id"], videos["patient_key"], videos["label"], 2, 0)
    folds = videos.assign(fold=videos["video_id"].map(fold_of).astype(np.int8))
    write_table(pa.Table.from_pandas(folds, preserve_index=False), classify / "folds.parquet")
    write_json(
        {"classify": to_dict(load_config(None, CLASSIFY).classify)}, classify / "classify.json"
    )
    rng = np.random.default_rng(0)
    features = []
    for i, video_id in enumerate(ids):
        for t in range(2 + i % 8):  # 2..9 frames
            feature = rng.normal(0.6 * (i % 2), 1.0, FEATURE_DIM).astype(np.float32)
            features.append(
                {
                    "video_id": video_id,
                    "fold": 0,
                    "seq_index": t,
                    "frame_index": 3 * t,
                    "feature": feature.tolist(),
                    "frame_prob": 0.5,
                }
            )
    table = pa.Table.from_pylist(features, schema=FEATURES)
    write_table(table, classify / "features" / "fold=0" / "part.parquet")
    return data, classify


def test_classify_targets_need_their_folders(classify_inputs, tmp_path):
    data, classify = classify_inputs
    cfg = load_config(None, CLASSIFY)
    with pytest.raises(TuneError, match="needs an ingest folder"):
        TARGETS["cnn"](cfg, classify, tmp_path)
    for target in ("lstm", "equal_frames", "variable_max"):
        with pytest.raises(TuneError, match="need a classify folder"):
            TARGETS[target](cfg, data, tmp_path)
    with pytest.raises(TuneError, match="not one of the 2 classify folds"):
        TARGETS["cnn"](load_config(None, [*CLASSIFY, "tune.fold=2"]), data, tmp_path)
    # another validation share than the classify run's would validate on CNN training videos
    with pytest.raises(TuneError, match=r"--set classify.val_fraction=0.3"):
        TARGETS["lstm"](
            load_config(None, [*CLASSIFY, "classify.val_fraction=0.5"]), classify, tmp_path
        )
    # the capped caches are written only once run_tune has claimed the folder
    target = TARGETS["variable_max"](cfg, classify, tmp_path / "unclaimed")
    assert not (tmp_path / "unclaimed").exists() and target.prepare is not None


def _check_best(summary, keys: set[str]) -> None:
    """best.yaml loads, holds the best trial's values, and keeps the rest of the config."""
    assert set(summary.best) == keys
    best = load_config(summary.best_config)
    for key, value in summary.best.items():
        assert functools.reduce(getattr, key.split("."), best) == pytest.approx(value)
    assert best.classify.folds == 2 and best.classify.lstm.hidden == 8
    assert summary.best_value == pytest.approx(summary.table[summary.metric].min())
    for name in ("results.csv", "results.md", "tune.json"):
        assert (summary.out / name).exists()


@pytest.mark.slow
def test_cnn_sweep(ray_session, classify_inputs, tmp_path):
    data, _ = classify_inputs
    # one trial: each is a Ray Train run (~30 s of start-up on 2 cores); choosing the best
    # of several trials is the LSTM and re-ID sweeps' test
    cfg = load_config(None, [*CLASSIFY, "tune.num_samples=1"])
    summary = run_tune(cfg, "cnn", data, tmp_path / "cnn")
    print(f"cnn sweep, 1 trial x 1 epoch: {summary.seconds:.1f} s")
    table = summary.table
    assert len(table) == 1 and (table["status"] == "done").all()
    assert table["classify.cnn.lr"].between(1e-5, 1e-3).all()
    assert set(table["classify.cnn.batch_size"]) <= {4, 8}
    assert table["epoch"].tolist() == [0]
    assert table["val_acc"].between(0, 1).all() and np.isfinite(table["best_val_loss"]).all()
    assert summary.metric == "best_val_loss" and summary.mode == "min"
    _check_best(summary, {"classify.cnn.lr", "classify.cnn.batch_size"})
    assert len(list((tmp_path / "cnn" / "runs").glob("cnn-*"))) == 1  # one Train run a trial


@pytest.mark.slow
def test_lstm_sweeps_on_cached_features(ray_session, classify_inputs, tmp_path):
    _, classify = classify_inputs
    cfg = load_config(None, CLASSIFY)
    inputs = _lstm_inputs(cfg, classify)
    lengths = _lengths(inputs)  # cached frames per video: 2..9
    train = [v for v, (_, fold) in inputs.videos.items() if fold != cfg.tune.fold]
    val = [v for v in inputs.videos if v not in train]
    assert len(train) == 4 and len(val) == 2  # fold 0's training patients, 2 validate

    lstm = run_tune(cfg, "lstm", classify, tmp_path / "lstm")
    table = lstm.table
    assert len(table) == 2 and (table["status"] == "done").all()
    assert (table["train_videos"] == 4).all() and (table["val_videos"] == 2).all()
    assert table["classify.lstm.lr"].between(1e-5, 1e-2).all()
    assert np.isfinite(table["best_val_loss"]).all()
    _check_best(lstm, {"classify.lstm.lr", "classify.lstm.batch_size"})

    # N = 40 is longer than every training video: left out of the grid
    grid = load_config(None, [*CLASSIFY, "tune.num_samples=1", "tune.frame_counts=[3, 6, 40]"])
    equal = run_tune(grid, "equal_frames", classify, tmp_path / "equal_frames")
    table = equal.table.set_index("classify.equal_frames").sort_index()
    assert list(table.index) == [3, 6] and (table["status"] == "done").all()
    for n in (3, 6):  # videos shorter than N are left out, as in classify
        assert table.loc[n, "train_videos"] == (lengths[train] >= n).sum()
        assert table.loc[n, "val_videos"] == (lengths[val] >= n).sum()
    _check_best(equal, {"classify.equal_frames"})

    caps = load_config(None, [*CLASSIFY, "tune.num_samples=1", "tune.variable_max=[2, 50]"])
    capped = run_tune(caps, "variable_max", classify, tmp_path / "variable_max")
    table = capped.table.set_index("ingest.n_frames").sort_index()
    assert list(table.index) == [2, 50] and (table["status"] == "done").all()
    assert (table["train_videos"] == 4).all()  # a cap drops frames, never videos
    cache = pq.read_table(tmp_path / "variable_max" / "features" / "max=2" / "fold=0")
    assert cache.to_pandas().groupby("video_id").size().max() == 2
    _check_best(capped, {"ingest.n_frames"})
    print(
        f"lstm {lstm.seconds:.1f} s, equal_frames {equal.seconds:.1f} s, "
        f"variable_max {capped.seconds:.1f} s (2 trials x 1 epoch each)"
    )


# -- a sweep tunes on the data the stage trains on ---------------------------------------


class _Stop(Exception):
    """Raised by a stand-in training function once it has seen what the stage passes it."""


def _capture(monkeypatch, module: str, name: str) -> list:
    """Replace ``module.name`` (a stage's training function) by one that records its
    arguments and stops the stage there; and keep the stage from starting Ray."""
    import importlib

    calls: list = []

    def record(*args, **kwargs):
        calls.append(args)
        raise _Stop

    monkeypatch.setattr(importlib.import_module(module), name, record)
    monkeypatch.setattr("usv_ray.runtime.ensure_ray", lambda cfg: None)
    return calls


def test_classify_targets_split_as_classify_does(classify_inputs, tmp_path, monkeypatch):
    """The cnn and lstm targets' training and validation videos are those `usv-ray
    classify` gives fold tune.fold's CNN, and move with classify.seed / val_fraction."""
    from usv_ray.classify.pipeline import run_classify

    data, _ = classify_inputs
    calls = _capture(monkeypatch, "usv_ray.classify.cnn", "fit_cnns")
    splits = []
    for extra in ([], ["classify.seed=1", "classify.val_fraction=0.5"]):
        cfg = load_config(None, [*CLASSIFY, *extra])
        out = tmp_path / f"classify{len(splits)}"
        with pytest.raises(_Stop):
            run_classify(cfg, data, out)
        job = calls[-1][2][cfg.tune.fold]  # fit_cnns(c, data, jobs, ...): fold 0's CnnFold
        stage = (list(job.train_ids), list(job.val_ids))
        settings = TARGETS["cnn"](cfg, data, tmp_path / "unused").inputs
        assert (settings["train_ids"], settings["val_ids"]) == stage
        # the LSTM targets read the folds classify wrote, and split them the same way
        (out / "features" / f"fold={cfg.tune.fold}").mkdir(parents=True)
        videos = _lstm_inputs(cfg, out).videos
        held = sorted(v for v, (_, fold) in videos.items() if fold == cfg.tune.fold)
        assert ([v for v in videos if v not in held], held) == stage
        splits.append(stage)
    assert splits[0] != splits[1] and len(splits[0][1]) == 2 and len(splits[1][1]) == 3


def test_reid_target_splits_and_clamps_p_as_reid_does(tmp_path, monkeypatch):
    """The re-ID target's tracklets and its trials' P are those `usv-ray reid` trains
    with (P clamped to the 12 training nodules), and move with reid.seed."""
    from toy_tracklets import write_toy_tracklets

    from usv_ray.reid.pipeline import run_reid

    data = tmp_path / "data"
    write_toy_tracklets(data, patients=8, unknown=1)  # 2 nodules a patient, some unannotated
    calls = _capture(monkeypatch, "usv_ray.reid.training", "fit_reid")
    monkeypatch.setattr("usv_ray.tune.targets.run_name", lambda target: target)
    splits = []
    for seed in (0, 1):
        cfg = load_config(None, ["reid.p=50", "tune.reid_p=[50]", f"reid.seed={seed}"])
        with pytest.raises(_Stop):
            run_reid(cfg, data, tmp_path / f"reid{seed}")
        r, _, _, train_ids, val_ids, *_ = calls[-1]  # fit_reid(r, kind, data, train, val, ...)
        stage = (list(train_ids), list(val_ids))
        target = TARGETS["reid"](cfg, data, tmp_path / "unused")
        assert (target.inputs["train_ids"], target.inputs["val_ids"]) == stage
        assert r.p == target.param_space["reid.p"] == 12  # 6 training patients x 2 nodules
        with pytest.raises(_Stop):  # a trial asking for P = 50 trains with the stage's P
            reid_trial(
                {"reid.lr": 1e-4, "reid.p": 50},
                cfg=cfg,
                data=str(data),
                train_ids=stage[0],
                val_ids=stage[1],
                n_identities=12,
                storage=str(tmp_path / "runs"),
            )
        assert calls[-1][0].p == r.p
        splits.append(stage)
    assert splits[0] != splits[1]
