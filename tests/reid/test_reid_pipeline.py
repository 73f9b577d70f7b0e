"""The re-ID stage end to end (on the demo's archive, see conftest.demo_run), and resume."""

import dataclasses
import logging
import shutil
from math import comb

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_OVERRIDES
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ConfigError, load_config
from usv_ray.reid.pipeline import ReidError, _annotated, run_reid
from usv_ray.reid.training import fit_reid
from usv_ray.runner import load_model
from usv_ray.schemas import EMBEDDINGS


@pytest.fixture(scope="module")
def reid_run(demo_run):
    """(config, ingest folder, re-ID folder, splits) of the demo run's re-ID stage."""
    cfg, root = demo_run
    splits = pq.read_table(root / "reid" / "splits.parquet").to_pandas()
    return cfg, root / "data", root / "reid", splits


def _pairs(rows: pd.DataFrame, by: list[str]) -> int:
    """Pairs of tracklets within each group of ``rows``."""
    return int(sum(comb(n, 2) for n in rows.groupby(by).size()))


@pytest.mark.ray
@pytest.mark.slow
def test_splits_are_by_patient(reid_run):
    _, data, _, splits = reid_run
    tracklets = pq.read_table(data / "tracklets", columns=["tracklet_id", "source"]).to_pandas()
    annotated = tracklets.loc[tracklets["source"] == "annotated", "tracklet_id"]
    assert sorted(splits["tracklet_id"]) == sorted(annotated)  # the detector's came later
    assert splits["nodule_id"].notna().all()
    assert (splits.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test"}


def test_tracklets_without_a_nodule_are_left_out(tmp_path, caplog):
    ids = write_toy_tracklets(tmp_path, patients=3, unknown=1)
    with caplog.at_level(logging.WARNING):
        known = _annotated(tmp_path)
    assert len(known) == len(ids) - 3 and known["nodule_id"].notna().all()
    assert "3 tracklets without a nodule_id are left out" in caplog.text


@pytest.mark.ray
@pytest.mark.slow
def test_tables_plots_and_delong(reid_run):
    _, _, out, splits = reid_run
    table = pd.read_csv(out / "tables" / "table3.csv")
    assert list(zip(table["model"], table["split"], strict=True)) == [
        ("CM", "val"), ("CM", "test"), ("VM", "val"), ("VM", "test"),
    ]  # fmt: skip
    for split, rows in table.groupby("split"):
        part = splits[splits["split"] == split]  # every pair within a patient, none across
        assert (rows["pairs"] == _pairs(part, ["patient_key"])).all()
        assert (rows["same"] == _pairs(part, ["patient_key", "nodule_id"])).all()
    assert table[["ACC", "SE", "SP", "AUC"]].apply(lambda c: c.between(0, 100)).all().all()
    delong = pd.read_csv(out / "tables" / "delong.csv")
    assert list(delong["split"]) == ["val", "test"]
    # a split of a few pairs where both AUCs are 0 or 1 has no variance: p is NaN there
    assert (delong["p_value"].between(0, 1) | delong["p_value"].isna()).all()
    assert (out / "tables" / "table3.md").stat().st_size > 0
    for split in ("val", "test"):
        assert (out / "plots" / f"roc_{split}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.ray
@pytest.mark.slow
def test_clustering_table_compares_every_method_on_the_test_patients(reid_run):
    from usv_ray.cluster.compare import CANDIDATES

    _, _, out, _ = reid_run
    table = pd.read_csv(out / "tables" / "table4_clustering.csv")
    assert list(table["method"]) == list(CANDIDATES)
    assert table[["recall", "f_score"]].stack().between(0, 100).all()
    # a method that puts every test tracklet in a nodule of its own predicts no pair
    precision = table["precision"]
    assert (precision.between(0, 100) | (precision.isna() & (table["recall"] == 0))).all()
    assert (out / "tables" / "table4_clustering.md").stat().st_size > 0


@pytest.mark.ray
@pytest.mark.slow
def test_embeddings_cover_every_tracklet_with_unit_vectors(reid_run):
    _, _, out, splits = reid_run
    table = pq.read_table(out / "embeddings")
    assert table.schema.equals(EMBEDDINGS, check_metadata=False)
    assert sorted(table["tracklet_id"].to_pylist()) == sorted(splits["tracklet_id"])
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    (model,) = set(table["model"].to_pylist())
    assert model.startswith("CM ")


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_reuses_models_and_embeddings(reid_run):
    cfg, data, out, _ = reid_run
    models = [out / "runs" / f"reid_{kind}" / "models" / f"{kind}.pt" for kind in ("CM", "VM")]
    files = [*models, *(out / "embeddings").iterdir()]
    before = {f: f.stat().st_mtime_ns for f in files}
    table3 = pd.read_csv(out / "tables" / "table3.csv")
    again = run_reid(cfg, data, out)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / "table3.csv"), table3)
    assert again.tracklets == len(reid_run[3])


@pytest.mark.ray
@pytest.mark.slow
def test_a_folder_of_other_settings_is_refused(reid_run):
    from usv_ray.cli import resolve_config_path

    _, data, out, _ = reid_run
    other = load_config(resolve_config_path("demo"), [*DEMO_OVERRIDES, "reid.seed=1"])
    with pytest.raises(ConfigError, match="other settings or data"):
        run_reid(other, data, out)


def test_no_annotated_nodules_is_a_clear_error(tmp_path):
    write_toy_tracklets(tmp_path, patients=3, nodules=0, unknown=2)
    with pytest.raises(ReidError, match="nodule_id"):
        run_reid(load_config(None), tmp_path, tmp_path / "out")


@pytest.mark.ray
@pytest.mark.slow
def test_a_finished_model_is_final(reid_run, tmp_path):
    cfg, data, out, splits = reid_run
    train = splits.loc[splits["split"] == "train", "tracklet_id"]
    val = splits.loc[splits["split"] == "val", "tracklet_id"]
    shutil.copytree(out / "runs" / "reid_CM", tmp_path / "reid_CM")  # the demo's run stays
    longer = dataclasses.replace(cfg.reid, epochs=cfg.reid.epochs + 1)
    # the stage's CM run finished its epochs: asking the same run for more is an error
    with pytest.raises(ValueError, match=f"trained for {cfg.reid.epochs} epochs"):
        fit_reid(longer, "CM", data, train, val, tmp_path, "reid_CM")
    trained = fit_reid(cfg.reid, "CM", data, train, val, tmp_path, "reid_CM")
    weights = load_model(trained.path)[0]
    assert trained.epochs == cfg.reid.epochs and trained.metric == "val_acc"
    assert weights and all(v.device.type == "cpu" for v in weights.values())
