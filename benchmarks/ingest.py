"""Ingest speed, as ratios measured in one run (issue 2, section 4).

1. per-core throughput: ingest with every frame kept on a 1-CPU Ray, vs a plain PyAV
   decode of the same files (target: at least 0.5);
2. sampling: 30 uniform frames of a 2,000-frame video vs a full decode of it, for key
   frames 1 s apart (target: at most 0.3) and for other spacings (target: at most 1.0);
3. scaling: ingest throughput on 2 Ray CPUs vs on 1 (target: at least 1.6).

Run: ``.venv/bin/python benchmarks/ingest.py`` (about 3 minutes on 2 cores). Prints one
line per figure and exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from usv_ray.config import Config, IngestConfig, PrivacyConfig, RayConfig
from usv_ray.ingest.decode import VideoReader
from usv_ray.ingest.pipeline import run_ingest, sample_indices


def write_bmode_like(path: Path, n_frames: int, gop: int, width: int = 640, height: int = 480):
    """An H.264 clip with ultrasound-like content: speckle that slides as a probe sweeps."""
    rng = np.random.default_rng(0)
    field = rng.rayleigh(40.0, (height, width + n_frames)).clip(0, 255).astype(np.uint8)
    depth = np.linspace(1.0, 0.4, height)[:, None]  # attenuation with depth
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "keyint_min": str(gop)}
        for t in range(n_frames):
            image = (field[:, t : t + width] * depth).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def plain_decode_seconds(paths: list[Path]) -> tuple[float, int]:
    """Wall time and frame count of a plain single-threaded PyAV decode of ``paths``."""
    frames = 0
    started = time.perf_counter()
    for path in paths:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                frames += 1
    return time.perf_counter() - started, frames


def ingest_seconds(manifest: Path, out: Path, cpus: int, cfg: Config) -> float:
    """Wall time of ingesting ``manifest`` on a fresh local Ray of ``cpus`` CPUs."""
    import ray

    quiet = ray.LoggingConfig(log_level="ERROR")
    ray.init(num_cpus=cpus, include_dashboard=False, logging_config=quiet)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        started = time.perf_counter()
        summary = run_ingest(cfg, manifest, out)
        seconds = time.perf_counter() - started
        assert summary.failed == 0, "benchmark videos must ingest cleanly"
    finally:
        ray.shutdown()
    return seconds


def sampling_ratio(path: Path, count: int = 30) -> float:
    """Time to sample ``count`` uniform frames / time of a full plain decode (best of 3)."""
    with VideoReader(path) as reader:
        targets = sample_indices(reader.info.n_frames, IngestConfig(n_frames=count))

    def sample() -> None:
        with VideoReader(path) as reader:
            got = [index for index, _ in reader.frames(targets)]
        assert got == targets

    def full() -> None:
        plain_decode_seconds([path])

    def best(fn) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    return best(sample) / best(full)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="clips for the throughput runs")
    parser.add_argument("--frames", type=int, default=300, help="frames per clip")
    args = parser.parse_args()
    failures = []

    def report(name: str, value: float, target: str, ok: bool) -> None:
        print(f"{name}: {value:.2f} (target {target}) {'ok' if ok else 'MISSED'}", flush=True)
        if not ok:
            failures.append(name)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # --- sampling ratios on a 2,000-frame clip, three key-frame spacings
        for label, gop, target in (
            ("key frames 1 s apart", 30, 0.3),
            ("one key frame", 2000, 1.0),
            ("every frame a key frame", 1, 1.0),
        ):
            path = tmp / f"long_gop{gop}.mp4"
            write_bmode_like(path, 2000, gop)
            ratio = sampling_ratio(path)
            name = f"sample 30 of 2000 frames / full decode, {label}"
            report(name, ratio, f"<= {target}", ratio <= target)

        # --- throughput: every frame kept, 1 CPU vs plain decode, then 2 CPUs vs 1
        videos = tmp / "videos"
        videos.mkdir()
        paths = []
        for i in range(args.videos):
            paths.append(videos / f"clip{i}.mp4")
            write_bmode_like(paths[-1], args.frames, gop=30)
        manifest = tmp / "manifest.csv"
        rows = [f"videos/{p.name},P{i},benign\n" for i, p in enumerate(paths)]
        manifest.write_text("video,patient_id,label\n" + "".join(rows))
        cfg = Config(
            ray=RayConfig(progress=False),
            privacy=PrivacyConfig(dev_key=True),
            ingest=IngestConfig(sampling="all", crop_box=(0.0, 0.1, 1.0, 1.0)),
        )
        decode_s, n_frames = plain_decode_seconds(paths)
        one_cpu_s = ingest_seconds(manifest, tmp / "out1", 1, cfg)
        two_cpu_s = ingest_seconds(manifest, tmp / "out2", 2, cfg)
        print(
            f"plain PyAV decode: {n_frames / decode_s:.0f} frames/s; ingest, all frames kept: "
            f"{n_frames / one_cpu_s:.0f} frames/s on 1 CPU, {n_frames / two_cpu_s:.0f} on 2",
            flush=True,
        )
        per_core = decode_s / one_cpu_s
        report("ingest per core / plain PyAV decode", per_core, ">= 0.5", per_core >= 0.5)
        scaling = one_cpu_s / two_cpu_s
        report("ingest on 2 CPUs / on 1 CPU", scaling, ">= 1.6", scaling >= 1.6)
    if failures:
        print(f"missed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
