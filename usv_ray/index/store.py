"""The index's embedding store: the embeddings each run added (``embeddings/NNNNN/``), by one
model, and how new tracklets get theirs: taken from the re-ID run's embeddings by the same
model, where its bundle names them, or embedded by a batch job (one model per actor)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.config import Config
from usv_ray.io import write_table
from usv_ray.layout import IndexFolder, IngestFolder
from usv_ray.schemas import EMBEDDINGS


def embed_new(
    cfg: Config,
    data: IngestFolder,
    out: IndexFolder,
    model: Path,
    new: pd.DataFrame,
    run: int,
) -> pd.DataFrame:
    """Embed the tracklets ``new`` (tracklet_id, video_id) into ``embeddings/<run>``, a part
    per batch as it comes (a run stopped midway keeps what it embedded); returns those that
    have no embedding (tracklet_id, video_id, patient_key, error). Each shard is checked
    against what ingest recorded of it. On ``index.workers`` actors, or with 0 in this
    process (no actor start-up: on a laptop, most of a small night's work)."""
    from usv_ray.bundle.reid import ShardEmbedder
    from usv_ray.pool import run_batches

    c = cfg.index
    items = [
        {
            "shard": str(data.tracklets(video_id)),
            "tracklets": json.dumps(sorted(rows["tracklet_id"])),
            "recorded": json.dumps(
                ((data.journal_entry(video_id) or {}).get("shards") or {}).get("tracklets")
            ),
        }
        for video_id, rows in new.groupby("video_id", sort=True)
    ]
    bad = []
    for part, rows in enumerate(
        run_batches(
            ShardEmbedder,
            {"bundle": str(model), "kind": c.model, "batch_size": c.batch_size},
            items,
            workers=c.workers,
            ray=cfg.ray,
            batch_size=8,
            cpus=c.cpus_per_worker,
            gpus=1 if c.use_gpu else 0,
        )
    ):
        errors = pc.is_valid(rows["error"])
        good = rows.filter(pc.invert(errors)).select(EMBEDDINGS.names).cast(EMBEDDINGS)
        if good.num_rows:
            part_file = out.embedding_run(run) / f"part-{part:05d}.parquet"
            write_table(good.sort_by("tracklet_id"), part_file)
        bad.append(rows.filter(errors).select(["tracklet_id", "video_id", "patient_key", "error"]))
    if not bad:
        return pd.DataFrame(columns=["tracklet_id", "video_id", "patient_key", "error"])
    return pa.concat_tables(bad).to_pandas()


def reid_embeddings(folder: Path | None, model_id: str, ids: set[str]) -> pa.Table:
    """The embeddings of ``ids`` that the re-ID run wrote with this same model (``model_id``
    hashes the file) into ``folder``, as its bundle records: the index takes them instead
    of embedding those tracklets again. Empty without such a folder (a bundle copied
    elsewhere).

    The filter goes to the reader: row groups whose statistics rule out this model (every
    file of another model) are skipped, not read and then dropped."""
    import pyarrow.dataset as ds

    if folder is None:
        return EMBEDDINGS.empty_table()
    wanted = (ds.field("model") == model_id) & ds.field("tracklet_id").isin(sorted(ids))
    return pq.read_table(folder, schema=EMBEDDINGS, filters=wanted)


def read_store(out: IndexFolder) -> pd.DataFrame:
    """Every stored embedding row (all runs), or an empty frame."""
    runs = out.embedding_runs()
    if not runs:
        return EMBEDDINGS.empty_table().to_pandas()
    return pd.concat([pq.read_table(r, schema=EMBEDDINGS).to_pandas() for r in runs])
