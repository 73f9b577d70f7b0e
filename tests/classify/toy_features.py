"""A toy feature cache for the LSTM tests: videos whose cached features carry their label."""

import numpy as np
import pyarrow as pa

from usv_ray.classify.lstm import VideoFeatures
from usv_ray.io import write_table
from usv_ray.schemas import FEATURE_DIM, FEATURES


def toy_videos(n: int, seed: int = 0) -> list[VideoFeatures]:
    """Videos of 1..30 frames whose features carry their label: a learnable toy set."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        length = int(rng.integers(1, 31))
        features = rng.normal(0.6 * label, 1.0, (length, FEATURE_DIM)).astype(np.float32)
        out.append(VideoFeatures(f"v{i:03d}", label, features))
    return out


def write_feature_cache(features, videos, folds) -> None:
    """A feature cache fold=k for every fold k, holding every video (as the real one does)."""
    for fold in folds:
        rows = [
            {
                "video_id": v.video_id,
                "fold": fold,
                "seq_index": t,
                "frame_index": t,
                "feature": v.features[t].tolist(),
                "frame_prob": 0.5,
            }
            for v in videos
            for t in range(len(v.features))
        ]
        table = pa.Table.from_pylist(rows, schema=FEATURES)
        write_table(table, features / f"fold={fold}" / "part.parquet")
