"""A toy frames archive for the classify tests: tiny frames whose label shows."""

import numpy as np

from usv_ray.config import IngestConfig
from usv_ray.io import rows_to_table, write_table
from usv_ray.layout import IngestFolder
from usv_ray.schemas import FRAMES

SIZE = 32  # tiny frames: ResNet-18's adaptive pooling takes them, and CPU training is quick
# the toy folders' ingest record (toy_tracklets.py writes the same for its default patches)
TOY_INGEST = IngestConfig(frame_size=SIZE, tracklet_frames=4, patch_height=32, patch_width=16)


def write_toy_frames(data, n_videos=8, frames=4, seed=0):
    """Shards of videos whose label shows in their brightness: a learnable toy archive (an
    ingest folder, its ingest.json included)."""
    IngestFolder(data).claim(TOY_INGEST)
    rng = np.random.default_rng(seed)
    ids = []
    for v in range(n_videos):
        label = v % 2
        rows = []
        for t in range(frames):
            image = rng.integers(0, 80, (SIZE, SIZE), dtype=np.uint8) + 100 * label
            rows.append(
                {
                    "video_id": f"v{v}",
                    "patient_key": f"p{v}",
                    "label": label,
                    "frame_index": t,
                    "seq_index": t,
                    "seq_len": frames,
                    "image": image.astype(np.uint8).tobytes(),
                    "height": SIZE,
                    "width": SIZE,
                }
            )
        write_table(rows_to_table(rows, FRAMES), data / "frames" / f"v{v}.parquet")
        ids.append(f"v{v}")
    return ids
