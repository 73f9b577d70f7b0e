"""The re-ID bundle: the trained re-ID models and their clustering threshold, as a product.

``usv-ray reid`` ends by writing ``REID/bundle/`` (layout and checks: :mod:`usv_ray.bundle`):
each trained model's file (``CM.pt``, ``VM.pt``: the kind, its training nodules, the clip
shape it reads, the weights), the ingest settings its tracklet patches must have been made
with, its test-pair metrics, and ``tau``: for each model (by its ``model_id``, the kind and
a hash of the file) the clustering threshold the tau sweep chose on the validation
patients, recorded there by ``usv-ray tune --target tau``. ``usv-ray index`` takes its tau
from there unless ``index.tau`` is set, so the threshold travels with the model it was
swept for, and a retrained model (another ``model_id``) has none until it is swept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usv_ray.bundle import (
    BUNDLE_DIR,
    BUNDLE_FILE,
    bundle_folder,
    file_digest,
    now_utc,
    read_bundle,
)
from usv_ray.bundle import write_bundle as write_any_bundle

KIND = "reid"
# the ingest settings a re-ID model needs its tracklet patches made with
PATCH_SETTINGS = ("crop_box", "tracklet_frames", "patch_height", "patch_width")


def model_id_of(kind: str, sha256: str) -> str:
    """The id of a model file (``CM 3f9a...``): its kind and the first 12 hex digits of the
    file's SHA-256, as :func:`usv_ray.reid.embed.load_reid_model` computes it."""
    return f"{kind} {sha256[:12]}"


def write_reid_bundle(out: Path, files: Mapping[str, Path], meta: Mapping[str, Any]) -> dict:
    """Write ``out/bundle`` from the model files (kind -> path) and ``meta``; the tau an
    earlier sweep recorded for a model that is still in the bundle is kept."""
    folder = out / BUNDLE_DIR
    kept: dict[str, Any] = {}
    if (folder / BUNDLE_FILE).is_file():
        kept = json.loads((folder / BUNDLE_FILE).read_text()).get("tau", {})
    ids = {model_id_of(kind, file_digest(path)) for kind, path in files.items()}
    tau = {model_id: entry for model_id, entry in kept.items() if model_id in ids}
    named = {f"{kind}.pt": path for kind, path in files.items()}
    return write_any_bundle(folder, KIND, named, {**meta, "tau": tau})


def _rewrite(folder: Path, record: dict) -> dict:
    from usv_ray.io import write_json

    write_json(record, folder / BUNDLE_FILE)
    return record


def record_tau(path: str | Path, model_id: str, tau: float, f_score: float, sweep: Path) -> Path:
    """Record in the re-ID bundle at ``path`` the tau swept for the model ``model_id``, with
    its validation pairwise F-score and the sweep folder; returns the bundle folder."""
    folder, record = read_bundle(path, KIND, verify=False)
    kinds = {model_id_of(Path(n).stem, f["sha256"]) for n, f in record["files"].items()}
    if model_id not in kinds:
        from usv_ray.bundle import BundleError

        raise BundleError(
            f"{folder} holds no model {model_id} (it holds {', '.join(sorted(kinds))}): the "
            "swept embeddings come from another model; run `usv-ray reid` again first"
        )
    entry = {"tau": tau, "f_score": f_score, "sweep": str(Path(sweep).resolve()), "at": now_utc()}
    _rewrite(folder, {**record, "tau": {**record.get("tau", {}), model_id: entry}})
    return folder


@dataclass(frozen=True)
class ReidChoice:
    """The model ``usv-ray index`` embeds with, and what its bundle says of it."""

    path: Path  # the model file
    tau: float | None  # the tau the sweep recorded for it; None: none recorded
    ingest: dict[str, Any] | None  # the patch settings it needs; None: a bare model file
    source: str  # where it came from, for the log


def choose_model(model: str | Path, kind: str) -> ReidChoice:
    """The model of kind ``kind`` that ``--model`` names: a re-ID bundle, the re-ID folder
    holding one, or a bare model file (no tau, no ingest check).

    Raises:
        BundleError: a bundle that cannot be used, or holds no model of this kind.
        FileNotFoundError: no file, no bundle at ``model``.
    """
    from usv_ray.bundle import BundleError

    model = Path(model)
    if model.is_file():
        return ReidChoice(model, None, None, f"the model file {model}")
    if not model.exists():
        raise FileNotFoundError(f"no re-ID model or bundle at {model}: run `usv-ray reid` first")
    folder = bundle_folder(model)
    folder, record = read_bundle(folder, KIND)
    name = f"{kind}.pt"
    if name not in record["files"]:
        raise BundleError(
            f"{folder} holds no {kind} model (it holds {', '.join(sorted(record['files']))}): "
            "set index.model to one of them"
        )
    tuned = record.get("tau", {}).get(model_id_of(kind, record["files"][name]["sha256"]))
    return ReidChoice(
        folder / name,
        None if tuned is None else float(tuned["tau"]),
        record["ingest"],
        f"the re-ID bundle {folder} ({record['version']})",
    )
