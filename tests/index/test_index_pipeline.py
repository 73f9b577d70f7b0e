"""The nightly index on a toy archive: first build, a no-op rerun, a follow-up exam, bad
tracklets, another tau and another model. One archive grows through the module's tests,
as a hospital's does night after night (each run costs seconds of Ray start-up)."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from toy_tracklets import write_toy_tracklets

from usv_ray.config import Config, IndexConfig, RayConfig, ReidConfig
from usv_ray.index.pipeline import IndexBuildError, _reid_embeddings, run_index
from usv_ray.reid.clips import clip_problem
from usv_ray.reid.embed import TrackletEmbedder, save_reid_model
from usv_ray.reid.training import build_model
from usv_ray.schemas import EMBEDDING_DIM, EMBEDDINGS, NODULES

CLIP = ReidConfig(clip_frames=4, clip_height=32, clip_width=16, cpus_per_worker=0.5)


def _model(path: Path, seed: int) -> Path:
    """An untrained CM: on the toy archive its embeddings still tell nodules apart."""
    torch.manual_seed(seed)
    return save_reid_model(path, "CM", 4, build_model("CM", 4).state_dict(), CLIP)


def _tau(model: Path, tracklets: pa.Table) -> float:
    """A tau between the farthest views of one nodule and the nearest two of a patient."""
    rows = tracklets.to_pandas()
    out = TrackletEmbedder(str(model), CLIP)({k: rows[k].to_numpy() for k in rows.columns})
    e = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
    distance = 1 - e @ e.T
    nodule = (rows["patient_key"] + rows["nodule_id"]).to_numpy()
    patient = rows["patient_key"].to_numpy()
    same = nodule[:, None] == nodule[None]
    within, between = distance[same].max(), distance[(patient[:, None] == patient[None]) & ~same]
    assert within < between.min(), "the toy nodules must be separable for this test"
    return float((within + between.min()) / 2)


@pytest.fixture(scope="module")
def archive(ray_session, tmp_path_factory):
    """A toy archive split into exams: study 0 first, study 1 (the follow-ups) later."""
    root = tmp_path_factory.mktemp("index")
    write_toy_tracklets(root / "all", patients=3, nodules=2, per_nodule=4)
    table = pq.read_table(root / "all" / "tracklets")
    model = _model(root / "cm.pt", seed=0)
    cfg = Config(
        ray=RayConfig(progress=False),
        reid=CLIP,
        index=IndexConfig(tau=_tau(model, table), workers=1, cpus_per_worker=0.5),
    )
    data = root / "data"
    (data / "tracklets").mkdir(parents=True)
    for study in ("0", "1"):
        part = table.filter(pc.ends_with(table["study_key"], study))
        (root / f"study{study}").mkdir()
        pq.write_table(part, root / f"study{study}" / f"exam{study}.parquet")
    shutil.copy(root / "study0" / "exam0.parquet", data / "tracklets")
    return {"root": root, "data": data, "model": model, "cfg": cfg, "out": root / "index"}


def _nodules(out: Path) -> dict:
    rows = pq.read_table(out / "nodules.parquet").to_pylist()
    return {r["nodule_uid"]: r for r in rows}


def test_first_build_finds_each_patients_nodules(archive):
    s = run_index(archive["cfg"], archive["data"], archive["model"], archive["out"])
    assert (s.patients, s.tracklets, s.nodules, s.embedded_now, s.reused) == (3, 12, 6, 12, 0)
    assert s.scores["precision"] == s.scores["recall"] == 1.0  # the toy truth, exactly
    assert s.scores["patients_right_count"] == s.scores["patients"] == 3
    assert s.scores["count_error"] == 0.0 and s.scores["true_nodules"] == 6
    index = _nodules(archive["out"])
    assert pq.read_schema(archive["out"] / "nodules.parquet").equals(NODULES)
    assert {r["n_tracklets"] for r in index.values()} == {2}
    assert {r["index_version"] for r in index.values()} == {s.index_version}
    assert "tau" in s.index_version and s.index_version.startswith("CM ")


def test_a_rerun_with_nothing_new_does_nothing(archive):
    out = archive["out"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    s = run_index(archive["cfg"], archive["data"], archive["model"], out)
    assert s.embedded_now == 0 and s.nodules == 6
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no new embeddings, the index byte for byte the same


def test_a_follow_up_exam_joins_the_nodules_it_shows(archive):
    out = archive["out"]
    before = _nodules(out)
    shutil.copy(archive["root"] / "study1" / "exam1.parquet", archive["data"] / "tracklets")
    s = run_index(archive["cfg"], archive["data"], archive["model"], out)
    assert s.embedded_now == 12 and s.nodules == 6  # no new nodule: each follow-up joined
    assert s.scores["recall"] == 1.0 and s.scores["precision"] == 1.0
    after = _nodules(out)
    assert set(after) == set(before)  # every nodule_uid kept
    for uid, row in after.items():
        assert set(before[uid]["tracklet_ids"]) < set(row["tracklet_ids"])
        assert row["n_tracklets"] == 4 and len(row["study_keys"]) == 2
        assert row["first_study"] == before[uid]["first_study"]
    assert len(list((out / "embeddings").iterdir())) == 2  # only the new ones were embedded


def test_bad_tracklets_are_error_rows_and_the_rest_is_indexed(archive):
    data, out = archive["data"], archive["out"]
    rows = pq.read_table(archive["root"] / "study0" / "exam0.parquet").to_pylist()[:3]
    for i, row in enumerate(rows):  # a new patient: one good, one corrupt, one empty tracklet
        row.update(tracklet_id=f"new{i}", patient_key="pk_new", study_key="snew")
    rows[1]["clip"] = rows[1]["clip"][:-5]
    rows[2].update(frame_index=[], clip=b"")
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pq.read_schema(data / "tracklets" / "exam0.parquet")),
        data / "tracklets" / "exam2.parquet",
    )
    s = run_index(archive["cfg"], data, archive["model"], out)
    assert s.embedded_now == 1 and s.patients == 4 and s.errors == 2
    errors = pq.read_table(out / "errors.parquet").to_pandas()
    assert sorted(errors["source"]) == ["new1", "new2"]
    assert set(errors["kind"]) == {"bad_tracklet"} and set(errors["stage"]) == {"index"}
    assert errors["message"].str.contains("pk_new").all()
    # a rerun does not retry the bad ones and keeps their error rows
    again = run_index(archive["cfg"], data, archive["model"], out)
    assert again.embedded_now == 0 and again.errors == 2


def test_another_tau_reclusters_without_embedding(archive):
    cfg = archive["cfg"]
    loose = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, tau=2.0))
    s = run_index(loose, archive["data"], archive["model"], archive["out"])
    assert s.rebuilt and s.embedded_now == 0
    assert s.nodules == s.patients == 4  # tau 2 (the largest distance): one nodule each
    assert {r["index_version"] for r in _nodules(archive["out"]).values()} == {s.index_version}


def test_another_model_rebuilds_from_new_embeddings(archive):
    other = _model(archive["root"] / "other.pt", seed=1)
    s = run_index(archive["cfg"], archive["data"], other, archive["out"])
    assert s.rebuilt and s.embedded_now == 25  # every readable tracklet (27 less the 2 bad), again
    embedded = pq.read_table(archive["out"] / "embeddings").column("model").unique()
    assert embedded.to_pylist() == [s.index_version.split(" clip")[0]]


def _reid_folder(archive, folder: Path) -> Path:
    """What `usv-ray reid` leaves: the archive's model as models/CM.pt, and embeddings/ of
    every readable tracklet by it."""
    (folder / "models").mkdir(parents=True)
    shutil.copy(archive["model"], folder / "models" / "CM.pt")  # the same file: the same id
    rows = pq.read_table(archive["data"] / "tracklets").to_pandas()
    columns = zip(rows["clip"], rows["frame_index"], rows["height"], rows["width"], strict=True)
    readable = rows[[clip_problem(c, len(f), h, w) is None for c, f, h, w in columns]]
    embedder = TrackletEmbedder(str(folder / "models" / "CM.pt"), CLIP)
    (folder / "embeddings").mkdir()
    pq.write_table(
        embedder({k: readable[k].to_numpy() for k in readable.columns}),
        folder / "embeddings" / "part.parquet",
    )
    return folder


def test_only_the_same_models_embeddings_are_taken_from_a_reid_folder(tmp_path):
    vector = [1.0] + [0.0] * (EMBEDDING_DIM - 1)
    rows = [
        {"tracklet_id": t, "patient_key": "pk", "study_key": "s", "embedding": vector, "model": m}
        for t, m in (("t1", "CM a"), ("t2", "CM a"), ("t3", "CM b"))
    ]
    (tmp_path / "reid" / "embeddings").mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=EMBEDDINGS)
    pq.write_table(table, tmp_path / "reid" / "embeddings" / "part.parquet")
    taken = _reid_embeddings(tmp_path / "reid", "CM a", {"t1", "t3", "t9"})
    assert taken.schema.equals(EMBEDDINGS) and taken["tracklet_id"].to_pylist() == ["t1"]
    assert _reid_embeddings(tmp_path / "reid" / "cm.pt", "CM a", {"t1"}).num_rows == 0


def test_a_failing_patient_is_an_error_row_and_the_rest_is_indexed(archive, tmp_path, monkeypatch):
    from usv_ray.index import pipeline

    real = pipeline.update_patient

    def fails_for_pk01(patient_key, *args, **kwargs):
        if patient_key == "pk01":
            raise ValueError("boom")
        return real(patient_key, *args, **kwargs)

    monkeypatch.setattr(pipeline, "update_patient", fails_for_pk01)
    out = tmp_path / "index"
    patients = set(pq.read_table(archive["data"] / "tracklets")["patient_key"].to_pylist())
    # --model the re-ID folder: the index takes its embeddings rather than embed again
    reid = _reid_folder(archive, tmp_path / "reid")
    s = run_index(archive["cfg"], archive["data"], reid, out)
    assert s.reused == s.embedded_now == 25  # the 2 bad tracklets of the archive are not
    indexed = set(pq.read_table(out / "nodules.parquet")["patient_key"].to_pylist())
    assert indexed == patients - {"pk01"} and s.patients == len(patients) - 1
    errors = pq.read_table(out / "errors.parquet").to_pandas()
    failed = errors[errors["kind"] == "patient_failed"].reset_index()
    assert failed["source"].tolist() == ["pk01"] and "ValueError: boom" in failed["message"][0]
    # the next run retries the patient (its tracklets are embedded, not yet indexed)
    monkeypatch.setattr(pipeline, "update_patient", real)
    again = run_index(archive["cfg"], archive["data"], reid, out)
    assert again.embedded_now == 0 and again.patients == len(patients)


def test_missing_inputs_are_clear_errors(tmp_path):
    cfg = Config()
    with pytest.raises(IndexBuildError, match="run `usv-ray reid` first"):
        run_index(cfg, tmp_path, tmp_path / "nothing", tmp_path / "out")
    model = _model(tmp_path / "cm.pt", seed=0)
    with pytest.raises(IndexBuildError, match="run ingest first"):
        run_index(cfg, tmp_path / "empty", model, tmp_path / "out")
