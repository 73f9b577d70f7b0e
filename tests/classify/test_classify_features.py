import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from toy_frames import SIZE, write_toy_frames

from usv_ray.classify.features import FrameEmbedder, cache_features
from usv_ray.config import ClassifyConfig
from usv_ray.imaging import normalise
from usv_ray.models.frame_cnn import FrameCNN, frame_cnn_meta
from usv_ray.runner import load_model, save_model
from usv_ray.schemas import FEATURES


def _weights(path):
    torch.manual_seed(3)
    return save_model(path.parent, path.stem, FrameCNN().state_dict(), frame_cnn_meta())


def test_embedder_matches_the_model_without_ray(tmp_path):
    weights = _weights(tmp_path / "w.pt")
    images = np.random.default_rng(0).integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8)
    batch = {
        "video_id": np.array(["a", "a", "b"], dtype=object),
        "seq_index": np.array([0, 1, 0]),
        "frame_index": np.array([3, 7, 0]),
        "image": np.array([im.tobytes() for im in images], dtype=object),
        "height": np.full(3, SIZE),
        "width": np.full(3, SIZE),
        "label": np.array([0, 0, 1]),
    }
    table = FrameEmbedder(str(weights), fold=2)(batch)
    assert table.schema.equals(FEATURES) and table.num_rows == 3
    assert table["frame_index"].to_pylist() == [3, 7, 0]
    model = FrameCNN()
    model.load_state_dict(load_model(weights)[0])
    model.eval()
    with torch.no_grad():
        x = normalise(torch.from_numpy(images[:, None]))
        expected = model.features(x).numpy()
        prob = model(x).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(
        np.stack(table["feature"].to_numpy(zero_copy_only=False)), expected, atol=1e-5
    )
    np.testing.assert_allclose(table["frame_prob"].to_numpy(), prob, atol=1e-6)
    assert table["fold"].to_pylist() == [2, 2, 2]


@pytest.mark.ray
@pytest.mark.slow
def test_cache_features_embeds_every_frame_once(ray_session, tmp_path):
    ids = write_toy_frames(tmp_path / "data", n_videos=4, frames=3)
    weights = _weights(tmp_path / "w.pt")
    # Train workers that hold all of the session's 2 CPUs (as the demo's do): the embedding
    # actor must leave one to the reads that feed it, or the cache waits forever
    cfg = ClassifyConfig(cpus_per_worker=2)
    folder = cache_features(cfg, tmp_path / "data", ids, weights, 1, tmp_path / "features")
    assert folder == tmp_path / "features" / "fold=1"
    table = pq.read_table(folder)
    assert table.num_rows == 12
    keys = sorted(zip(table["video_id"].to_pylist(), table["seq_index"].to_pylist(), strict=True))
    assert keys == sorted((v, s) for v in ids for s in range(3))  # each frame exactly once
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["fold=1"]  # no temporaries
    # classify.workers 0 (training in this process) embeds in this process: the same cache
    here = ClassifyConfig(workers=0)
    again = cache_features(here, tmp_path / "data", ids, weights, 1, tmp_path / "here")
    rows = ["video_id", "seq_index"]
    in_process = pq.read_table(again).to_pandas().sort_values(rows).reset_index(drop=True)
    on_ray = table.to_pandas().sort_values(rows).reset_index(drop=True)
    assert pq.read_schema(next(again.iterdir())).equals(table.schema)
    pd.testing.assert_frame_equal(in_process, on_ray, check_exact=False, atol=1e-6)
