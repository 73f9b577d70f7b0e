"""`usv-ray demo` end to end on a small archive: every stage's plumbing, reruns, privacy."""

import json

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from usv_ray.bundle import BUNDLE_FORMAT
from usv_ray.classify.cnn import collate_frames
from usv_ray.classify.pipeline import EQUAL, TABLE3, TABLE4, VARIABLE, run_classify
from usv_ray.config import ConfigError, load_config
from usv_ray.imaging import normalise
from usv_ray.ingest.pipeline import run_ingest
from usv_ray.models.frame_cnn import FrameCNN
from usv_ray.runner import load_model
from usv_ray.schemas import EMBEDDINGS, NODULES, PREDICTIONS


def _predictions(root) -> pd.DataFrame:
    table = pq.read_table(root / "classify" / "predictions" / "predictions.parquet")
    assert table.schema.equals(PREDICTIONS)
    return table.to_pandas()


@pytest.mark.ray
@pytest.mark.slow
def test_demo_every_video_is_predicted_once_per_method_in_its_own_fold(demo_run):
    cfg, root = demo_run
    folds = pq.read_table(root / "classify" / "folds.parquet").to_pandas()
    assert folds.groupby("patient_key")["fold"].nunique().max() == 1  # no patient in two folds
    assert sorted(folds["fold"].unique()) == list(range(cfg.classify.folds))
    predictions = _predictions(root)
    methods = {"CNN_Vote", "CNN_Aver", "Key_Frame", VARIABLE, EQUAL}
    assert set(predictions["method"]) == methods
    merged = predictions.merge(folds, on="video_id", suffixes=("", "_truth"))
    assert (merged["fold"] == merged["fold_truth"]).all()
    assert (merged["label"] == merged["label_truth"]).all()
    for method, rows in predictions.groupby("method"):
        assert rows["video_id"].is_unique
        if method != EQUAL:  # the equal-frame set leaves out videos shorter than N
            assert set(rows["video_id"]) == set(folds["video_id"])
    for stem in ("table3", "table4", "frame_counts"):
        assert (root / "classify" / "tables" / f"{stem}.md").exists()
    table4 = pd.read_csv(root / "classify" / "tables" / "table4.csv")
    assert list(table4["method"]) == [m for m in TABLE4 if m in methods]
    assert set(pd.read_csv(root / "classify" / "tables" / "table3.csv")["method"]) == set(TABLE3)
    plots = {p.name for p in (root / "classify" / "plots").glob("*.png")}
    assert {"roc.png", "pr.png", "confusion_Variable-frame_CNNLSTM.png"} <= plots


@pytest.mark.ray
@pytest.mark.slow
def test_demo_features_of_fold_k_come_from_the_fold_k_cnn(demo_run):
    cfg, root = demo_run
    video = pq.read_table(root / "classify" / "folds.parquet").column("video_id")[0].as_py()
    frames = pq.read_table(root / "data" / "frames" / f"{video}.parquet").to_pydict()
    images, _ = collate_frames({k: np.array(v, dtype=object) for k, v in frames.items()})
    for k in range(cfg.classify.folds):
        model = FrameCNN()
        model.load_state_dict(
            load_model(root / "classify" / "runs" / "cnn" / "models" / f"fold={k}.pt")[0]
        )
        with torch.no_grad():
            expected = model.eval().features(normalise(images)).numpy()  # (T, 512)
        cached = pq.read_table(root / "classify" / "features" / f"fold={k}").to_pandas()
        cached = cached[cached["video_id"] == video].sort_values("seq_index")
        np.testing.assert_allclose(np.stack(cached["feature"]), expected, atol=1e-4)


@pytest.mark.ray
@pytest.mark.slow
def test_demo_rerun_reuses_everything_and_refuses_other_settings(demo_run):
    cfg, root = demo_run
    before = _predictions(root)
    cnn = root / "classify" / "runs" / "cnn" / "models" / "fold=0.pt"
    stamp = cnn.stat().st_mtime_ns
    again = run_classify(cfg, root / "data", root / "classify")
    assert cnn.stat().st_mtime_ns == stamp  # nothing retrained
    pd.testing.assert_frame_equal(_predictions(root), before)
    assert again.seconds < 60
    assert again.videos == len(pq.read_table(root / "classify" / "folds.parquet"))
    other = load_config(None, ["classify.folds=3"])
    with pytest.raises(ConfigError, match="other settings or data"):
        run_classify(other, root / "data", root / "classify")
    # an ingest without the detector redoes nothing, and keeps the night's automatic tracklets
    shards = {p.name: p.stat().st_mtime_ns for p in (root / "data" / "tracklets").iterdir()}
    for manifest in (root / "archive" / "manifest.csv", root / "archive/night/manifest.csv"):
        again = run_ingest(cfg, manifest, root / "data")
        assert again.decoded_now == again.failed_now == again.repaired == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "data" / "tracklets").iterdir()} == shards


@pytest.mark.ray
@pytest.mark.slow
def test_demo_ingests_every_video_and_keeps_patient_ids_out(demo_run):
    _, root = demo_run
    videos = pq.read_table(root / "data" / "videos.parquet").to_pylist()
    assert videos and all(v["status"] == "ok" for v in videos)
    # the archive's videos have labels, tonight's none: the truth stays in archive/truth.json
    night = (root / "archive" / "night" / "manifest.csv").read_text().count("\n") - 1
    labels = sorted(v["label"] for v in videos)
    assert night > 0 and labels[:night] == [-1] * night and set(labels[night:]) <= {0, 1}
    assert list((root / "data" / "tracklets").glob("*.parquet"))
    predictions = str(_predictions(root).to_dict())
    manifest = (root / "archive" / "manifest.csv").read_text()
    for row in manifest.splitlines()[1:]:
        patient_id = row.split(",")[1]
        if patient_id:  # the raw IDs of the archive appear in no output table
            assert patient_id not in str(videos) and patient_id not in predictions


@pytest.mark.ray
@pytest.mark.slow
def test_demo_reid_evaluates_both_models_and_embeds_every_tracklet(demo_run):
    _, root = demo_run
    table = pd.read_csv(root / "reid" / "tables" / "table3.csv")
    assert set(zip(table["model"], table["split"], strict=True)) == {
        ("CM", "val"), ("CM", "test"), ("VM", "val"), ("VM", "test"),
    }  # fmt: skip
    assert (root / "reid" / "tables" / "delong.md").exists()
    embeddings = pq.read_table(root / "reid" / "embeddings")
    assert embeddings.schema.equals(EMBEDDINGS, check_metadata=False)
    tracklets = pq.read_table(root / "data" / "tracklets", columns=["tracklet_id", "source"])
    annotated = tracklets.filter(pc.equal(tracklets["source"], "annotated"))
    assert sorted(embeddings["tracklet_id"].to_pylist()) == sorted(
        annotated["tracklet_id"].to_pylist()
    )  # every tracklet re-ID saw: the detector's come later
    assert "re-ID:" in (root / "printed.txt").read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_demo_indexes_every_tracklet_in_one_nodule(demo_run):
    _, root = demo_run
    nodules = pq.read_table(root / "index" / "nodules.parquet")
    assert nodules.schema.equals(NODULES, check_metadata=False)
    members = [t for ids in nodules["tracklet_ids"].to_pylist() for t in ids]
    tracklets = pq.read_table(root / "data" / "tracklets", columns=["tracklet_id"])
    assert sorted(members) == sorted(tracklets["tracklet_id"].to_pylist())
    assert len(set(nodules["index_version"].to_pylist())) == 1
    assert "pairwise precision" in (root / "printed.txt").read_text()
    # the first night took the re-ID run's embeddings (the same model) rather than embed again
    reused = pq.read_table(root / "index" / "embeddings" / "00000" / "reid.parquet")
    assert sorted(reused["tracklet_id"].to_pylist()) == sorted(
        pq.read_table(root / "reid" / "embeddings")["tracklet_id"].to_pylist()
    )


@pytest.mark.ray
@pytest.mark.slow
def test_demo_sweeps_tau_indexes_with_the_best_and_writes_the_report(demo_run):
    _, root = demo_run
    best = load_config(root / "tune" / "tau" / "best.yaml")
    results = pd.read_csv(root / "tune" / "tau" / "results.csv")
    assert best.index.tau in set(results["tau"])
    # the index links by the model the sweep fitted beside the tau (its digest in the
    # version), or within that tau where the demo's few validation pairs fit none
    from usv_ray import bundle

    link = bundle.load(root / "reid" / "bundle", "reid").link("CM")
    version = pq.read_table(root / "index" / "nodules.parquet")["index_version"][0].as_py()
    if link is not None:
        assert f"link {link.digest()} P >= 0.5 " in version
    else:
        assert f"tau {best.index.tau:g} " in version
    html = (root / "report.html").read_text()
    for title in ("Diagnosis per video: methods compared", "Nodule index", "Tuning sweep: tau"):
        assert title in html, title
    assert (root / "report.md").stat().st_size > 0
    assert "| Method | Videos |" in (root / "results.md").read_text()  # make demo commits it
    printed = (root / "printed.txt").read_text()
    assert "report:" in printed and "(synth " in printed  # the time of every step


@pytest.mark.ray
@pytest.mark.slow
def test_demo_outputs_logs_and_file_names_hold_no_patient_identifier(demo_run):
    """The synthetic archive's and the night's patient IDs and study IDs (exam dates)
    appear nowhere past ingest: not in a table, a text file, a plot's metadata, the printed
    output or a file name."""
    import csv

    _, root = demo_run
    rows = []
    for manifest in (root / "archive" / "manifest.csv", root / "archive/night/manifest.csv"):
        with open(manifest, newline="") as f:
            rows += list(csv.DictReader(f))
    secrets = {r[column] for r in rows for column in ("patient_id", "study_id") if r[column]}
    assert len(secrets) > len(rows) // 2, "the manifests should name patients and studies"
    for path in root.rglob("*"):
        if root / "archive" in path.parents or not path.is_file():
            continue
        name = str(path.relative_to(root))
        assert not any(s in name for s in secrets), name
        if path.suffix == ".parquet":
            text = str(
                pq.read_table(path)
                .drop_columns([c for c in ("image", "clip") if c in pq.read_schema(path).names])
                .to_pylist()
            )
        else:
            text = path.read_bytes().decode("latin-1")
        assert not any(s in text for s in secrets), name


@pytest.mark.ray
@pytest.mark.slow
def test_demo_writes_both_bundles_and_indexes_with_the_swept_tau(demo_run):
    _, root = demo_run
    record = json.loads((root / "classify" / "bundle" / "bundle.json").read_text())
    assert record["kind"] == "diagnosis" and record["format"] == BUNDLE_FORMAT
    assert [m["name"] for m in record["members"]] == ["fold=0", "fold=1", "final"]
    assert record["ingest"]["frame_size"] == 64 and record["calibrator"]["method"] == "platt"
    assert 0 <= record["operating_point"]["threshold"] <= 1
    assert record["operating_point"]["sensitivity"]["value"] >= 0.95  # on the OOF predictions
    curve = record["operating_point"]["curve"]  # the whole trade-off, the bundle's row in it
    assert len(curve) >= 9 and record["operating_point"]["threshold"] in [
        row["threshold"] for row in curve
    ]
    assert (root / "classify" / "plots" / "operating_curve.png").exists()
    for table in ("calibration", "operating_point"):
        assert (root / "classify" / "tables" / f"{table}.md").exists()
    assert (root / "classify" / "plots" / "reliability_Variable-frame_CNNLSTM.png").exists()
    reid = json.loads((root / "reid" / "bundle" / "bundle.json").read_text())
    ((model_id, swept),) = reid["tau"].items()
    best = load_config(root / "tune" / "tau" / "best.yaml")
    assert swept["tau"] == best.index.tau and model_id.startswith("CM ")
    # the whole curve and the tau's patient-bootstrap interval travel with it
    assert [row["tau"] for row in swept["curve"]] == sorted(best.tune.tau)
    interval = swept["interval"]
    assert interval["resamples"] > 0 and interval["tau_low"] <= interval["tau_high"]
    assert swept["validation"]["tracklets"] > 0
    nodules = pq.read_table(root / "index" / "nodules.parquet")
    assert f"{model_id} clip" in nodules["index_version"][0].as_py()


@pytest.mark.ray
@pytest.mark.slow
def test_demo_diagnoses_the_archive_and_the_night(demo_run):
    _, root = demo_run
    videos = pq.read_table(root / "data" / "videos.parquet").to_pandas()
    diagnoses = pq.read_table(root / "predict" / "diagnoses.parquet").to_pandas()
    assert sorted(diagnoses["video_id"]) == sorted(videos["video_id"])  # one version, every video
    assert (diagnoses["status"] == "ok").all() and diagnoses["prob"].between(0, 1).all()
    nodules = pq.read_table(root / "index" / "nodules.parquet").to_pandas()
    assert nodules["malignancy"].notna().all() and set(nodules["nodule_scoring"]) == {"tracklets"}
    printed = (root / "printed.txt").read_text()
    assert "night predict" in printed and "malignancy of" in printed


@pytest.mark.ray
@pytest.mark.slow
def test_demo_scores_the_night_against_the_hidden_truth(demo_run):
    _, root = demo_run
    tables = root / "score" / "tables"
    night = pd.read_csv(tables / "night_videos.csv")
    expected = (root / "archive" / "night" / "manifest.csv").read_text().count("\n") - 1
    assert len(night) == expected and set(night["truth"]) <= {"malignant", "benign"}
    scoring = pd.read_csv(tables / "nodule_scoring.csv")
    assert set(scoring["scoring"]) == {"tracklets", "videos"}
    assert "the archive, out-of-fold" in set(scoring["nodules_of"])
    pairs = pd.read_csv(tables / "index_pairs.csv").set_index("tracklets")
    assert list(pairs.index) == ["all", "annotated", "automatic"]
    tracklets = pd.read_parquet(root / "data" / "tracklets")
    assert pairs.loc["all", "indexed"] == len(tracklets)  # every tracklet, both sources
    assert pairs.loc["annotated", "indexed"] + pairs.loc["automatic", "indexed"] == len(tracklets)
    figures = pd.read_csv(tables / "index_nodules.csv")
    assert len(figures) == 3 and figures["count"].str.fullmatch(r"\d+ of \d+").all()
    html = (root / "report.html").read_text()
    assert "The night against the hidden truth" in html and "Reliability diagram" in html
