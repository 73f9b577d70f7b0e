"""The re-ID stage end to end on a toy tracklet archive, and Ray Train resume."""

import dataclasses

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ConfigError, load_config
from usv_ray.reid.pipeline import ReidError, run_reid
from usv_ray.reid.training import fit_reid
from usv_ray.schemas import EMBEDDINGS

SETTINGS = [
    "reid.epochs=1",
    "reid.clip_frames=2",
    "reid.clip_height=16",
    "reid.clip_width=8",
    "reid.p=2",
    "reid.k=2",
    "reid.pair_batch_size=4",
    "reid.n_boot=50",
    "reid.cpus_per_worker=0.5",
]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def reid_run(ray_session, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    ids = write_toy_tracklets(data, patients=8, unknown=1)
    out = tmp_path_factory.mktemp("reid")
    cfg = load_config(None, SETTINGS)
    return data, out, ids, cfg, run_reid(cfg, data, out)


def test_splits_are_by_patient_and_leave_out_unknown_nodules(reid_run):
    _, out, ids, _, summary = reid_run
    splits = pq.read_table(out / "splits.parquet").to_pandas()
    assert splits["nodule_id"].notna().all()
    assert summary.tracklets == len(splits) == len(ids) - 8  # one unknown per patient
    assert (splits.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test"}


def test_tables_plots_and_delong(reid_run):
    _, out, _, _, summary = reid_run
    table = summary.table3
    assert list(zip(table["model"], table["split"], strict=True)) == [
        ("CM", "val"), ("CM", "test"), ("VM", "val"), ("VM", "test"),
    ]  # fmt: skip
    # 8 patients -> 6/1/1; each patient has 2 nodules x 3 tracklets: C(6, 2) = 15 pairs.
    assert (table["pairs"] == 15).all() and (table["same"] == 6).all()
    assert table[["ACC", "SE", "SP", "AUC"]].apply(lambda c: c.between(0, 100)).all().all()
    assert list(summary.delong["split"]) == ["val", "test"]
    assert summary.delong["p_value"].between(0, 1).all()
    for name in ("tables/table3.md", "tables/table3.csv", "tables/delong.md"):
        assert (out / name).stat().st_size > 0
    for split in ("val", "test"):
        assert (out / "plots" / f"roc_{split}.png").read_bytes()[:4] == b"\x89PNG"


def test_clustering_table_compares_every_method_on_the_test_patients(reid_run):
    from usv_ray.cluster.compare import CANDIDATES

    _, out, _, _, summary = reid_run
    table = pd.read_csv(out / "tables" / "table4_clustering.csv")
    assert list(table["method"]) == list(summary.clustering["method"]) == list(CANDIDATES)
    assert table[["precision", "recall", "f_score"]].stack().between(0, 100).all()
    assert (out / "tables" / "table4_clustering.md").stat().st_size > 0


def test_embeddings_cover_every_tracklet_with_unit_vectors(reid_run):
    _, out, ids, _, _ = reid_run
    table = pq.read_table(out / "embeddings")
    assert table.schema.equals(EMBEDDINGS, check_metadata=False)
    assert sorted(table["tracklet_id"].to_pylist()) == sorted(ids)  # unknown nodules too
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    (model,) = set(table["model"].to_pylist())
    assert model.startswith("CM ")


def test_rerun_reuses_models_and_embeddings(reid_run):
    data, out, _, cfg, _ = reid_run
    files = [out / "models" / "CM.pt", out / "models" / "VM.pt", *(out / "embeddings").iterdir()]
    before = {f: f.stat().st_mtime_ns for f in files}
    again = run_reid(cfg, data, out)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert again.table3.equals(reid_run[4].table3)


def test_a_folder_of_other_settings_is_refused(reid_run):
    data, out, _, _, _ = reid_run
    with pytest.raises(ConfigError, match="other settings or data"):
        run_reid(load_config(None, [*SETTINGS, "reid.seed=1"]), data, out)


def test_no_annotated_nodules_is_a_clear_error(tmp_path):
    write_toy_tracklets(tmp_path, patients=3, nodules=0, unknown=2)
    with pytest.raises(ReidError, match="nodule_id"):
        run_reid(load_config(None, SETTINGS), tmp_path, tmp_path / "out")


def test_training_resumes_from_its_checkpoint(reid_run):
    data, out, _, cfg, _ = reid_run
    splits = pq.read_table(out / "splits.parquet").to_pandas()
    train = splits.loc[splits["split"] == "train", "tracklet_id"]
    val = splits.loc[splits["split"] == "val", "tracklet_id"]
    longer = dataclasses.replace(cfg.reid, epochs=2)
    # The stage's own CM run stopped after its 1 epoch; asking for 2 continues it.
    weights, summary = fit_reid(longer, "CM", data, train, val, out / "runs", "reid_CM")
    assert summary["start_epoch"] == 1 and len(summary["clips_per_s"]) == 1  # not from scratch
    assert weights and all(v.device.type == "cpu" for v in weights.values())
