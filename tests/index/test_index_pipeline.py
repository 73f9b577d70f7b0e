"""The nightly index on a toy archive: first build, a no-op rerun, a follow-up exam, bad
tracklets, another tau and another model. One archive grows through the module's tests,
as a hospital's does night after night (each run costs seconds of Ray start-up)."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy_bundle import write_toy_reid_bundle
from toy_tracklets import write_toy_tracklets

from usv_ray import bundle
from usv_ray.bundle import BundleError
from usv_ray.bundle.reid import TrackletEmbedder, kept_tau, record_tau
from usv_ray.cluster.constraints import cannot_links
from usv_ray.config import Config, IndexConfig, IngestConfig, RayConfig
from usv_ray.frames import clip_problem
from usv_ray.index.pipeline import IndexBuildError, run_index
from usv_ray.index.store import reid_embeddings
from usv_ray.layout import IngestFolder, LayoutError
from usv_ray.schemas import EMBEDDING_DIM, EMBEDDINGS, NODULES, TRACKLETS

PATCHES = IngestConfig(tracklet_frames=4, patch_height=32, patch_width=16)  # the toy archive's


def _model(folder: Path, seed: int) -> Path:
    """The bundle of an untrained CM: on the toy archive its embeddings still tell nodules
    apart."""
    return write_toy_reid_bundle(folder, seed=seed)


def _tau(model: Path, tracklets: pa.Table) -> float:
    """A tau between the farthest views of one nodule and the nearest two of a patient."""
    rows = tracklets.to_pandas()
    out = TrackletEmbedder(str(model), "CM")({k: rows[k].to_numpy() for k in rows.columns})
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
    table = pq.read_table(root / "all" / "tracklets")  # a video's tracklets are of one study
    model = _model(root / "reid", seed=0)
    # embedding in this process (index.workers 0: no actor pool's start-up in every test);
    # the first build, and another model's, embed through Ray Data (ray_cfg)
    cfg = Config(
        ray=RayConfig(progress=False),
        index=IndexConfig(tau=_tau(model, table), workers=0, cpus_per_worker=0.5),
    )
    ray_cfg = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, workers=1))
    data = root / "data"
    (data / "tracklets").mkdir(parents=True)
    IngestFolder(data).claim(PATCHES)
    for study in ("0", "1"):
        (root / f"study{study}").mkdir()
        for shard in sorted((root / "all" / "tracklets").iterdir()):
            if pq.read_table(shard)["study_key"][0].as_py().endswith(study):
                shutil.copy(shard, root / f"study{study}")
    _add_exam(root / "study0", data)
    return {
        "root": root,
        "data": data,
        "model": model,
        "cfg": cfg,
        "ray_cfg": ray_cfg,
        "out": root / "index",
    }


def _add_exam(exam: Path, data: Path) -> None:
    """Ingest an exam's videos: their tracklets shards appear in the data folder."""
    for shard in exam.iterdir():
        shutil.copy(shard, data / "tracklets")


def _nodules(out: Path) -> dict:
    rows = pq.read_table(out / "nodules.parquet").to_pylist()
    return {r["nodule_uid"]: r for r in rows}


def test_first_build_finds_each_patients_nodules(archive):
    s = run_index(archive["ray_cfg"], archive["data"], archive["model"], archive["out"])
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
    _add_exam(archive["root"] / "study1", archive["data"])
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
    rows = pq.read_table(archive["root"] / "study0").to_pylist()[:3]
    for i, row in enumerate(rows):  # a new patient: one good, one corrupt, one empty tracklet
        row.update(tracklet_id=f"new{i}", video_id="vnew", patient_key="pk_new", study_key="snew")
    rows[1]["clip"] = rows[1]["clip"][:-5]
    rows[2].update(frame_index=[], clip=b"")
    pq.write_table(
        pa.Table.from_pylist(rows, schema=TRACKLETS), data / "tracklets" / "vnew.parquet"
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
    # tau 2 (the largest distance) links every pair: only what the videos say keeps two
    # tracklets apart (seen in the same frames), so each patient's nodules are as many as
    # its most crowded frame shows, and none holds a cannot-link pair
    tracklets = pq.read_table(archive["data"] / "tracklets").to_pandas()
    apart = cannot_links(tracklets)
    nodules = _nodules(archive["out"]).values()
    assert s.patients == 4 and 4 < s.nodules < len(tracklets)
    assert apart and not any(pair <= set(n["tracklet_ids"]) for n in nodules for pair in apart)
    assert {r["index_version"] for r in _nodules(archive["out"]).values()} == {s.index_version}


def test_another_model_rebuilds_from_new_embeddings(archive):
    other = _model(archive["root"] / "other", seed=1)
    s = run_index(archive["ray_cfg"], archive["data"], other, archive["out"])
    assert s.rebuilt and s.embedded_now == 25  # every readable tracklet (27 less the 2 bad), again
    embedded = pq.read_table(archive["out"] / "embeddings").column("model").unique()
    assert embedded.to_pylist() == [s.index_version.split(" clip")[0]]


def _reid_folder(archive, folder: Path, patches: IngestConfig = PATCHES) -> Path:
    """What `usv-ray reid` leaves: a bundle of the archive's model (the same file: the same
    id) made for ``patches``, and embeddings/ of every readable tracklet by it, which the
    bundle names."""
    model = archive["model"] / "CM.pt"
    found = write_toy_reid_bundle(folder, patches=patches, model=model)
    rows = pq.read_table(archive["data"] / "tracklets").to_pandas()
    columns = zip(rows["clip"], rows["frame_index"], rows["height"], rows["width"], strict=True)
    readable = rows[[clip_problem(c, len(f), h, w) is None for c, f, h, w in columns]]
    embedder = TrackletEmbedder(str(found), "CM")
    (folder / "embeddings").mkdir()
    pq.write_table(
        embedder({k: readable[k].to_numpy() for k in readable.columns}),
        folder / "embeddings" / "part.parquet",
    )
    reid = bundle.read(found, "reid")
    reid.rewrite(embeddings={embedder.model_id: str(folder / "embeddings")})
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
    taken = reid_embeddings(tmp_path / "reid" / "embeddings", "CM a", {"t1", "t3", "t9"})
    assert taken.schema.equals(EMBEDDINGS) and taken["tracklet_id"].to_pylist() == ["t1"]
    assert reid_embeddings(None, "CM a", {"t1"}).num_rows == 0  # none recorded


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
    with pytest.raises(BundleError, match="no model bundle"):
        run_index(cfg, tmp_path, tmp_path / "nothing", tmp_path / "out")
    model = _model(tmp_path / "reid", seed=0)
    tuned = Config(index=IndexConfig(tau=0.3))
    with pytest.raises(LayoutError, match=r"has no ingest\.json"):
        run_index(tuned, tmp_path / "empty", model, tmp_path / "out")
    IngestFolder(tmp_path / "empty").claim(PATCHES)
    with pytest.raises(IndexBuildError, match="run ingest first"):
        run_index(tuned, tmp_path / "empty", model, tmp_path / "out")


def _model_id(archive) -> str:
    return bundle.load(archive["model"], "reid").model_id("CM")


def test_tau_travels_with_the_model_it_was_swept_for(archive, tmp_path, caplog):
    reid = _reid_folder(archive, tmp_path / "reid")
    untuned = dataclasses.replace(
        archive["cfg"], index=dataclasses.replace(archive["cfg"].index, tau=None)
    )
    with pytest.raises(IndexBuildError, match="the tau sweep has not recorded one"):
        run_index(untuned, archive["data"], reid, tmp_path / "index")
    tau = archive["cfg"].index.tau
    record_tau(reid, _model_id(archive), tau, 0.9, tmp_path / "tune")
    with caplog.at_level("WARNING", logger="usv_ray"):
        s = run_index(untuned, archive["data"], reid / "bundle", tmp_path / "index")
    assert f"tau {tau:g} " in s.index_version and s.scores["f_score"] == 1.0
    # swept before the link model existed: the index says so, and links within tau
    assert "records no link model" in caplog.text
    # a retrained re-ID run (the same model file here) keeps the tau swept for its model
    found = bundle.read(reid, "reid")
    files = {"CM": found.path("CM.pt")}
    meta = {"ingest": found.ingest, "tau": kept_tau(found.folder, files)}
    bundle.write(found.folder, "reid", {"CM.pt": files["CM"]}, meta)
    assert run_index(untuned, archive["data"], reid, tmp_path / "index").embedded_now == 0
    # index.tau, when set, wins, and says so
    loose = dataclasses.replace(
        archive["cfg"], index=dataclasses.replace(archive["cfg"].index, tau=2.0)
    )
    with caplog.at_level("INFO", logger="usv_ray"):
        again = run_index(loose, archive["data"], reid, tmp_path / "index")
    assert again.rebuilt and "tau 2 " in again.index_version
    assert "tau 2 from the config (the sweep recorded" in caplog.text


def test_the_index_links_by_the_link_model_the_sweep_recorded(archive, tmp_path):
    from usv_ray.cluster.link import LinkModel

    reid = _reid_folder(archive, tmp_path / "reid")
    tau = archive["cfg"].index.tau
    # a model whose P(same) >= 0.5 exactly where the cosine distance is within tau: the
    # nodules of linking within tau, under a version that names the model
    model = LinkModel((0.0,) * 4, (1.0,) * 4, (-1.0, 0.0, 0.0, 0.0), float(np.log(tau)))
    record_tau(reid, _model_id(archive), tau, 0.9, tmp_path / "tune", link=model.to_dict())
    linked = run_index(archive["cfg"], archive["data"], reid, tmp_path / "index")
    assert f"link {model.digest()} P >= 0.5" in linked.index_version
    assert linked.scores["f_score"] == 1.0
    # a threshold outside (0, 1) is refused before any work
    c = dataclasses.replace(archive["cfg"].index, link_threshold=1.0)
    with pytest.raises(IndexBuildError, match=r"link_threshold must lie in \(0, 1\)"):
        run_index(dataclasses.replace(archive["cfg"], index=c), archive["data"], reid, tmp_path)


def test_a_bundle_for_other_patches_or_of_another_kind_is_refused(archive, tmp_path):
    other = _reid_folder(archive, tmp_path / "reid", IngestConfig(patch_height=64))
    with pytest.raises(BundleError, match=r"ingest\.patch_height: 32 there, 64 for the model"):
        run_index(archive["cfg"], archive["data"], other, tmp_path / "index")
    vm = dataclasses.replace(
        archive["cfg"], index=dataclasses.replace(archive["cfg"].index, model="VM")
    )
    with pytest.raises(BundleError, match="holds no VM model"):
        run_index(
            vm, archive["data"], _reid_folder(archive, tmp_path / "reid2"), tmp_path / "index"
        )


def _diagnoses(folder: Path, tracklets: pa.Table, probs: dict[str, float], version: str) -> Path:
    """A `usv-ray predict` folder whose tracklets and videos read ``probs`` by patient."""
    from datetime import UTC, datetime

    from usv_ray.io import write_json
    from usv_ray.schemas import DIAGNOSES, TRACKLET_DIAGNOSES

    rows = tracklets.select(["tracklet_id", "video_id", "patient_key", "study_key"]).to_pylist()
    for row in rows:
        p = probs[row["patient_key"]]
        row.update(prob=p, prob_raw=p, member_probs=[p], spread=0.0, frames=3)
        row.update(model_version=version, diagnosed_at=datetime(2026, 12, 1, tzinfo=UTC))
    videos = {row["video_id"]: dict(row) for row in rows}.values()
    for row in videos:
        row.update(status="ok", threshold=0.5, reading="malignant" if row["prob"] >= 0.5 else "x")
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=TRACKLET_DIAGNOSES)
    pq.write_table(table, folder / "tracklet_diagnoses.parquet")
    table = pa.Table.from_pylist(list(videos), schema=DIAGNOSES)
    pq.write_table(table, folder / "diagnoses.parquet")
    write_json({"latest": version, "versions": {}}, folder / "summary.json")
    return folder


def test_every_nodule_is_scored_from_the_diagnoses_and_rescored_when_they_change(archive, tmp_path):
    tracklets = pq.read_table(archive["data"] / "tracklets")
    patients = sorted(set(tracklets["patient_key"].to_pylist()))
    probs = {p: 0.1 + 0.2 * i for i, p in enumerate(patients)}
    predict = _diagnoses(tmp_path / "predict", tracklets, probs, "dx-a")
    out = tmp_path / "index"
    s = run_index(archive["cfg"], archive["data"], archive["model"], out, predict)
    assert s.scored == s.nodules
    index = pq.read_table(out / "nodules.parquet").to_pandas()
    for row in index.itertuples():
        assert row.malignancy == pytest.approx(probs[row.patient_key], abs=1e-6)
        assert row.nodule_scoring == "tracklets" and row.diagnosis_version == "dx-a"
        assert row.n_videos >= 1 and row.n_studies >= 1
    # new diagnoses, no new tracklet: the same nodules, rescored, nothing embedded
    _diagnoses(predict, tracklets, {p: 0.9 for p in patients}, "dx-b")
    again = run_index(archive["cfg"], archive["data"], archive["model"], out, predict)
    assert again.embedded_now == 0 and not again.rebuilt
    rescored = pq.read_table(out / "nodules.parquet").to_pandas()
    assert rescored["nodule_uid"].tolist() == index["nodule_uid"].tolist()
    assert set(rescored["diagnosis_version"]) == {"dx-b"}
    assert rescored["malignancy"].to_numpy() == pytest.approx(0.9)
    before = (out / "nodules.parquet").read_bytes()
    run_index(archive["cfg"], archive["data"], archive["model"], out, predict)
    assert (out / "nodules.parquet").read_bytes() == before  # nothing changed: nothing written
    with pytest.raises(IndexBuildError, match="holds no diagnoses"):
        run_index(archive["cfg"], archive["data"], archive["model"], out, tmp_path / "none")
