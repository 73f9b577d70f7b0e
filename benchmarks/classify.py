"""Classify-stage speed, as ratios measured in one run.

1. feature cache: an epoch of LSTM training on cached 512-d frame features vs the same epoch
   (same videos, same batches) when every video's frames first go through
   ``FrameCNN.features`` at 224 x 224 (target: at least 10);
2. packing: frames/s (real frames) of LSTM training steps (forward, backward, Adam) on
   packed variable-frame batches (``VariableFrameLSTM`` as it is) vs the same batches run
   zero-padded to the longest video through the same weights, then the same masked mean
   (target on the CPU: at least 1.0; on a GPU, when there is one, printed without a target).
   On the CPU with 1 torch thread (a Train worker's default, ``classify.cpus_per_worker``
   1) and with ``--threads``: from 2 threads on, the zero-padded input runs oneDNN's fused,
   multi-threaded LSTM, which PyTorch has for unpacked input only, so the ratio falls;
3. Ray Train: CNN training images/s of ``fit_cnns`` with 1 worker (its ``samples_per_s``: the
   steady epochs, Ray's start-up left out) vs a bare PyTorch loop on the same frames held
   in memory, same model, batch size, normalise/augment and thread count; the bare loop's
   epochs run before and after the fit, so its median brackets it (target: at least 0.85);
4. on a GPU only: CNN training images/s with mixed precision and channels_last vs fp32
   (target: at least 1.0); on a CPU it is skipped, which is not a miss.

The machine may be shared: the paired measurements alternate in rounds and take medians.

Run: ``.venv/bin/python benchmarks/classify.py`` (about 4 minutes on 2 cores; ``--gpu-only``:
the GPU figures alone, for tools/gpu_check.sh). Prints one
line per figure, a summary table at the end, and exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# before Ray starts: the default 2 s health-check poll makes every report slow
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from usv_ray.classify.cnn import CnnFold, collate_frames, fit_cnns
from usv_ray.config import ClassifyConfig, TrainConfig
from usv_ray.imaging import augment, normalise
from usv_ray.io import rows_to_table, write_table
from usv_ray.layout import IngestFolder
from usv_ray.models.frame_cnn import FrameCNN
from usv_ray.models.lstm import VariableFrameLSTM, pad_features, video_nll
from usv_ray.schemas import FRAMES


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer stops after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, device work included."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def bmode_like_frames(rng: np.random.Generator, count: int, size: int, label: int) -> np.ndarray:
    """``(count, size, size)`` uint8 speckle, brighter for label 1 (content does not matter
    for speed; a learnable label keeps the losses sane)."""
    speckle = rng.rayleigh(30.0, (count, size, size)) + 40 * label
    return speckle.clip(0, 255).astype(np.uint8)


def lstm_step(
    model: VariableFrameLSTM,
    optimizer: torch.optim.Optimizer,
    video_prob: Callable[[VariableFrameLSTM, Tensor, Tensor], Tensor],
    padded: Tensor,
    lengths: Tensor,
    labels: Tensor,
) -> None:
    """One training step: forward, ``video_nll``, backward, Adam."""
    loss = video_nll(video_prob(model, padded, lengths), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def packed_video_prob(model: VariableFrameLSTM, padded: Tensor, lengths: Tensor) -> Tensor:
    """The product's path: sort, pack, LSTM, unpack, per-frame softmax, mean of real frames."""
    return model(padded, lengths)  # (B, C)


def padded_video_prob(model: VariableFrameLSTM, padded: Tensor, lengths: Tensor) -> Tensor:
    """The same weights over the whole zero-padded tensor, then the same masked mean."""
    hidden, _ = model.lstm(padded)  # (B, T_max, H), padding steps computed too
    frame_prob = model.head(hidden).softmax(dim=-1)  # (B, T_max, C)
    steps = torch.arange(padded.shape[1])  # (T_max,)
    real = (steps[None, :] < lengths[:, None]).to(padded.device, padded.dtype)  # (B, T_max)
    denom = lengths.to(padded.device, padded.dtype)[:, None]  # (B, 1)
    return (frame_prob * real[..., None]).sum(dim=1) / denom  # (B, C)


# -----------------------------------------------------------------------------
# 1. LSTM epoch on cached features vs recomputing the CNN features


def cache_ratio(device: torch.device, n_videos: int, cached_epochs: int) -> tuple[float, float]:
    """Seconds per LSTM epoch (recomputing the CNN features, on cached features).

    ``n_videos`` videos of 1 to 30 frames at 224 x 224, batches of 32 videos in a fixed
    order shared by both. One recomputing epoch (it is long and steady); the median of
    ``cached_epochs`` cached ones.
    """
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 31, n_videos)  # (V,) frames per video
    labels = torch.from_numpy(np.arange(n_videos) % 2).to(device)  # (V,)
    frames = [  # per video: (T_v, 1, 224, 224) uint8
        torch.from_numpy(bmode_like_frames(rng, int(n), 224, v % 2)[:, None])
        for v, n in enumerate(lengths)
    ]
    order = rng.permutation(n_videos)
    batches = [order[i : i + 32] for i in range(0, n_videos, 32)]  # the same batches twice

    torch.manual_seed(0)
    cnn = FrameCNN().to(device).eval()
    lstm = VariableFrameLSTM().to(device)
    optimizer = torch.optim.Adam(lstm.parameters(), lr=1e-3)

    @torch.no_grad()
    def embed(video_frames: list[Tensor]) -> list[Tensor]:
        """Every frame through FrameCNN.features in chunks of 64, as the cache does."""
        stacked = torch.cat(video_frames)  # (sum T, 1, 224, 224) uint8
        features = [
            cnn.features(normalise(chunk.to(device)))  # (<=64, 512)
            for chunk in stacked.split(64)
        ]
        return list(torch.cat(features).split([len(f) for f in video_frames]))  # [(T_v, 512)]

    cache: dict[int, Tensor] = {}

    def recompute_epoch() -> None:
        for batch in batches:
            features = embed([frames[v] for v in batch])
            cache.update(zip(batch.tolist(), features, strict=True))
            padded, batch_lengths = pad_features(features)  # (B, T_max, 512), (B,)
            lstm_step(lstm, optimizer, packed_video_prob, padded, batch_lengths, labels[batch])

    def cached_epoch() -> None:
        for batch in batches:
            padded, batch_lengths = pad_features([cache[v] for v in batch.tolist()])
            lstm_step(lstm, optimizer, packed_video_prob, padded, batch_lengths, labels[batch])

    recompute_s = timed(recompute_epoch, device)
    cached_epoch()  # warm-up
    cached_s = statistics.median(timed(cached_epoch, device) for _ in range(cached_epochs))
    return recompute_s, cached_s


# -----------------------------------------------------------------------------
# 2. packed vs zero-padded LSTM training


def packing_rates(device: torch.device, n_batches: int, rounds: int) -> tuple[float, float, float]:
    """Real frames/s of LSTM training, (packed, padded, median of per-round ratios).

    ``n_batches`` fixed batches of 32 videos with lengths uniform in 1..30, 512-d input,
    hidden 256. Each round times one pass over the batches with each path, alternating
    which goes first; both paths start from the same weights and have their own Adam.
    """
    gen = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(1, 31, (32,), generator=gen)  # (B,)
        padded = torch.randn(32, int(lengths.max()), 512, generator=gen)  # (B, T_max, 512)
        for i, n in enumerate(lengths.tolist()):
            padded[i, n:] = 0.0  # zero-padded, as pad_features gives
        labels = torch.randint(0, 2, (32,), generator=gen)  # (B,)
        batches.append((padded.to(device), lengths, labels.to(device)))
    real_frames = sum(int(lengths.sum()) for _, lengths, _ in batches)

    torch.manual_seed(0)
    packed_model = VariableFrameLSTM(input_size=512, hidden_size=256).to(device)
    padded_model = copy.deepcopy(packed_model)
    paths = {
        "packed": (packed_model, torch.optim.Adam(packed_model.parameters()), packed_video_prob),
        "padded": (padded_model, torch.optim.Adam(padded_model.parameters()), padded_video_prob),
    }

    def one_pass(name: str) -> float:
        model, optimizer, video_prob = paths[name]

        def run() -> None:
            for padded, lengths, labels in batches:
                lstm_step(model, optimizer, video_prob, padded, lengths, labels)

        return real_frames / timed(run, device)

    for name in paths:
        one_pass(name)  # warm-up (allocator, cuDNN plans)
    rates: dict[str, list[float]] = {"packed": [], "padded": []}
    for r in range(rounds):
        for name in ("packed", "padded") if r % 2 == 0 else ("padded", "packed"):
            rates[name].append(one_pass(name))
    ratios = [p / q for p, q in zip(rates["packed"], rates["padded"], strict=True)]
    return (
        statistics.median(rates["packed"]),
        statistics.median(rates["padded"]),
        statistics.median(ratios),
    )


# -----------------------------------------------------------------------------
# 3. CNN training through Ray Train vs a bare PyTorch loop


def write_frames(data: Path, n_videos: int, frames: int, size: int, first: int = 0) -> list[str]:
    """Frame shards of ``n_videos`` videos (labels alternate) in the ingest output layout."""
    rng = np.random.default_rng(first)
    ids = []
    for v in range(first, first + n_videos):
        video_id, label = f"v{v:04d}", v % 2
        rows = [
            {
                "video_id": video_id,
                "patient_key": f"p{v:04d}",
                "label": label,
                "frame_index": t,
                "seq_index": t,
                "seq_len": frames,
                "image": image.tobytes(),
                "height": size,
                "width": size,
            }
            for t, image in enumerate(bmode_like_frames(rng, frames, size, label))
        ]
        write_table(rows_to_table(rows, FRAMES), IngestFolder(data).frames(video_id))
        ids.append(video_id)
    return ids


def load_frames(data: Path, video_ids: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The shards' frames in memory: (images uint8 (N, 1, H, W), labels int64 (N,))."""
    shards = IngestFolder(data).frame_shards(video_ids)
    table = pq.read_table(shards, columns=["image", "label", "height", "width"])
    return collate_frames({name: table[name].to_numpy() for name in table.column_names})


class BareLoop:
    """A plain PyTorch loop doing what ``fit_cnns``' loop does, one epoch per call: same
    FrameCNN and initial weights, Adam, batch size, shuffle, normalise and augment, on the
    frames held in memory."""

    def __init__(
        self, cfg: ClassifyConfig, images: Tensor, labels: Tensor, device: torch.device
    ) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg, self.images, self.labels, self.device = cfg, images, labels, device
        self.model = FrameCNN().to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.cnn.lr)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.epochs = 0

    def epoch(self) -> float:
        """Train one epoch; its images/s."""
        cfg, device = self.cfg, self.device
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + self.epochs * 101)
        order = torch.randperm(len(self.images), generator=generator)
        self.epochs += 1
        sync(device)
        started = time.perf_counter()
        for batch in order.split(cfg.cnn.batch_size):
            inputs = augment(normalise(self.images[batch].to(device)), generator)  # (B, 1, H, W)
            loss = self.loss_fn(self.model(inputs), self.labels[batch].to(device))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # the product's loop reads the loss every step too
        sync(device)
        return len(self.images) / (time.perf_counter() - started)


def ray_worker_threads(cpus: float) -> int:
    """torch's intra-op threads in a Ray actor holding ``cpus`` CPUs, as a Train worker does
    (Ray sets OMP_NUM_THREADS to the floor of the worker's CPUs when it is unset)."""
    import ray

    @ray.remote
    def threads() -> int:
        return torch.get_num_threads()

    return ray.get(threads.options(num_cpus=cpus).remote())


def ray_vs_bare(
    tmp: Path, device: torch.device, threads: int, n_videos: int, size: int, epochs: int
) -> tuple[float, float, int, int]:
    """(Ray Train images/s, bare loop images/s, worker threads, bare threads)."""
    import ray

    frames_per_video = 25
    train_ids = write_frames(tmp / "data", n_videos, frames_per_video, size)
    val_ids = write_frames(tmp / "data", 1, 8, size, first=n_videos)
    cfg = ClassifyConfig(
        workers=1,
        cpus_per_worker=float(threads),
        use_gpu=device.type == "cuda",
        cnn=TrainConfig(epochs=epochs, batch_size=32),
        val_every=epochs,  # validate once, at the end: not part of the timed epochs anyway
    )
    images, labels = load_frames(tmp / "data", train_ids)  # (N, 1, S, S), (N,)
    bare = BareLoop(cfg, images, labels, device)
    bare_rates = [bare.epoch() for _ in range(epochs)][1:]  # the first warms up

    quiet = ray.LoggingConfig(log_level="ERROR")
    # logical CPUs beyond the worker's, so Ray Data can feed it (training workers that hold
    # every CPU starve the Ray Data reads that feed them)
    ray.init(
        num_cpus=threads + 2,
        include_dashboard=False,
        logging_config=quiet,
        object_store_memory=256 * 2**20,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        worker_threads = ray_worker_threads(cfg.cpus_per_worker)
        fold = CnnFold(0, tuple(train_ids), tuple(val_ids))
        run = fit_cnns(cfg, tmp / "data", [fold], tmp / "runs", "bench")[0]
    finally:
        ray.shutdown()
    # two more bare epochs after the fit, so the bare figure brackets it in time: the load
    # from other work on a shared machine drifts over the minutes this takes
    bare_rates += [bare.epoch() for _ in range(2)]
    bare_rate = statistics.median(bare_rates)
    return run.samples_per_s, bare_rate, worker_threads, torch.get_num_threads()


# -----------------------------------------------------------------------------
# 4. mixed precision + channels_last vs fp32 (GPU only)


def mixed_precision_rates(
    device: torch.device, batch: int, steps: int, rounds: int
) -> tuple[float, float]:
    """Median images/s of CNN training at 224 x 224, (fp32, mixed precision + channels_last).

    Mixed precision is bf16 autocast where the GPU has it, else fp16 with a GradScaler.
    Rounds of ``steps`` steps alternate between the two.
    """
    bf16 = torch.cuda.is_bf16_supported()
    amp_dtype = torch.bfloat16 if bf16 else torch.float16
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4 * batch, 1, 224, 224), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 2, (4 * batch,), generator=gen)
    images, labels = images.to(device), labels.to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    setups = {}
    for name, mixed in (("fp32", False), ("mixed", True)):
        torch.manual_seed(0)
        model = FrameCNN().to(device).train()
        if mixed:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=mixed and not bf16)
        setups[name] = (model, optimizer, scaler, mixed)

    def run(name: str, n_steps: int) -> float:
        model, optimizer, scaler, mixed = setups[name]

        def go() -> None:
            for step in range(n_steps):
                lo = (step % 4) * batch
                inputs = augment(normalise(images[lo : lo + batch]), gen)  # (B, 1, 224, 224)
                if mixed:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=amp_dtype, enabled=mixed):
                    loss = loss_fn(model(inputs), labels[lo : lo + batch])
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

        return n_steps * batch / timed(go, device)

    for name in setups:
        run(name, 5)  # warm-up: cuDNN autotuning, allocator
    rates: dict[str, list[float]] = {"fp32": [], "mixed": []}
    for r in range(rounds):
        for name in ("fp32", "mixed") if r % 2 == 0 else ("mixed", "fp32"):
            rates[name].append(run(name, steps))
    return statistics.median(rates["fp32"]), statistics.median(rates["mixed"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads, and Ray worker CPUs")
    parser.add_argument("--lstm-videos", type=int, default=64, help="videos for the cache ratio")
    parser.add_argument(
        "--cnn-videos",
        type=int,
        default=0,
        help="25-frame videos for Ray vs bare (0: 16, or 256 on a GPU)",
    )
    parser.add_argument("--cnn-size", type=int, default=112, help="frame size for Ray vs bare")
    parser.add_argument("--cnn-epochs", type=int, default=4, help="epochs; the first is left out")
    parser.add_argument(
        "--gpu-only",
        action="store_true",
        help="only the GPU figures (2 on the GPU, 3 on the GPU, 4): tools/gpu_check.sh",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if args.gpu_only and not gpu:
        print("no CUDA: the GPU sections (2 on the GPU, 3 on the GPU, 4) are skipped")
        return 0
    print(
        f"device: {torch.cuda.get_device_name(device) if gpu else 'CPU'}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores (other work on the machine skews every figure)",
        flush=True,
    )
    failures: list[str] = []
    summary: list[tuple[str, str, str, str]] = []  # (figure, value, target, result)

    def report(name: str, value: float, target: str, ok: bool | None) -> None:
        result = "-" if ok is None else ("ok" if ok else "MISSED")
        print(f"{name}: {value:.2f} (target {target}) {result}", flush=True)
        summary.append((name, f"{value:.2f}", target, result))
        if ok is False:
            failures.append(name)

    # --- 1. feature cache
    if not args.gpu_only:
        recompute_s, cached_s = cache_ratio(device, args.lstm_videos, cached_epochs=15)
        print(
            f"LSTM epoch over {args.lstm_videos} videos of 1-30 frames: {recompute_s:.2f} s "
            f"recomputing CNN features at 224x224, {cached_s * 1000:.1f} ms on cached features",
            flush=True,
        )
        ratio = recompute_s / cached_s
        name = "LSTM epoch, recomputing CNN features / on cached features"
        report(name, ratio, ">= 10", ratio >= 10)

    # --- 2. packed vs padded, on the CPU (1 thread and --threads), and on the GPU
    cpu = torch.device("cpu")
    for threads in [] if args.gpu_only else sorted({1, args.threads}):
        torch.set_num_threads(threads)
        packed, padded, ratio = packing_rates(cpu, n_batches=4, rounds=15)
        print(
            f"LSTM training frames/s on the CPU, {threads} thread(s): packed {packed:.0f}, "
            f"zero-padded {padded:.0f}",
            flush=True,
        )
        name = f"LSTM training frames/s, packed / zero-padded, CPU, {threads} thread(s)"
        report(name, ratio, ">= 1.0", ratio >= 1.0)
    torch.set_num_threads(args.threads)
    if gpu:
        packed, padded, ratio = packing_rates(device, n_batches=16, rounds=15)
        print(
            f"LSTM training frames/s on the GPU: packed {packed:.0f}, zero-padded {padded:.0f}",
            flush=True,
        )
        report("LSTM training frames/s, packed / zero-padded, GPU", ratio, "none", None)

    # --- 3. Ray Train vs bare loop
    n_videos = args.cnn_videos or (256 if gpu else 16)
    with tempfile.TemporaryDirectory() as tmp:
        on_ray, bare, worker_threads, bare_threads = ray_vs_bare(
            Path(tmp), device, args.threads, n_videos, args.cnn_size, args.cnn_epochs
        )
    print(
        f"CNN training images/s at {args.cnn_size}x{args.cnn_size}, {n_videos * 25} frames, "
        f"medians of the epochs after the first: Ray Train 1 worker {on_ray:.1f} "
        f"({worker_threads} torch threads), bare loop {bare:.1f} ({bare_threads} threads)",
        flush=True,
    )
    if worker_threads != bare_threads:
        print("  warning: thread counts differ, the ratio compares unlike set-ups")
    ratio = on_ray / bare
    report("CNN training images/s, Ray Train 1 worker / bare loop", ratio, ">= 0.85", ratio >= 0.85)

    # --- 4. mixed precision (GPU only)
    if gpu:
        fp32, mixed = mixed_precision_rates(device, batch=128, steps=20, rounds=5)
        print(
            f"CNN training images/s at 224x224, batch 128: fp32 {fp32:.0f}, "
            f"mixed precision + channels_last {mixed:.0f}",
            flush=True,
        )
        ratio = mixed / fp32
        report("CNN training images/s, mixed precision / fp32", ratio, ">= 1.0", ratio >= 1.0)
    else:
        print("CNN training images/s, mixed precision / fp32: no GPU: skipped")
        summary.append(
            ("CNN training images/s, mixed precision / fp32", "-", ">= 1.0", "no GPU: skipped")
        )

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    width = max(len(row[0]) for row in summary)
    print(f"\n{'figure':<{width}}  {'value':>6}  {'target':<8}  result")
    for name, value, target, result in summary:
        print(f"{name:<{width}}  {value:>6}  {target:<8}  {result}")
    if failures:
        print(f"missed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
