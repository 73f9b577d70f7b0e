"""A toy archive for the detector: speckle frames, each with a dark square nodule and its
box, as ingest writes the frames of an annotated video."""

from pathlib import Path

import numpy as np

from usv_ray.io import rows_to_table, write_table
from usv_ray.schemas import FRAMES


def write_boxed_frames(data: Path, n_videos: int, frames: int, size: int = 32) -> list[str]:
    """Frames shards of ``n_videos`` videos (one patient each) of ``frames`` gray frames of
    ``size`` pixels; returns the video ids."""
    rng = np.random.default_rng(0)
    side = max(4, size // 4)
    ids = []
    for v in range(n_videos):
        rows = []
        for t in range(frames):
            image = rng.integers(90, 170, (size, size)).astype(np.uint8)
            x, y = (int(c) for c in rng.integers(0, size - side, 2))
            image[y : y + side, x : x + side] = 20
            rows.append(
                {
                    "video_id": f"v{v:03d}",
                    "patient_key": f"p{v}",
                    "label": -1,
                    "frame_index": t,
                    "seq_index": t,
                    "seq_len": frames,
                    "image": image.tobytes(),
                    "height": size,
                    "width": size,
                    "boxes": [[float(x), float(y), float(x + side), float(y + side)]],
                }
            )
        write_table(rows_to_table(rows, FRAMES), data / "frames" / f"v{v:03d}.parquet")
        ids.append(f"v{v:03d}")
    return ids
