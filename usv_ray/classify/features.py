"""The feature cache: every frame embedded once by each fold's CNN.

For fold k, the CNN trained without fold k's patients embeds every frame of the archive
into its 512-d pooled feature (and its malignancy probability), written to
``features/fold=k/``. The LSTM and the frame-vote baselines read only this cache and never
run the CNN again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from usv_ray.classify.cnn import collate_frames
from usv_ray.config import ClassifyConfig
from usv_ray.imaging import normalise
from usv_ray.io import replace_folder, write_dataset
from usv_ray.layout import IngestFolder
from usv_ray.runtime import actor_cpus
from usv_ray.schemas import FEATURE_DIM, FEATURES

FRAME_COLUMNS = ["video_id", "seq_index", "frame_index", "image", "height", "width", "label"]
BATCH = 64  # frames per embedding batch


class FrameEmbedder:
    """Ray Data callable class: loads one fold's CNN once, embeds a batch of frames."""

    def __init__(self, weights: str, fold: int, use_gpu: bool = False):
        from usv_ray.models import load

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, _ = load(weights, self.device)
        self.fold = fold

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images, _ = collate_frames(batch)  # (B, 1, H, W) uint8
        inputs = normalise(images.to(self.device))
        feature = self.model.features(inputs)  # (B, 512)
        prob = self.model.head(feature).softmax(dim=1)[:, 1]  # (B,)
        rows = len(images)
        return pa.Table.from_arrays(
            [
                pa.array(batch["video_id"], pa.string()),
                pa.array(np.full(rows, self.fold, np.int8)),
                pa.array(batch["seq_index"].astype(np.int16)),
                pa.array(batch["frame_index"].astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(
                    pa.array(feature.cpu().numpy().astype(np.float32).ravel()),
                    FEATURE_DIM,
                ),
                pa.array(prob.cpu().numpy().astype(np.float32)),
            ],
            schema=FEATURES,
        )


def cache_features(
    cfg: ClassifyConfig, data: Path, video_ids: Iterable[str], weights: Path, fold: int, out: Path
) -> Path:
    """Embed every frame of ``video_ids`` with fold ``fold``'s CNN into ``out/fold=<fold>``
    (the final model's, :data:`~usv_ray.classify.folds.FINAL_FOLD`: ``out/final``).

    The folder appears whole or not at all: it is written under a temporary name and
    renamed, so a killed run leaves no partial cache for a later stage to trust. With
    ``classify.workers`` 0 the frames are embedded in this process, as they were trained;
    else on that many Ray Data actors.
    """
    import pyarrow.fs
    import ray.data

    from usv_ray.classify.folds import fold_name

    target = Path(out) / fold_name(fold)
    shards = IngestFolder(data).frame_shards(video_ids)
    kwargs = {"weights": str(weights), "fold": fold, "use_gpu": cfg.use_gpu}
    if cfg.workers == 0:  # this process, as it trained: no actor pool's start-up
        embed = FrameEmbedder(**kwargs)
        tables = [embed(batch) for shard in shards for batch in _batches(shard)]

        def fill(tmp: Path) -> None:
            table = pa.concat_tables(tables) if tables else FEATURES.empty_table()
            pq.write_table(table, tmp / "part-0.parquet")

        return replace_folder(target, fill)
    frames = ray.data.read_parquet(shards, filesystem=pyarrow.fs.LocalFileSystem()).select_columns(
        FRAME_COLUMNS
    )
    embedded = frames.map_batches(
        FrameEmbedder,
        fn_constructor_kwargs=kwargs,
        batch_size=BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=actor_cpus(cfg.cpus_per_worker),
        num_gpus=1 if cfg.use_gpu else 0,
    )
    return write_dataset(embedded, target)


def _batches(shard: str) -> Iterator[dict[str, np.ndarray]]:
    """A frames shard's rows in batches of :data:`BATCH`, as Ray Data hands them over."""
    for batch in pq.ParquetFile(shard).iter_batches(batch_size=BATCH, columns=FRAME_COLUMNS):
        yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in FRAME_COLUMNS}
