"""Write a synthetic archive: videos (MP4 H.264 or DICOM cine), annotations, manifest.

The layout follows the README's manifest (a user's own archive's shape)::

    out/manifest.csv                     video, patient_id, study_id, label, annotations
    out/videos/<stem>.mp4 | <stem>.dcm   stems are anonymous hashes, never identities
    out/annotations/<stem>.json          {"tracklets": [...]} in source-frame pixels, for
                                         the rows that give one (annotated_fraction)
    out/night/manifest.csv               tonight's exams: label and annotations empty
    out/night/videos/<stem>.mp4          (only when the night batch is not empty)
    out/truth.json                       the hidden truth of both, for evaluation only
                                         (see :mod:`usv_ray.synth.truth`)

Patients are rendered in parallel, one per task; every random draw comes from the plan
or from per-patient seeds, so the result does not depend on ``cfg.workers``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from usv_ray.config import SynthConfig
from usv_ray.synth.plan import (
    NightExam,
    Patient,
    Study,
    Video,
    plan_archive,
    plan_night,
    video_annotations,
    video_label,
    video_truth,
)
from usv_ray.synth.truth import TRUTH_FILE, TRUTH_FORMAT

MANIFEST_COLUMNS = ("video", "patient_id", "study_id", "label", "annotations")
NIGHT_DIR = "night"  # tonight's batch: its own manifest.csv and videos/ under out/night
CRF = 21  # H.264 quality: visually clean speckle at a small size


def write_mp4(frames: np.ndarray, path: Path, fps: float, gop: int) -> None:
    """Encode gray ``frames`` ``(T, H, W)`` uint8 as H.264 (yuv420p) in an MP4 file.

    The luma plane carries the gray levels unchanged and chroma is neutral (128), so a
    decoder asked for gray gets the frames back up to codec noise. The GOP is fixed at
    ``gop`` frames (no scene-cut key frames). One encoder thread and no macroblock-tree
    rate control keep the output a function of the frames alone: with mbtree on, x264's
    output was seen to change with unrelated process state (e.g. after importing pydicom).
    """
    import av

    n_frames, height, width = frames.shape
    # Luma then the U and V planes (4:2:0) stacked, for all frames at once: the encoder's
    # look-ahead may still read a frame's memory after it is passed in, so the buffers
    # must live until the stream is flushed.
    yuv = np.full((n_frames, height * 3 // 2, width), 128, dtype=np.uint8)  # (T, 1.5 H, W)
    yuv[:, :height] = frames
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=Fraction(fps).limit_denominator(1001),
            options={
                "crf": str(CRF),
                "preset": "fast",
                "x264-params": f"keyint={gop}:scenecut=0:mbtree=0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        for t in range(n_frames):
            frame = av.VideoFrame.from_ndarray(yuv[t], format="yuv420p")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_dicom(
    frames: np.ndarray, path: Path, patient: Patient, study: Study, video: Video, cfg: SynthConfig
) -> None:
    """Write ``frames`` ``(T, H, W)`` uint8 as an Ultrasound Multi-frame Image (cine).

    Explicit VR little endian, uncompressed, MONOCHROME2, 8 bits. UIDs are derived from
    the seed and the archive position, so the file is a pure function of the config.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    n_frames, height, width = frames.shape
    study_uid = generate_uid(
        entropy_srcs=["usv-synth", str(cfg.seed), patient.patient_id, study.study_id]
    )
    series_uid = generate_uid(entropy_srcs=["usv-synth", str(cfg.seed), video.stem, "series"])
    sop_uid = generate_uid(entropy_srcs=["usv-synth", str(cfg.seed), video.stem, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "US"
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.StudyDate = study.exam_date.strftime("%Y%m%d")
    ds.StudyID = study.study_id[:16]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "usv_ray synthetic"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = height, width
    ds.NumberOfFrames = n_frames
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.FrameTime = f"{1000.0 / cfg.fps:.3f}"  # ms
    ds.CineRate = round(cfg.fps)
    ds.RecommendedDisplayFrameRate = round(cfg.fps)
    ds.FrameIncrementPointer = 0x00181063  # frames advance by FrameTime
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def render_patient(cfg: SynthConfig, patient: Patient, out: Path, from_study: int = 0) -> int:
    """Render and write the videos of one patient into ``out/videos``; returns the frames.

    Only the exams from ``from_study`` on are rendered: the night batch renders tonight's
    exam of a patient whose earlier exams are in the archive, from the same scene.
    """
    from usv_ray.synth.bmode import PatientScene

    scene = PatientScene.build(patient, cfg)
    total = 0
    for study in patient.studies[from_study:]:
        for video in study.videos:
            frames = scene.render(study, video)  # (T, H, W)
            path = out / "videos" / f"{video.stem}.{video.fmt}"
            if video.fmt == "dcm":
                write_dicom(frames, path, patient, study, video, cfg)
            else:
                write_mp4(frames, path, cfg.fps, cfg.keyframe_interval)
            total += frames.shape[0]
    return total


def _write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifest(cfg: SynthConfig, patients: list[Patient], out: Path) -> Path:
    """Write the annotation JSONs and ``manifest.csv`` from the plan; returns its path.

    A row that gives no annotations (``video.annotated`` false) has an empty cell and no
    file; a stale file of that name from an earlier run is removed.
    """
    rows = []
    for patient in patients:
        for study in patient.studies:
            for video in study.videos:
                ann_rel = f"annotations/{video.stem}.json"
                if video.annotated:
                    annotations = video_annotations(patient, study, video, cfg)
                    (out / ann_rel).write_text(json.dumps(annotations, indent=1) + "\n")
                else:
                    (out / ann_rel).unlink(missing_ok=True)
                label = video_label(patient, study, video, cfg)
                if video.numeric_label:
                    label = "1" if label == "malignant" else "0"
                rows.append(
                    {
                        "video": f"videos/{video.stem}.{video.fmt}",
                        "patient_id": "" if video.omit_patient_id else patient.patient_id,
                        "study_id": study.study_id,
                        "label": label,
                        "annotations": ann_rel if video.annotated else "",
                    }
                )
    return _write_csv(rows, out / "manifest.csv")


def write_night_manifest(night: list[NightExam], out: Path) -> Path:
    """Write ``out/night/manifest.csv``: tonight's videos, without label or annotations.

    The pipeline must not see the truth of tonight's exams: it lives in ``truth.json``.
    """
    rows = [
        {
            "video": f"videos/{video.stem}.{video.fmt}",
            "patient_id": exam.patient.patient_id,
            "study_id": exam.study.study_id,
            "label": "",
            "annotations": "",
        }
        for exam in night
        for video in exam.study.videos
    ]
    return _write_csv(rows, out / NIGHT_DIR / "manifest.csv")


def _truth_row(cfg: SynthConfig, patient: Patient, study: Study, video: Video, batch: str) -> dict:
    """One video of ``truth.json`` (the schema is in :mod:`usv_ray.synth.truth`)."""
    return {
        "video": f"videos/{video.stem}.{video.fmt}",
        "manifest": "manifest.csv" if batch == "archive" else f"{NIGHT_DIR}/manifest.csv",
        "batch": batch,
        "patient_id": patient.patient_id,
        "study_id": study.study_id,
        "exam_date": study.exam_date.isoformat(),
        "label": video_label(patient, study, video, cfg),
        "annotated": video.annotated,
        "n_frames": video.n_frames,
        "width": cfg.width,
        "height": cfg.height,
        "nodules": video_truth(patient, study, video, cfg),
    }


def write_truth(
    cfg: SynthConfig, patients: list[Patient], night: list[NightExam], out: Path
) -> Path:
    """Write ``out/truth.json`` for the archive's and tonight's videos; returns its path.

    Compact (no indentation), in manifest order: a pure function of ``cfg``. Only
    evaluation code reads it (:func:`usv_ray.synth.truth.load_truth`), never the pipeline.
    """
    videos = [
        _truth_row(cfg, patient, study, video, "archive")
        for patient in patients
        for study in patient.studies
        for video in study.videos
    ]
    videos += [
        _truth_row(cfg, exam.patient, exam.study, video, "night")
        for exam in night
        for video in exam.study.videos
    ]
    truth = {"format": TRUTH_FORMAT, "seed": cfg.seed, "videos": videos}
    path = out / TRUTH_FILE
    path.write_text(json.dumps(truth, separators=(",", ":")) + "\n")
    return path


def write_archive(cfg: SynthConfig, out: Path) -> Path:
    """Write a synthetic breast ultrasound video archive under ``out``.

    Returns the path of ``out/manifest.csv``. The result is a pure function of ``cfg``
    (same ``cfg.seed``: byte-identical manifest, annotations and truth, identical decoded
    pixels), whatever ``cfg.workers`` is. The night batch (``out/night/``) is written
    when it is not empty; it never changes the archive (see :func:`plan_night`).
    """
    out = Path(out)
    patients = plan_archive(cfg)
    night = plan_night(cfg, patients)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    # One task per patient and batch: (patient, folder, first study to render).
    tasks = [(p, out, 0) for p in patients]
    if night:
        (out / NIGHT_DIR / "videos").mkdir(parents=True, exist_ok=True)
        tasks += [(e.patient, out / NIGHT_DIR, len(e.patient.studies) - 1) for e in night]
    if cfg.workers <= 1 or len(tasks) <= 1:
        for patient, folder, from_study in tasks:
            render_patient(cfg, patient, folder, from_study)
    else:
        # "spawn": never fork a parent that may run Ray or torch threads.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(cfg.workers, mp_context=context) as pool:
            # Longest tasks first so the last task is a short one.
            order = sorted(
                tasks,
                key=lambda t: -sum(v.n_frames for s in t[0].studies[t[2] :] for v in s.videos),
            )
            for done in [pool.submit(render_patient, cfg, *task) for task in order]:
                done.result()
    if night:
        write_night_manifest(night, out)
    write_truth(cfg, patients, night, out)
    return write_manifest(cfg, patients, out)
