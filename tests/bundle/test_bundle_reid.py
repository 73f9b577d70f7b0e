"""The re-ID bundle: its models' ids and clip shapes, the tau swept for a model kept as long
as the bundle holds that model, and the embedders that read clips as the model was trained."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy_bundle import write_toy_reid_bundle
from toy_tracklets import write_toy_tracklets

from usv_ray import bundle
from usv_ray.bundle.reid import (
    EMBED_COLUMNS,
    EMBEDDED,
    KIND,
    ShardEmbedder,
    TrackletEmbedder,
    kept_tau,
    model_id_of,
    record_tau,
)
from usv_ray.layout import IngestFolder
from usv_ray.schemas import EMBEDDING_DIM, EMBEDDINGS


def _write(folder, cm, vm):
    files = {"CM": cm, "VM": vm}
    named = {f"{kind}.pt": path for kind, path in files.items()}
    return bundle.write(folder, KIND, named, {"tau": kept_tau(folder, files)}).record


def test_a_retrained_reid_bundle_keeps_the_tau_of_a_model_it_still_holds(tmp_path):
    cm, vm = tmp_path / "CM.pt", tmp_path / "VM.pt"
    cm.write_bytes(b"cm weights")
    vm.write_bytes(b"vm weights")
    record = _write(tmp_path / "bundle", cm, vm)
    cm_id = model_id_of("CM", record["files"]["CM.pt"]["sha256"])
    record_tau(tmp_path / "bundle", cm_id, 0.02, 0.8, tmp_path / "sweep", low=0.01)
    again = _write(tmp_path / "bundle", cm, vm)  # the same CM
    assert again["tau"][cm_id]["tau"] == 0.02 and again["tau"][cm_id]["low"] == 0.01
    vm.write_bytes(b"vm weights, retrained")
    assert cm_id in _write(tmp_path / "bundle", cm, vm)["tau"]
    cm.write_bytes(b"cm weights, retrained")  # another CM: its tau must be swept again
    assert _write(tmp_path / "bundle", cm, vm)["tau"] == {}
    with pytest.raises(bundle.BundleError, match="holds no model CM 000"):
        record_tau(tmp_path / "bundle", "CM 000", 0.1, 0.5, tmp_path / "sweep")


def test_a_loaded_bundle_knows_each_models_id_shape_and_tau(tmp_path):
    folder = write_toy_reid_bundle(tmp_path / "reid", clip=(2, 16, 8))
    models = bundle.load(folder, "reid")
    assert models.kinds == ["CM"] and not models.model("CM").training
    digest = json.loads((folder / "bundle.json").read_text())["files"]["CM.pt"]["sha256"]
    assert models.model_id("CM") == model_id_of("CM", digest) == f"CM {digest[:12]}"
    assert models.clip_shape("CM") == (2, 16, 8)
    assert models.tau("CM") is None and models.embeddings("CM") is None
    with pytest.raises(bundle.BundleError, match="holds no VM model"):
        models.model_id("VM")


def test_the_embedder_shapes_clips_as_the_model_was_trained(tmp_path):
    folder = write_toy_reid_bundle(tmp_path / "reid", clip=(2, 16, 8))
    write_toy_tracklets(tmp_path / "data", patients=2, nodules=1, per_nodule=2)
    rows = pq.read_table(tmp_path / "data" / "tracklets", columns=EMBED_COLUMNS).to_pandas()
    batch = {k: rows[k].to_numpy() for k in rows.columns}
    out = TrackletEmbedder(str(folder), "CM")(batch)
    assert out.schema == EMBEDDINGS and out.num_rows == 4
    vectors = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
    assert vectors.shape == (4, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert out["model"].unique().to_pylist() == [bundle.load(folder, "reid").model_id("CM")]
    assert out["tracklet_id"].to_pylist() == rows["tracklet_id"].tolist()


def test_a_shard_embedder_embeds_the_named_tracklets_and_names_bad_clips(tmp_path):
    folder = write_toy_reid_bundle(tmp_path / "reid", clip=(2, 16, 8))
    ids = write_toy_tracklets(tmp_path / "data", patients=2, nodules=2, per_nodule=2)
    data = IngestFolder(tmp_path / "data")
    shards = data.tracklet_shards()
    schema = pq.read_schema(shards[0])
    table = pq.read_table(shards[0]).to_pylist()
    table[1]["clip"] = table[1]["clip"][:-3]  # a damaged clip
    pq.write_table(pa.Table.from_pylist(table, schema=schema), shards[0])
    chosen = json.dumps([table[0]["tracklet_id"], table[1]["tracklet_id"]])
    shards = shards[:2]  # a video of two tracklets, both named, and another, whole
    batch = {"shard": np.array(shards, dtype=object), "tracklets": np.array([chosen, ""])}
    out = ShardEmbedder(str(folder), "CM")(batch)
    assert out.schema.equals(EMBEDDED) and out.num_rows == 2 + 2  # two named, all of the other
    rows = out.to_pylist()
    assert rows[0]["error"] is None and len(rows[0]["embedding"]) == EMBEDDING_DIM
    assert "is not 4 x 32 x 16 uint8" in rows[1]["error"] and rows[1]["embedding"] is None
    assert {r["tracklet_id"] for r in rows} <= set(ids)
