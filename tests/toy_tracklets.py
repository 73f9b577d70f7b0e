"""A tiny tracklet archive for re-ID tests: every nodule has its own look.

A nodule is a dark disc at its own position with its own stripe frequency; its tracklets
differ by noise, so a model can tell nodules apart in a few steps.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.config import IngestConfig
from usv_ray.layout import IngestFolder
from usv_ray.schemas import TRACKLETS


def nodule_patch(rng, nodule: int, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, height, width) uint8 clip of ``nodule`` with fresh noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * (0.3 + 0.4 * ((nodule * 7) % 5) / 4), width * (0.3 + 0.4 * (nodule % 3) / 2)
    disc = ((yy - cy) ** 2 / (0.2 * height) ** 2 + (xx - cx) ** 2 / (0.3 * width) ** 2) < 1
    stripes = 40 * np.sin(2 * np.pi * yy * (1 + nodule % 4) / height)
    base = 140 + stripes - 90 * disc
    clip = base[None] + rng.normal(0, 12, (frames, height, width))
    return np.clip(clip, 0, 255).astype(np.uint8)


def write_toy_tracklets(
    data: Path,
    patients: int = 6,
    nodules: int = 2,
    per_nodule: int = 3,
    frames: int = 4,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
    unknown: int = 0,
) -> list[str]:
    """One shard per video under ``data/tracklets`` (and the folder's ingest.json): a
    patient's t-th video shows the t-th tracklet of each of its nodules; returns the
    tracklet ids.

    ``unknown`` more tracklets per patient have no nodule_id.
    """
    IngestFolder(data).claim(  # as classify/toy_frames.py's, for the default patches
        IngestConfig(
            frame_size=32, tracklet_frames=frames, patch_height=size[0], patch_width=size[1]
        ),
    )
    rng = np.random.default_rng(seed)
    out = Path(data) / "tracklets"
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    rows = []
    for p in range(patients):
        for n in range(nodules + (1 if unknown else 0)):
            count = per_nodule if n < nodules else unknown
            for t in range(count):
                clip = nodule_patch(rng, p * nodules + n, frames, *size)
                tracklet_id = f"t{p:02d}{n}{t}"
                ids.append(tracklet_id)
                rows.append(
                    {
                        "tracklet_id": tracklet_id,
                        "video_id": f"v{p:02d}{t}",
                        "patient_key": f"pk{p:02d}",
                        "study_key": f"s{p:02d}{t % 2}",
                        "nodule_id": f"n{n}" if n < nodules else None,
                        "frame_index": list(range(frames)),
                        "clip": clip.tobytes(),
                        "n_frames_total": frames,
                        "height": size[0],
                        "width": size[1],
                        "source": "annotated",
                        "box_frames": list(range(frames)),
                        "boxes": [[0.0, 0.0, 16.0, 32.0]] * frames,
                    }
                )
    table = pa.Table.from_pylist(rows, schema=TRACKLETS)
    for video_id in sorted(set(table["video_id"].to_pylist())):
        pq.write_table(
            table.filter(pc.equal(table["video_id"], video_id)), out / f"{video_id}.parquet"
        )
    return ids
