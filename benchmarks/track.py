"""Detection and tracking speed (automatic tracklets), measured in one run.

1. detect-track: frames/s per core of ingest's whole path for a video without annotations
   (decode, de-identification crop, field of view, the stored frames, the demo's detector
   at its input size of 64 px on every frame, the tracker, the tracklet patches, the
   shards) against a plain PyAV decode of the same videos (every frame, its luma plane, as
   ingest reads it), both on 1 thread (printed: the ratio, no target).
2. train: detector training images/s through Ray Train with 1 worker (the runner's
   ``samples_per_s``: steady epochs, start-up left out) vs a bare PyTorch loop on the same
   frames held in memory, same model, batch size, augmentation and thread count; the
   bare loop's epochs run before and after the fit, so its median brackets it (target: at
   least 0.85).
3. on a GPU only: detection frames/s in bf16 (the detector alone, batches of 64) and
   section 1's ratio with the detector on the GPU; on a CPU it is skipped.

The archive is synthetic (``usv-ray synth``: B-mode speckle with nodules, 320 x 240
H.264); the detector is untrained (its speed does not depend on what it learnt; it keeps
more, weaker boxes than a trained one, so the tracker works more). Run:
``.venv/bin/python benchmarks/track.py`` (about 3 minutes on 2 cores; ``--quick``: fewer
videos and epochs; ``--gpu-only``: section 3 alone, for tools/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# before Ray starts: the default 2 s health-check poll makes every report slow
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy frames

from common import Figure, load, run_sections
from toy_boxes import write_boxed_frames

from usv_ray.config import DetectConfig, IngestConfig, SynthConfig

SIZE = 64  # the demo's frame size, the detector's input
INGEST = IngestConfig(
    crop_box=(0.0, 0.11, 1.0, 1.0), frame_size=SIZE, patch_height=64, patch_width=32
)


def archive(tmp: Path, patients: int) -> list[Path]:
    """A synthetic archive's videos (mp4 only)."""
    from usv_ray.synth import write_archive

    cfg = SynthConfig(patients=patients, max_frames=90, dicom_fraction=0.0, workers=1)
    write_archive(cfg, tmp / "archive")
    return sorted((tmp / "archive" / "videos").glob("*.mp4"))


def decode_fps(videos: list[Path]) -> float:
    """Frames/s of a plain decode of every frame (PyAV, its luma plane), 1 thread."""
    from usv_ray.ingest.decode import VideoReader

    frames, started = 0, time.perf_counter()
    for path in videos:
        with VideoReader(path, threads=1) as reader:
            frames += sum(1 for _ in reader.frames())
    return frames / (time.perf_counter() - started)


def untrained_detector(tmp: Path, device: str = "cpu", bf16: bool = False):
    """The demo's detector kind, untrained, as a bundle ingest loads."""
    from usv_ray import bundle
    from usv_ray.bundle.detector import FILE, FRAME_SETTINGS, KIND
    from usv_ray.layout import ingest_settings
    from usv_ray.models.detector import build_detector
    from usv_ray.runner import save_model

    meta = {"model": "centernet", "input_size": SIZE, "score_threshold": 0.05}
    torch.manual_seed(0)
    path = save_model(tmp / "runs", "detector", build_detector(meta).state_dict(), meta)
    settings = ingest_settings(INGEST)
    frames = {k: settings[k] for k in FRAME_SETTINGS}
    bundle.write(tmp / "bundle", KIND, {FILE: path}, {"ingest": frames})
    return bundle.load(tmp / "bundle", KIND, device=device, bf16=bf16)


def track_fps(videos: list[Path], detector, out: Path) -> float:
    """Frames/s of ingest's path for videos without annotations, with ``detector``."""
    from usv_ray.ingest.manifest import VideoTask
    from usv_ray.ingest.video import ingest_video

    frames, started = 0, time.perf_counter()
    for i, path in enumerate(videos):
        task = VideoTask(f"v{i}", path.name, str(path), "pk", "sk", None, -1, None, "fp")
        entry = ingest_video(task, INGEST, b"k" * 16, out, detector, DetectConfig())
        frames += entry["video"]["n_frames"]
    return frames / (time.perf_counter() - started)


def section_detect_track(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    torch.set_num_threads(1)
    videos = archive(tmp, 2 if args.quick else 6)
    detector = untrained_detector(tmp)
    decode = [decode_fps(videos)]
    tracked = [track_fps(videos, detector, tmp / "data")]
    decode.append(decode_fps(videos))  # before and after: the load drifts
    ratio = tracked[0] / statistics.mean(decode)
    print(
        f"{len(videos)} videos: ingest with detection and tracking {tracked[0]:.1f} frames/s "
        f"per core, plain decode {statistics.mean(decode):.1f} frames/s ({load()})",
        flush=True,
    )
    return [
        Figure("detect + track frames/s per core", f"{tracked[0]:.1f}", "none", None),
        Figure("the same / plain PyAV decode", f"{ratio:.2f}", "none", None),
    ]


class BareLoop:
    """A plain PyTorch loop doing what the detector's Train worker does, one epoch per
    call: same model and initial weights, Adam, batch size, shuffle, normalise, augment."""

    def __init__(self, cfg: DetectConfig, images: torch.Tensor, boxes: list[torch.Tensor]):
        from usv_ray.models.detector import build_detector

        torch.manual_seed(cfg.seed)
        self.cfg, self.images, self.boxes = cfg, images, boxes
        meta = {"model": cfg.model, "input_size": SIZE, "score_threshold": cfg.score_threshold}
        self.model = build_detector(meta).train()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.epochs = 0

    def epoch(self) -> float:
        from usv_ray.detect.data import augment
        from usv_ray.imaging import normalise

        generator = torch.Generator().manual_seed(self.cfg.seed + self.epochs)
        order = torch.randperm(len(self.images), generator=generator)
        self.epochs += 1
        started = time.perf_counter()
        for batch in order.split(self.cfg.batch_size):
            inputs, boxes = augment(
                normalise(self.images[batch]), [self.boxes[i] for i in batch], generator
            )
            loss = self.model(inputs, boxes)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # the runner reads the loss every step too
        return len(self.images) / (time.perf_counter() - started)


def section_train(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    import pyarrow.parquet as pq
    import ray

    from usv_ray.detect.data import FRAME_COLUMNS, collate
    from usv_ray.detect.training import DetectorTask, frames_dataset
    from usv_ray.layout import IngestFolder
    from usv_ray.runner import RunSettings, train_models

    epochs = 3 if args.quick else 5
    threads = 2
    ids = write_boxed_frames(tmp / "data", 24 if args.quick else 64, 25, SIZE)
    cfg = DetectConfig(workers=1, cpus_per_worker=float(threads), epochs=epochs, val_every=epochs)
    table = pq.read_table(IngestFolder(tmp / "data").frame_shards(ids), columns=FRAME_COLUMNS)
    images, boxes = collate({name: table[name].to_numpy() for name in FRAME_COLUMNS})
    torch.set_num_threads(threads)
    bare = BareLoop(cfg, images, boxes)
    bare_rates = [bare.epoch() for _ in range(epochs)][1:]  # the first warms up
    ray.init(
        num_cpus=threads + 2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        sets = {
            "train": frames_dataset(tmp / "data", ids),
            "val": frames_dataset(tmp / "data", ids[:2]),
        }
        run = train_models(
            [DetectorTask(cfg, SIZE)],
            RunSettings.of(cfg, cfg, cfg.seed),
            tmp / "runs",
            "bench",
            lambda _: sets,
            lambda _: ["train"],
        )["detector"]
    finally:
        ray.shutdown()
    bare_rates += [bare.epoch() for _ in range(2)]
    ratio = run.samples_per_s / statistics.median(bare_rates)
    print(
        f"detector training: Ray Train {run.samples_per_s:.1f} images/s, bare loop "
        f"{statistics.median(bare_rates):.1f} images/s, {threads} threads ({load()})",
        flush=True,
    )
    return [
        Figure(
            "detector training images/s, Ray Train / bare", f"{ratio:.2f}", ">= 0.85", ratio >= 0.85
        )
    ]


def section_gpu(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    if not torch.cuda.is_available():
        return [Figure("detection frames/s, GPU bf16", "no CUDA", "none", None)]
    detector = untrained_detector(tmp, "cuda", bf16=True)
    frames = np.random.default_rng(0).integers(0, 255, (64, SIZE, SIZE), dtype=np.uint8)
    detector(frames)  # warm-up
    torch.cuda.synchronize()
    started, rounds = time.perf_counter(), 50
    for _ in range(rounds):
        detector(frames)
    torch.cuda.synchronize()
    fps = rounds * len(frames) / (time.perf_counter() - started)
    videos = archive(tmp, 2 if args.quick else 6)
    ratio = track_fps(videos, detector, tmp / "data") / decode_fps(videos)
    print(f"detection on the GPU, bf16: {fps:.0f} frames/s ({load()})", flush=True)
    return [
        Figure("detection frames/s, GPU bf16", f"{fps:.0f}", "none", None),
        Figure("detect + track / plain decode, GPU detector", f"{ratio:.2f}", "none", None),
    ]


SECTIONS = {"detect-track": section_detect_track, "train": section_train, "gpu": section_gpu}


def main() -> int:
    return run_sections(__doc__.splitlines()[0], SECTIONS, "fewer videos and epochs")


if __name__ == "__main__":
    sys.exit(main())
