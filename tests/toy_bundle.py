"""A toy ingest folder and toy bundles for the night's stages (predict, index) to read.

The models are untrained (random init, seeded): what the tests check is how a bundle is
written, read, checked and applied, not what it has learnt.
"""

from pathlib import Path

import numpy as np
import torch

from usv_ray.classify.bundle import member_files, write_diagnosis_bundle
from usv_ray.config import IngestConfig
from usv_ray.io import rows_to_table, write_table
from usv_ray.layout import IngestFolder
from usv_ray.models.frame_cnn import FrameCNN, frame_cnn_meta
from usv_ray.models.lstm import VariableFrameLSTM, lstm_meta
from usv_ray.runner import save_model
from usv_ray.schemas import FRAMES, TRACKLETS, VIDEOS

SIZE = 32  # frame size of the toy folder
INGEST = IngestConfig(frame_size=SIZE, n_frames=6, patch_height=16, patch_width=8)


def write_toy_video(
    data: Path,
    video_id: str,
    patient: str,
    frames: int,
    seed: int,
    tracklets: int = 0,
    size: int = SIZE,
) -> None:
    """A video's frames shard (``frames`` gray ``size`` x ``size`` frames, source indices 0,
    3, 6, ...) and, with ``tracklets``, a tracklets shard of that many tracklets over them."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "video_id": video_id,
            "patient_key": patient,
            "label": -1,
            "frame_index": 3 * t,
            "seq_index": t,
            "seq_len": frames,
            "image": rng.integers(0, 255, (size, size), dtype=np.uint8).tobytes(),
            "height": size,
            "width": size,
        }
        for t in range(frames)
    ]
    folder = IngestFolder(data)
    write_table(rows_to_table(rows, FRAMES), folder.frames(video_id))
    spans = np.array_split(np.arange(3 * frames), max(tracklets, 1))
    rows = [
        {
            "tracklet_id": f"{video_id}-t{i}",
            "video_id": video_id,
            "patient_key": patient,
            "study_key": f"{patient}-s0",
            "nodule_id": None,
            "frame_index": [int(span[0]), int(span[-1])],
            "clip": bytes(2 * 16 * 8),
            "n_frames_total": len(span),
            "height": 16,
            "width": 8,
            "source": "automatic",
            "score": 0.9,
            "box_frames": [int(span[0]), int(span[-1])],
            "boxes": [[0.0, 0.0, 10.0, 10.0]] * 2,
        }
        for i, span in enumerate(spans[:tracklets])
    ]
    if rows:
        write_table(rows_to_table(rows, TRACKLETS), folder.tracklets(video_id))


def write_videos_table(data: Path, videos: list[dict]) -> None:
    """``videos.parquet`` of ``videos`` (video_id, patient_key, and optionally status and
    error); the rest of each row is filled in."""
    rows = [
        {
            "label": -1,
            "source": f"videos/{v['video_id']}.mp4",
            "status": "ok",
            "study_key": f"{v['patient_key']}-s0",
            **v,
        }
        for v in videos
    ]
    write_table(rows_to_table(rows, VIDEOS), IngestFolder(data).videos)


def write_toy_data(
    data: Path, n_videos: int = 4, frames: int = 5, tracklets: int = 2, ingest=INGEST
) -> list[str]:
    """An ingest folder of ``n_videos`` ok videos of two patients, with tracklets, made with
    the ``ingest`` settings."""
    IngestFolder(data).claim(ingest)
    ids = [f"v{i}" for i in range(n_videos)]
    for i, video_id in enumerate(ids):
        write_toy_video(
            data, video_id, f"p{i % 2}", frames, seed=i, tracklets=tracklets, size=ingest.frame_size
        )
    write_videos_table(
        data, [{"video_id": v, "patient_key": f"p{i % 2}"} for i, v in enumerate(ids)]
    )
    return ids


def write_toy_bundle(
    out: Path,
    members: int = 2,
    seed: int = 0,
    calibrator: dict | None = None,
    threshold: float = 0.5,
    ingest: IngestConfig = INGEST,
) -> Path:
    """A diagnosis bundle of ``members`` untrained fold models in the classify-like folder
    ``out`` (as a classify run lays its model files out); returns the bundle folder."""
    from usv_ray.bundle.diagnosis import FRAME_SETTINGS
    from usv_ray.layout import ClassifyFolder, ingest_settings

    out = ClassifyFolder(out)
    torch.manual_seed(seed)
    for fold in range(members):
        files = member_files(out, fold)
        cnn, lstm = FrameCNN(), VariableFrameLSTM(hidden_size=8)
        save_model(files["cnn"].parent, files["cnn"].stem, cnn.state_dict(), frame_cnn_meta())
        save_model(files["lstm"].parent, files["lstm"].stem, lstm.state_dict(), lstm_meta(8))
    settings = ingest_settings(ingest)
    meta = {
        "ingest": {name: settings[name] for name in FRAME_SETTINGS},
        "calibrator": calibrator
        or {"method": "identity", "params": {}, "n_videos": 0, "n_positive": 0},
        "operating_point": {"threshold": threshold, "target_sensitivity": 0.95},
    }
    write_diagnosis_bundle(out, list(range(members)), meta)
    return out.bundle


def write_toy_reid_bundle(
    out: Path,
    seed: int = 0,
    clip: tuple[int, int, int] = (4, 32, 16),
    patches: IngestConfig | None = None,
    model: Path | None = None,
) -> Path:
    """A re-ID bundle in the reid-like folder ``out`` holding one untrained CM (over 4
    nodules) that reads clips of ``clip`` (T, H, W), made for the ``patches`` ingest
    settings (default: the toy tracklets' 4 x 32 x 16); ``model``: that model file instead
    of a new one (the same id). Returns the bundle folder."""
    import shutil

    from usv_ray import bundle
    from usv_ray.bundle.reid import KIND, PATCH_SETTINGS, model_file
    from usv_ray.layout import ReidFolder, ingest_settings
    from usv_ray.models.reid import build_reid_model

    out = ReidFolder(out)
    path = out.runs / "reid_CM" / "models" / "CM.pt"
    if model is None:
        torch.manual_seed(seed)
        names = ("clip_frames", "clip_height", "clip_width")
        meta = {"model": "CM", "n_identities": 4, "clip": dict(zip(names, clip, strict=True))}
        save_model(path.parent, "CM", build_reid_model("CM", 4).state_dict(), meta)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model, path)
    patches = patches or IngestConfig(tracklet_frames=4, patch_height=32, patch_width=16)
    settings = ingest_settings(patches)
    meta = {"ingest": {name: settings[name] for name in PATCH_SETTINGS}}
    return bundle.write(out.bundle, KIND, {model_file("CM"): path}, meta).folder
