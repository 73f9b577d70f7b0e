import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ReidConfig
from usv_ray.reid.embed import EMBED_COLUMNS, TrackletEmbedder, load_reid_model, save_reid_model
from usv_ray.reid.training import build_model
from usv_ray.schemas import EMBEDDING_DIM, EMBEDDINGS

TRAINED_ON = ReidConfig(clip_frames=2, clip_height=16, clip_width=8)


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    return save_reid_model(
        tmp_path / "CM.pt", "CM", 3, build_model("CM", 3).state_dict(), TRAINED_ON
    )


def test_a_saved_model_loads_with_its_id_and_clip_shape(model_file):
    loaded = load_reid_model(model_file)
    assert not loaded.model.training
    assert loaded.model_id.startswith("CM ") and len(loaded.model_id) == 3 + 12
    assert loaded.clip == {"clip_frames": 2, "clip_height": 16, "clip_width": 8}
    assert load_reid_model(model_file).model_id == loaded.model_id  # the file's hash
    with pytest.raises(FileNotFoundError, match="run `usv-ray reid` first"):
        load_reid_model(model_file.parent / "missing.pt")


def test_the_embedder_shapes_clips_as_the_model_was_trained(model_file, tmp_path):
    write_toy_tracklets(tmp_path / "data", patients=2, nodules=1, per_nodule=2)
    rows = pq.read_table(tmp_path / "data" / "tracklets", columns=EMBED_COLUMNS).to_pandas()
    batch = {k: rows[k].to_numpy() for k in rows.columns}
    # another clip shape in the config: the model's own wins, so the embeddings agree
    embedder = TrackletEmbedder(str(model_file), ReidConfig(clip_frames=8, clip_height=64))
    out = embedder(batch)
    assert out.schema == EMBEDDINGS and out.num_rows == 4
    vectors = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
    assert vectors.shape == (4, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    same = TrackletEmbedder(str(model_file), TRAINED_ON)(batch)
    np.testing.assert_allclose(
        vectors, np.stack(same["embedding"].to_numpy(zero_copy_only=False)), atol=1e-6
    )
    assert out["model"].unique().to_pylist() == [load_reid_model(model_file).model_id]
    assert out["tracklet_id"].to_pylist() == rows["tracklet_id"].tolist()
