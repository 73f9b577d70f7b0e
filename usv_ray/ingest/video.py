"""One video through ingest: decoded once, de-identified, sampled, its shards and its journal
entry written (:func:`ingest_video`).

The frames a video needs are decoded once: the sampled frames (written to its frames
shard, with the annotated boxes of each frame when its annotations are whole), the frames
its annotated tracklets sample (their patches cut from the source frame), the first frames
whose maximum is the field of view, and, with a detector for a video without annotations,
every ``detect.track.every``-th frame (detected and tracked into automatic tracklets).
Every shard is written atomically, and the journal entry last: it marks the video done.
A bad input never raises: every problem becomes an error row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from usv_ray.config import DetectConfig, IngestConfig
from usv_ray.frames import resize_gray, uniform_positions
from usv_ray.ingest.annotations import AnnotationError, Tracklet, load_tracklets
from usv_ray.ingest.automatic import AutoTracklet, AutoTracklets, Detect, View
from usv_ray.ingest.clip import VideoError, VideoInfo
from usv_ray.ingest.decode import VideoReader
from usv_ray.ingest.deid import crop_region, cut, fov_region, patch
from usv_ray.ingest.manifest import (
    VideoTask,
    error_row,
    error_video_row,
    redact,
    study_key,
)
from usv_ray.io import ShardWriter, file_record, rows_to_table, write_json, write_table
from usv_ray.layout import SHARDS, IngestFolder
from usv_ray.privacy import keyed_hash, patient_key
from usv_ray.schemas import FRAMES, TRACKLETS

log = logging.getLogger(__name__)

FOV_FRAMES = 16  # the first frames, whose maximum defines the field of view


def sample_indices(n_frames: int, cfg: IngestConfig) -> list[int]:
    """Frame indices kept for the ``frames`` table, uniformly spread over the video."""
    if cfg.sampling == "all":
        return list(range(n_frames))
    if cfg.sampling == "equal" and n_frames < cfg.n_frames:
        raise VideoError(
            "too_short", f"{n_frames} frames, fewer than the {cfg.n_frames} of sampling=equal"
        )
    return uniform_positions(n_frames, min(n_frames, cfg.n_frames)).tolist()


@dataclass
class _Clip:
    """A tracklet being filled while the video decodes."""

    tracklet: Tracklet
    indices: list[int]  # (T,) source frames, repeats allowed
    patches: np.ndarray  # (T, H, W) uint8
    filled: np.ndarray  # (T,) bool


def _plan_tracklets(
    task: VideoTask, info: VideoInfo, cfg: IngestConfig, errors: list[dict]
) -> tuple[list[_Clip], bool]:
    """The annotated tracklets to fill, and whether the annotations are whole: the file
    read and every tracklet in it usable, so a frame's boxes are all of its nodules."""
    if task.annotations is None:
        return [], False
    try:
        tracklets = load_tracklets(task.annotations)
    except AnnotationError as exc:
        errors.append(
            error_row(task.source, task.video_id, "annotations", "bad_annotations", str(exc))
        )
        return [], False
    clips = []
    for tracklet in tracklets:
        if tracklet.last >= info.n_frames:
            errors.append(
                error_row(
                    task.source,
                    task.video_id,
                    "annotations",
                    "bad_annotations",
                    f"tracklet {tracklet.tracklet_id!r} ends at frame {tracklet.last}, "
                    f"the video has {info.n_frames}; tracklet skipped",
                )
            )
            continue
        count = cfg.tracklet_frames
        clips.append(
            _Clip(
                tracklet,
                tracklet.sample_frames(count),
                np.zeros((count, cfg.patch_height, cfg.patch_width), np.uint8),
                np.zeros(count, bool),
            )
        )
    return clips, len(clips) == len(tracklets)


def _frame_row(
    task: VideoTask, pkey: str, image: np.ndarray, index: int, seq: int, n: int, boxes: list | None
) -> dict:
    return {
        "video_id": task.video_id,
        "patient_key": pkey,
        "label": task.label,
        "frame_index": index,
        "seq_index": seq,
        "seq_len": n,
        "image": image.tobytes(),
        "height": image.shape[0],
        "width": image.shape[1],
        "boxes": boxes,
    }


def _frame_boxes(clips: list[_Clip], index: int, view: View) -> list[list[float]]:
    """The annotated boxes of frame ``index`` in the stored frame's pixels."""
    boxes = [clip.tracklet.box_at(index) for clip in clips if clip.tracklet.covers(index)]
    return view.to_stored(np.array(boxes)).tolist() if boxes else []


def _decode_into_shards(
    task: VideoTask,
    reader: VideoReader,
    cfg: IngestConfig,
    pkey: str,
    out: IngestFolder,
    clips: list[_Clip],
    annotated: bool,
    detector: Detect | None = None,
    detect: DetectConfig | None = None,
) -> tuple[int, View, list[AutoTracklet]]:
    """Decode the needed frames once: write the frames shard (with the annotated boxes of
    each frame when the video's annotations are whole), fill the annotated tracklet clips,
    and, given a ``detector`` (for a video without annotations), detect on every
    ``detect.track.every``-th frame and track (:class:`~usv_ray.ingest.automatic.AutoTracklets`).

    The kept region is ``ingest.crop_box``, or with ``ingest.crop_from_header`` a DICOM
    header's ultrasound regions where it has them. The field of view is learnt from the
    video's first ``FOV_FRAMES`` frames. Returns the
    number of frame rows written, the view (the source region the frames show) and the
    automatic tracklets.
    """
    info = reader.info
    keep = crop_region(cfg.crop_box, info.width, info.height)
    if cfg.crop_from_header and info.image_region is not None:
        keep = info.image_region
    auto = None
    if detector is not None:
        shift = np.array(keep[:2] * 2, np.float64)  # source pixels -> the cropped frame's

        def cut_patch(cropped: np.ndarray, box: np.ndarray) -> np.ndarray:
            bounds = (0, 0, cropped.shape[1], cropped.shape[0])
            return patch(cropped, box - shift, bounds, cfg.patch_height, cfg.patch_width)

        auto = AutoTracklets(detector, detect, cfg.tracklet_frames, cut_patch)
    every = detect.track.every if detect is not None else 1
    wanted = sample_indices(info.n_frames, cfg)
    wanted_set = set(wanted)
    by_frame: dict[int, list[tuple[_Clip, int]]] = {}
    for clip in clips:
        for position, index in enumerate(clip.indices):
            by_frame.setdefault(index, []).append((clip, position))
    detected = set(range(0, info.n_frames, every)) if auto is not None else set()
    # the field of view comes from the video's first frames, decoded for that when sampling
    # skips them: the same frames whether or not a detector reads every frame
    n_fov = min(FOV_FRAMES, info.n_frames) if cfg.trim_fov else 0
    needed = sorted(wanted_set | set(by_frame) | detected | set(range(n_fov)))
    size = cfg.frame_size
    pending: list[tuple[int, np.ndarray]] = []  # decoded frames before the FOV is known
    view = View(keep, size)
    fov = None
    seq = 0
    path = out.frames(task.video_id)
    with ShardWriter(path, FRAMES, cfg.rows_per_row_group) as shard:

        def process(index: int, cropped: np.ndarray) -> None:
            nonlocal seq
            region = cut(cropped, fov) if fov is not None else cropped
            if index in wanted_set:
                boxes = _frame_boxes(clips, index, view) if annotated else None
                image = resize_gray(region, size, size)
                shard.add(_frame_row(task, pkey, image, index, seq, len(wanted), boxes))
                seq += 1
            if index in detected:
                auto.add(index, region, cropped, view)

        def flush_pending() -> None:
            nonlocal fov, view
            if pending:
                fov = fov_region([frame for _, frame in pending], cfg.fov_threshold)
            if fov is not None:
                view = View(
                    (keep[0] + fov[0], keep[1] + fov[1], keep[0] + fov[2], keep[1] + fov[3]), size
                )
            for item in pending:
                process(*item)
            pending.clear()

        for index, gray in reader.frames(needed):  # gray: (H, W) uint8
            for clip, position in by_frame.get(index, ()):
                box = clip.tracklet.box_at(index)
                clip.patches[position] = patch(gray, box, keep, cfg.patch_height, cfg.patch_width)
                clip.filled[position] = True
            cropped = cut(gray, keep)
            if n_fov and fov is None and len(pending) < n_fov:  # still learning the view
                pending.append((index, cropped.copy()))
                if len(pending) == n_fov:
                    flush_pending()
            else:
                process(index, cropped)
        flush_pending()  # fewer frames decoded than planned
    if seq != len(wanted):  # a partial decode: fix seq_len so it counts the rows there are
        table = pq.read_table(path)
        table = table.set_column(
            table.schema.get_field_index("seq_len"),
            "seq_len",
            np.full(len(table), seq, np.int16),
        )
        write_table(table.cast(FRAMES), path)
    return seq, view, auto.finish() if auto is not None else []


def _annotated_row(clip: _Clip) -> dict:
    """The tracklet-table fields of an annotated tracklet: its box on every frame it spans."""
    tracklet = clip.tracklet
    frames = list(range(tracklet.first, tracklet.last + 1))
    return {
        "tracklet": tracklet.tracklet_id,
        "nodule": tracklet.nodule_id,
        "frame_index": clip.indices,
        "clip": clip.patches.tobytes(),
        "n_frames_total": len(frames),
        "source": "annotated",
        "score": None,
        "box_frames": frames,
        "boxes": [list(tracklet.box_at(f)) for f in frames],
    }


def _automatic_row(tracklet: AutoTracklet, fingerprint: str) -> dict:
    """The tracklet-table fields of a track the detector and tracker made. Its id names the
    work's ``fingerprint`` (the detector's version and the tracker settings among it): the
    tracks of another detector are other tracklets, never embeddings stored for old ones."""
    return {
        "tracklet": f"auto-{fingerprint}-{tracklet.track_id}",
        "nodule": None,
        "frame_index": tracklet.frame_index,
        "clip": tracklet.patches.tobytes(),
        "n_frames_total": tracklet.box_frames[-1] - tracklet.box_frames[0] + 1,
        "source": "automatic",
        "score": tracklet.score,
        "box_frames": tracklet.box_frames,
        "boxes": tracklet.boxes.tolist(),
    }


def _write_tracklets(
    task: VideoTask,
    key: bytes,
    pkey: str,
    skey: str | None,
    clips: list[_Clip],
    automatic: list[AutoTracklet],
    out: IngestFolder,
    cfg: IngestConfig,
    errors: list[dict],
) -> int:
    parts = []
    for clip in clips:
        if not clip.filled.all():
            errors.append(
                error_row(
                    task.source,
                    task.video_id,
                    "annotations",
                    "tracklet_undecodable",
                    f"tracklet {clip.tracklet.tracklet_id!r}: "
                    f"{int((~clip.filled).sum())} of its frames could not be decoded; skipped",
                )
            )
            continue
        parts.append(_annotated_row(clip))
    parts += [_automatic_row(tracklet, task.fingerprint) for tracklet in automatic]
    rows = []
    for part in parts:
        nodule = part.pop("nodule")
        rows.append(
            {
                "tracklet_id": keyed_hash(key, "tracklet", task.video_id, part.pop("tracklet")),
                "video_id": task.video_id,
                "patient_key": pkey,
                "study_key": skey,
                "nodule_id": keyed_hash(key, "nodule", pkey, nodule) if nodule else None,
                "height": cfg.patch_height,
                "width": cfg.patch_width,
                **part,
            }
        )
    path = out.tracklets(task.video_id)
    if rows:
        write_table(rows_to_table(rows, TRACKLETS), path)
    else:
        path.unlink(missing_ok=True)  # a rerun without tracklets leaves none behind
    return len(rows)


def _remove_shards(out: IngestFolder, video_id: str) -> None:
    out.frames(video_id).unlink(missing_ok=True)
    out.tracklets(video_id).unlink(missing_ok=True)


def ingest_video(
    task: VideoTask,
    cfg: IngestConfig,
    key: bytes,
    out: str | Path,
    detector: Detect | None = None,
    detect: DetectConfig | None = None,
) -> dict:
    """Ingest one video: decode, de-identify, sample, write its shards and journal entry;
    a video without annotations gets automatic tracklets from ``detector`` when one is given.

    Never raises for a bad input: every problem becomes an error row. Returns the journal
    entry ``{"fingerprint", "plain", "video": videos row, "errors": [errors rows]}``.
    """
    cv2.setNumThreads(1)  # one task per core: no thread pools competing inside a task
    out = IngestFolder(out)
    errors: list[dict] = []
    raw_patient_id: str | None = None

    def scrub(message: str) -> str:
        # FFmpeg and pydicom messages may quote the path; paths may hold the patient ID
        return redact(message.replace(task.path, task.source), raw_patient_id)

    try:
        with VideoReader(
            task.path, threads=cfg.decode_threads, max_frame_pixels=cfg.max_frame_pixels
        ) as reader:
            info = reader.info
            pkey, skey = task.patient_key, task.study_id_hash
            if pkey is None:
                if not info.patient_id:
                    raise VideoError(
                        "missing_patient_id",
                        "no patient_id in the manifest and no PatientID in the file",
                    )
                raw_patient_id = info.patient_id
                pkey = patient_key(key, info.patient_id)
                skey = study_key(key, info.patient_id, task.study_id_raw or info.study_id)
            clips, annotated = _plan_tracklets(task, info, cfg, errors)
            tracking = detector if task.annotations is None else None
            n_rows, view, automatic = _decode_into_shards(
                task, reader, cfg, pkey, out, clips, annotated, tracking, detect
            )
            if n_rows == 0:
                raise VideoError("no_frames", "no frame could be decoded")
            errors.extend(
                error_row(task.source, task.video_id, "decode", "partial_decode", scrub(w))
                for w in reader.warnings
            )
            _write_tracklets(task, key, pkey, skey, clips, automatic, out, cfg, errors)
        video = {
            "video_id": task.video_id,
            "patient_key": pkey,
            "study_key": skey,
            "label": task.label,
            "source": scrub(task.source),
            "n_frames": info.n_frames,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "codec": info.codec,
            "status": "ok",
            "error": None,
            "view": list(view.region),
            "annotated": annotated,
        }
    except VideoError as exc:
        video, errors = failed_video(task, out, exc.kind, scrub(exc.message), "decode", errors)
    except Exception as exc:  # a bug or an exotic file: keep the archive going, say what
        message = scrub(f"{type(exc).__name__}: {exc}")
        video, errors = failed_video(task, out, "ingest_error", message, "ingest", errors)
    return write_journal(out, task, video, errors)


def write_journal(out: IngestFolder, task: VideoTask, video: dict, errors: list[dict]) -> dict:
    """Record a video as done (last, after its shards): its row, its errors, its inputs, and
    each shard's size and SHA-256 (checked when a stage reads it: a damaged or missing shard
    is named, and the next ingest of the video writes it again)."""
    plain = task.plain_fingerprint or task.fingerprint
    shards = {kind: file_record(out.shard(kind, task.video_id)) for kind in SHARDS}
    entry = {
        "fingerprint": task.fingerprint,
        "plain": plain,
        "video": video,
        "errors": errors,
        "shards": shards,
    }
    write_json(entry, out.journal(task.video_id))
    return entry


def failed_video(
    task: VideoTask, out: IngestFolder, kind: str, message: str, stage: str, errors: list[dict]
) -> tuple[dict, list[dict]]:
    _remove_shards(out, task.video_id)
    errors = [e for e in errors if e["stage"] != "annotations"]  # moot without the video
    errors.append(error_row(task.source, task.video_id, stage, kind, message))
    return error_video_row(task, kind, message), errors
