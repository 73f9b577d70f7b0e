"""Diagnosis speed (``usv-ray predict``), measured in one run, one section per figure.

1. throughput: videos diagnosed per second by predict's Ray Data job (one
   :class:`~usv_ray.predict.diagnose.Diagnoser` actor of 1 CPU) vs a bare PyTorch loop
   (torch on 1 thread) over the same videos (frames shards of 24 frames of 64 x 64, the
   demo's, with 2 tracklets each) and the same bundle of 3 untrained fold models (the
   demo's folds), after each side's first batch (target: at least 0.8), and over the whole
   job with the start-up counted (printed without a target: an actor's start-up is a fixed
   cost per night).
2. ensemble: the bare loop's cost per video with a bundle of 5 members against one of 1
   member (the issue asks it printed: a k-member ensemble reads every frame k times).
3. on a GPU only: videos/s of the actor on 1 GPU in bf16 against the same job on 1 CPU
   (no target); on a CPU it is skipped, which is not a miss.

The models are untrained: speed does not depend on what a model learnt. Run:
``.venv/bin/python benchmarks/predict.py`` (about 2 minutes on 2 cores; ``--quick``: fewer
videos; ``--gpu-only``: section 3 alone, for tools/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy bundles

from common import Figure, Rates, load, rates, run_sections
from toy_bundle import write_toy_bundle, write_toy_data

from usv_ray.config import Config, IngestConfig, PredictConfig, RayConfig

INGEST = IngestConfig(frame_size=64, n_frames=30, patch_height=64, patch_width=32)


def bare_rates(bundle: Path, data: Path, ids: list[str], batch: int) -> Rates:
    """The bare loop: the bundle loaded, then each video's shards read and diagnosed, one
    batch of ``batch`` videos at a time, torch on 1 thread."""
    import torch

    from usv_ray.predict.diagnose import Diagnoser

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        diagnoser = Diagnoser(str(bundle))
        first = None
        for start in range(0, len(ids), batch):
            for video_id in ids[start : start + batch]:
                diagnoser.diagnose(
                    str(data / "frames" / f"{video_id}.parquet"),
                    str(data / "tracklets" / f"{video_id}.parquet"),
                )
            first = first or (time.perf_counter(), min(batch, len(ids)))
        return rates(len(ids), started, *first, time.perf_counter())
    finally:
        torch.set_num_threads(threads)


def ray_rates(cfg: Config, bundle: Path, data: Path, ids: list[str]) -> Rates:
    """predict's own Ray Data job (``usv_ray.predict.pipeline._diagnose``) over ``ids``."""
    import pandas as pd

    from usv_ray.predict.pipeline import _diagnose

    videos = pd.DataFrame({"video_id": ids, "patient_key": "p", "study_key": "s"})
    started = time.perf_counter()
    first, rows = None, 0
    for table in _diagnose(cfg, bundle, data, videos):
        first = first or (time.perf_counter(), table.num_rows)
        rows += table.num_rows
    assert rows == len(ids), (rows, len(ids))
    return rates(len(ids), started, *first, time.perf_counter())


def section_throughput(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    import ray

    from usv_ray.runtime import ensure_ray

    n = 32 if args.quick else 160
    ids = write_toy_data(tmp / "data", n_videos=n, frames=24, tracklets=2, ingest=INGEST)
    bundle = write_toy_bundle(tmp / "cls", members=3, ingest=INGEST)
    cfg = Config(ray=RayConfig(progress=False), predict=PredictConfig(batch_size=8))
    before = bare_rates(bundle, tmp / "data", ids, 8)
    ensure_ray(RayConfig(num_cpus=2, object_store_mb=256, progress=False))
    try:
        job = ray_rates(cfg, bundle, tmp / "data", ids)
    finally:
        ray.shutdown()
    after = bare_rates(bundle, tmp / "data", ids, 8)
    bare = Rates((before.whole + after.whole) / 2, (before.steady + after.steady) / 2)
    print(
        f"diagnosing {n} videos of 24 frames at 64 px, 3 members, on 1 CPU: Ray Data "
        f"{job.steady:.1f}/s after its first batch ({job.whole:.1f}/s with its start-up), "
        f"bare loop {bare.steady:.1f}/s ({bare.whole:.1f}/s) ({load()})",
        flush=True,
    )
    steady = job.steady / bare.steady
    return [
        Figure("videos/s, Ray Data / bare loop, 1 CPU", f"{steady:.2f}", ">= 0.8", steady >= 0.8),
        Figure("the same, start-up counted", f"{job.whole / bare.whole:.2f}", "none", None),
    ]


def section_ensemble(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    n = 16 if args.quick else 48
    ids = write_toy_data(tmp / "data", n_videos=n, frames=24, tracklets=2, ingest=INGEST)
    seconds = {}
    for members in (1, 5):
        bundle = write_toy_bundle(tmp / f"cls{members}", members=members, ingest=INGEST)
        steady = [bare_rates(bundle, tmp / "data", ids, 8).steady for _ in range(2)]
        seconds[members] = 1 / max(steady)
    ratio = seconds[5] / seconds[1]
    print(
        f"cost per video: {1000 * seconds[1]:.0f} ms with 1 member, {1000 * seconds[5]:.0f} "
        f"ms with 5 ({ratio:.2f}x) ({load()})",
        flush=True,
    )
    return [Figure("cost per video, 5 members / 1 member", f"{ratio:.2f}", "none", None)]


def section_gpu(args: argparse.Namespace, tmp: Path) -> list[Figure]:
    import ray
    import torch

    from usv_ray.runtime import ensure_ray

    if not torch.cuda.is_available():
        return [Figure("videos/s, 1 GPU bf16 / 1 CPU", "no CUDA", "none", None)]
    n = 64 if args.quick else 320
    ids = write_toy_data(tmp / "data", n_videos=n, frames=24, tracklets=2, ingest=INGEST)
    bundle = write_toy_bundle(tmp / "cls", members=3, ingest=INGEST)
    ensure_ray(RayConfig(num_cpus=2, object_store_mb=256, progress=False))
    try:
        cpu = ray_rates(Config(ray=RayConfig(progress=False)), bundle, tmp / "data", ids)
        gpu_cfg = PredictConfig(use_gpu=True, precision="bf16", batch_size=32)
        gpu = ray_rates(Config(predict=gpu_cfg), bundle, tmp / "data", ids)
    finally:
        ray.shutdown()
    ratio = gpu.steady / cpu.steady
    print(f"1 GPU bf16 {gpu.steady:.1f} videos/s, 1 CPU {cpu.steady:.1f}/s ({load()})")
    return [Figure("videos/s, 1 GPU bf16 / 1 CPU", f"{ratio:.2f}", "none", None)]


SECTIONS = {"throughput": section_throughput, "ensemble": section_ensemble, "gpu": section_gpu}


def main() -> int:
    return run_sections(__doc__.splitlines()[0], SECTIONS, "fewer videos")


if __name__ == "__main__":
    sys.exit(main())
