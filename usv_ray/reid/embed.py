"""Trained re-ID models on disk, and batch inference that embeds tracklets with one.

A model file holds the kind (CM or VM), the number of training nodules (the CM's fc), the
clip shape it was trained on and the weights; its ``model_id`` (kind and a hash of the
file) goes into every embedding row, so embeddings from different models are never mixed.
:class:`TrackletEmbedder` is the callable class for ``Dataset.map_batches``: it loads the
model once per actor; :func:`embed_dataset` is the batch-inference step that uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from usv_ray.config import ReidConfig, ReidModel
from usv_ray.io import atomic_path
from usv_ray.reid.clips import batch_clips
from usv_ray.reid.evaluate import embed
from usv_ray.reid.training import build_model
from usv_ray.runtime import actor_cpus
from usv_ray.schemas import EMBEDDINGS

EMBED_COLUMNS = [
    "tracklet_id",
    "patient_key",
    "study_key",
    "clip",
    "frame_index",
    "height",
    "width",
]


CLIP_SETTINGS = ("clip_frames", "clip_height", "clip_width")  # the model's input shape


@dataclasses.dataclass(frozen=True)
class ReidModelFile:
    """A trained model loaded from disk."""

    model: torch.nn.Module  # in eval mode
    model_id: str  # "KIND sha256[:12]" of the file
    clip: dict[str, int]  # CLIP_SETTINGS it was trained on: embed with the same


def save_reid_model(
    path: Path, kind: ReidModel, n_identities: int, weights: dict, cfg: ReidConfig
) -> Path:
    """Write a model trained on ``cfg``'s clip shape atomically."""
    clip = {name: getattr(cfg, name) for name in CLIP_SETTINGS}
    with atomic_path(path) as tmp:
        torch.save(
            {"kind": kind, "n_identities": n_identities, "clip": clip, "weights": weights}, tmp
        )
    return Path(path)


def load_reid_model(path: str | Path, device: str = "cpu") -> ReidModelFile:
    """The model at ``path`` on ``device``.

    Raises:
        FileNotFoundError: when there is no model file at ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no re-ID model at {path}: run `usv-ray reid` first")
    saved = torch.load(path, map_location=device)
    model = build_model(saved["kind"], saved["n_identities"])
    model.load_state_dict(saved["weights"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return ReidModelFile(model.to(device).eval(), f"{saved['kind']} {digest}", saved["clip"])


class TrackletEmbedder:
    """Tracklet rows (``EMBED_COLUMNS``) -> :data:`EMBEDDINGS` rows, one model per actor.

    Clips are shaped as the model was trained (its file says how), whatever ``cfg`` says.
    ``device`` None: the GPU when the process sees one (a Ray actor with ``num_gpus=1``).
    """

    def __init__(
        self, model_file: str, cfg: ReidConfig, batch_size: int = 16, device: str | None = None
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_reid_model(model_file, device)
        self.model, self.model_id = loaded.model, loaded.model_id
        self.device = torch.device(device)
        self.cfg = dataclasses.replace(cfg, **loaded.clip)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        clips = batch_clips(batch, self.cfg)  # (B, T, H, W) uint8
        vectors = embed(self.model.extractor, clips, self.batch_size, self.device).numpy()
        n = len(vectors)
        return pa.table(
            {
                "tracklet_id": pa.array(batch["tracklet_id"].tolist(), pa.string()),
                "patient_key": pa.array(batch["patient_key"].tolist(), pa.string()),
                "study_key": pa.array(batch["study_key"].tolist(), pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1]
                ),
                "model": pa.array([self.model_id] * n, pa.string()),
            },
            schema=EMBEDDINGS,
        )


def embed_dataset(
    tracklets,  # ray.data.Dataset of EMBED_COLUMNS rows
    model_file: Path,
    cfg: ReidConfig,
    workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    batch_size: int = 16,
):
    """The Ray Data batch-inference step: ``tracklets`` -> a Dataset of EMBEDDINGS rows, on
    ``workers`` actors that each load the model once (one GPU each with ``use_gpu``)."""
    import ray.data

    return tracklets.map_batches(
        TrackletEmbedder,
        fn_constructor_kwargs={"model_file": str(model_file), "cfg": cfg},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=actor_cpus(cpus_per_worker),
        num_gpus=1 if use_gpu else 0,
    )
