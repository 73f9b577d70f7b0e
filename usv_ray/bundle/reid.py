"""The re-ID bundle, loaded: the re-ID models and their clustering threshold
(:class:`ReidModels`), and the Ray Data callable that embeds tracklets with one of them
(:class:`TrackletEmbedder`).

Its record (written by ``usv-ray reid``) names each trained model's file (``CM.pt``,
``VM.pt``: the runner's format, whose metadata holds the kind, its training nodules and
the clip shape it reads), the ingest settings its tracklet patches must have been made
with, its test-pair metrics, and ``tau``: for each model (by its ``model_id``, the kind
and a hash of the file) the clustering threshold the tau sweep chose on validation
patients, with the sweep's whole curve and the link model fitted on the same patients
(:mod:`usv_ray.cluster.link`), recorded by ``usv-ray tune --target tau``
(:func:`record_tau`). ``usv-ray index`` takes its tau from there unless ``index.tau`` is
set, so the threshold travels with the model it was swept for, and a retrained model
(another ``model_id``) has none until it is swept. ``embeddings`` names the training run's
embeddings of the archive's tracklets by the same model, which the index takes instead of
embedding those again where the folder is still there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from usv_ray.bundle.record import BUNDLE_FILE, Bundle, BundleError, file_digest, now_utc, read
from usv_ray.frames import ClipShape, batch_clips

if TYPE_CHECKING:
    from usv_ray.cluster.link import LinkModel
from usv_ray.schemas import EMBEDDINGS

KIND = "reid"
# the ingest settings a re-ID model needs its tracklet patches made with
PATCH_SETTINGS = ("crop_box", "crop_from_header", "tracklet_frames", "patch_height", "patch_width")
# the tracklet columns an embedder reads
EMBED_COLUMNS = [
    "tracklet_id",
    "patient_key",
    "study_key",
    "clip",
    "frame_index",
    "height",
    "width",
]


def model_id_of(kind: str, sha256: str) -> str:
    """The id of a model file (``CM 3f9a...``): its kind and the first 12 hex digits of the
    file's SHA-256. Every embedding row names the model that made it by this id."""
    return f"{kind} {sha256[:12]}"


def model_file(kind: str) -> str:
    """The bundle's file of the model ``kind``."""
    return f"{kind}.pt"


@dataclass
class ReidModels:
    """A loaded re-ID bundle: its models (loaded on first use), their ids, clip shapes and
    recorded taus."""

    bundle: Bundle
    device: torch.device
    _loaded: dict[str, tuple[torch.nn.Module, dict]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def kinds(self) -> list[str]:
        """The models the bundle holds."""
        return sorted(Path(name).stem for name in self.bundle.files)

    def _need(self, kind: str) -> str:
        name = model_file(kind)
        if name not in self.bundle.files:
            raise BundleError(
                f"{self.bundle.folder} holds no {kind} model (it holds "
                f"{', '.join(sorted(self.bundle.files))}): set index.model to one of them"
            )
        return name

    def model_id(self, kind: str) -> str:
        return model_id_of(kind, self.bundle.files[self._need(kind)]["sha256"])

    def _load(self, kind: str) -> tuple[torch.nn.Module, dict]:
        if kind not in self._loaded:
            from usv_ray.models import load

            self._loaded[kind] = load(self.bundle.path(self._need(kind)), self.device)
        return self._loaded[kind]

    def model(self, kind: str) -> torch.nn.Module:
        """The model ``kind`` in eval mode on the bundle's device."""
        return self._load(kind)[0]

    def clip_shape(self, kind: str) -> ClipShape:
        """(T, H, W) of the clips the model was trained on: embed with the same."""
        clip = self._load(kind)[1]["clip"]
        return (int(clip["clip_frames"]), int(clip["clip_height"]), int(clip["clip_width"]))

    def tau(self, kind: str) -> float | None:
        """The tau the sweep recorded for this model; None: none recorded."""
        entry = self.bundle.record.get("tau", {}).get(self.model_id(kind))
        return None if entry is None else float(entry["tau"])

    def link(self, kind: str) -> LinkModel | None:
        """The link model the sweep fitted for this model; None: none recorded."""
        from usv_ray.cluster.link import LinkModel

        entry = self.bundle.record.get("tau", {}).get(self.model_id(kind), {}).get("link")
        return None if entry is None else LinkModel.from_dict(entry)

    def embeddings(self, kind: str) -> Path | None:
        """The training run's embeddings by this model, when recorded and still there."""
        recorded = self.bundle.record.get("embeddings") or {}
        path = recorded.get(self.model_id(kind))
        return Path(path) if path and Path(path).is_dir() else None

    def embed(self, kind: str, clips: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 clips ``(N, T, H, W)`` of the model's clip shape -> unit-norm embeddings
        ``(N, 512)`` float32."""
        from usv_ray.models.reid import embed_clips

        extractor = self.model(kind).extractor
        return embed_clips(extractor, clips, batch_size, self.device).numpy().astype(np.float32)

    @classmethod
    def load(cls, bundle: Bundle, device: str | torch.device = "cpu", bf16: bool = False):
        """The models of ``bundle``, to be loaded on ``device`` when first used."""
        return cls(bundle, torch.device(device))


def kept_tau(folder: Path, files: Mapping[str, Path]) -> dict[str, Any]:
    """The tau entries an earlier bundle in ``folder`` recorded for models that are still
    among ``files`` (kind -> model file): a rewrite of the bundle keeps them."""
    import json

    record = folder / BUNDLE_FILE
    if not record.is_file():
        return {}
    kept = json.loads(record.read_text()).get("tau", {})
    ids = {model_id_of(kind, file_digest(path)) for kind, path in files.items()}
    return {model_id: entry for model_id, entry in kept.items() if model_id in ids}


def record_tau(
    path: str | Path, model_id: str, tau: float, f_score: float, sweep: Path, **extra: Any
) -> Path:
    """Record in the re-ID bundle at ``path`` the tau swept for the model ``model_id``, with
    its validation pairwise F-score, the sweep folder and ``extra`` (its interval, the
    curve); returns the bundle folder."""
    bundle = read(path, KIND, verify=False)
    ids = {model_id_of(Path(n).stem, f["sha256"]) for n, f in bundle.files.items()}
    if model_id not in ids:
        raise BundleError(
            f"{bundle.folder} holds no model {model_id} (it holds {', '.join(sorted(ids))}): "
            "the swept embeddings come from another model; run `usv-ray reid` again first"
        )
    entry = {
        "tau": tau,
        "f_score": f_score,
        "sweep": str(Path(sweep).resolve()),
        "at": now_utc(),
        **extra,
    }
    bundle.rewrite(tau={**bundle.record.get("tau", {}), model_id: entry})
    return bundle.folder


class TrackletEmbedder:
    """Tracklet rows (:data:`EMBED_COLUMNS`) -> :data:`~usv_ray.schemas.EMBEDDINGS` rows by the
    model ``kind`` of the re-ID bundle at ``bundle``, loaded once per actor.

    Clips are shaped as the model was trained (its file says how). ``device`` None: the GPU
    when the process sees one (a Ray actor with ``num_gpus=1``).
    """

    def __init__(
        self, bundle: str, kind: str, batch_size: int = 16, device: str | None = None
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models = ReidModels.load(read(bundle, KIND), device)
        self.kind, self.batch_size = kind, batch_size
        self.model_id = self.models.model_id(kind)
        self.shape = self.models.clip_shape(kind)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        clips = batch_clips(batch, self.shape)  # (B, T, H, W) uint8
        vectors = self.models.embed(self.kind, clips, self.batch_size)  # (B, 512)
        return pa.table(
            {
                "tracklet_id": pa.array(batch["tracklet_id"].tolist(), pa.string()),
                "patient_key": pa.array(batch["patient_key"].tolist(), pa.string()),
                "study_key": pa.array(batch["study_key"].tolist(), pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel()), vectors.shape[1]
                ),
                "model": pa.array([self.model_id] * len(vectors), pa.string()),
            },
            schema=EMBEDDINGS,
        )


# the rows a ShardEmbedder returns: an embedding, or why the tracklet has none
EMBEDDED = pa.schema(
    [
        pa.field("tracklet_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), EMBEDDINGS.field("embedding").type.list_size)),
        pa.field("model", pa.string(), nullable=False),
        pa.field("error", pa.string()),  # why its clip cannot be read; null when embedded
    ]
)


class ShardEmbedder:
    """The callable class of an embedding job (:func:`usv_ray.pool.run_batches`): items
    name a tracklets shard (``shard``), the tracklets of it to embed (``tracklets``, a
    JSON list; empty: all) and what ingest recorded of the shard (``recorded``: its size
    and SHA-256 as JSON; empty: unchecked), and come back as :data:`EMBEDDED` rows, one per
    tracklet: its embedding by the model ``kind`` of the re-ID bundle at ``bundle``, or why
    it has none (a clip that cannot be read; ``damaged_shard: ...`` for each named tracklet
    of a shard that is missing, damaged or unreadable). The model is loaded once per actor,
    on its GPU when it holds one.
    """

    def __init__(self, bundle: str, kind: str, batch_size: int = 16) -> None:
        self.embedder = TrackletEmbedder(bundle, kind, batch_size)

    def _read(self, item: dict) -> tuple[pa.Table | None, list[dict]]:
        """(the shard's named tracklets, or None; rows of tracklets it cannot give)."""
        import json

        import pyarrow.compute as pc

        from usv_ray.layout import DamagedDataError, read_checked

        wanted = json.loads(item["tracklets"]) if item["tracklets"] else []
        recorded = json.loads(item["recorded"]) if item.get("recorded") else None
        try:
            table = read_checked(item["shard"], recorded, [*EMBED_COLUMNS, "video_id"])
        except DamagedDataError as exc:
            video_id = Path(item["shard"]).stem
            problem = f"damaged_shard: {exc}"
            return None, [
                {"tracklet_id": t, "video_id": video_id, "error": problem} for t in wanted
            ]
        if wanted:
            keep = pa.array(wanted, pa.string())
            table = table.filter(pc.is_in(table["tracklet_id"], value_set=keep))
        return table, []

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from usv_ray.frames import clip_problem

        keys = [k for k in ("shard", "tracklets", "recorded") if k in batch]
        parts, damaged = [], []
        for values in zip(*(batch[k] for k in keys), strict=True):
            table, lost = self._read(dict(zip(keys, values, strict=True)))
            damaged += lost
            if table is not None:
                parts.append(table)
        rows = (
            pa.concat_tables(parts, promote_options="permissive").to_pydict()
            if parts
            else {name: [] for name in [*EMBED_COLUMNS, "video_id"]}
        )
        problems = [
            clip_problem(c, len(f or []), h or 0, w or 0)
            for c, f, h, w in zip(
                rows["clip"], rows["frame_index"], rows["height"], rows["width"], strict=True
            )
        ]
        good = [i for i, problem in enumerate(problems) if problem is None]
        vectors: dict[int, list[float]] = {}
        if good:
            chosen = {k: np.array([rows[k][i] for i in good], dtype=object) for k in EMBED_COLUMNS}
            embedded = self.embedder(chosen)["embedding"].to_pylist()
            vectors = dict(zip(good, embedded, strict=True))
        n = len(problems)
        return pa.table(
            {
                "tracklet_id": rows["tracklet_id"] + [d["tracklet_id"] for d in damaged],
                "video_id": rows["video_id"] + [d["video_id"] for d in damaged],
                "patient_key": rows["patient_key"] + [""] * len(damaged),
                "study_key": rows["study_key"] + [None] * len(damaged),
                "embedding": [vectors.get(i) for i in range(n)] + [None] * len(damaged),
                "model": [self.embedder.model_id] * (n + len(damaged)),
                "error": problems + [d["error"] for d in damaged],
            },
            schema=EMBEDDED,
        )
