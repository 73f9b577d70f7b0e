"""The feature cache: every frame embedded once by each fold's CNN.

For fold k, the CNN trained without fold k's patients embeds every frame of the archive
into its 512-d pooled feature (and its malignancy probability), written to
``features/fold=k/``. The LSTM and the frame-vote baselines read only this cache and never
run the CNN again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from usv_ray.classify.cnn import collate_frames
from usv_ray.config import ClassifyConfig
from usv_ray.imaging import normalise
from usv_ray.io import write_dataset
from usv_ray.layout import IngestFolder
from usv_ray.runtime import actor_cpus
from usv_ray.schemas import FEATURE_DIM, FEATURES


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
    renamed, so a killed run leaves no partial cache for a later stage to trust.
    """
    import pyarrow.fs
    import ray.data

    from usv_ray.classify.folds import fold_name

    target = Path(out) / fold_name(fold)
    frames = ray.data.read_parquet(
        IngestFolder(data).frame_shards(video_ids), filesystem=pyarrow.fs.LocalFileSystem()
    ).select_columns(["video_id", "seq_index", "frame_index", "image", "height", "width", "label"])
    embedded = frames.map_batches(
        FrameEmbedder,
        fn_constructor_kwargs={"weights": str(weights), "fold": fold, "use_gpu": cfg.use_gpu},
        batch_size=64,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, cfg.workers)),  # workers 0: train here
        num_cpus=actor_cpus(cfg.cpus_per_worker),
        num_gpus=1 if cfg.use_gpu else 0,
    )
    return write_dataset(embedded, target)
