"""Re-identification evaluation speed, measured in one run.

1. DeLong: the paired DeLong test of two correlated AUCs (``delong_test``) on 100,000
   synthetic pair scores, best of 3, vs a 1,000-resample paired bootstrap of the same AUC
   difference (both AUCs of every resample; resamples stratified by class, as DeLong keeps
   the class sizes fixed). The bootstrap uses ``metrics.roc_auc`` or sklearn's
   ``roc_auc_score``, whichever is faster on these scores (measured first, and printed).
   Target (from the issue): DeLong on 100,000 pairs in well under a second, here < 1 s.

2. Training clips/s of the classification model (R(2+1)D-18 extractor, CE + batch-hard
   triplet on P x K batches) through Ray Train with 1 worker vs a bare PyTorch loop doing
   the same steps on the same clips in memory. Target: ratio >= 0.85.
3. On a GPU only: R(2+1)D training clips/s at the papers' 16 x 256 x 128 clips, fp32 vs
   mixed precision (bf16 autocast).

Run: ``.venv/bin/python benchmarks/reid.py`` (about half a minute on 2 cores; ``--quick``:
10,000 pairs and 100 resamples, seconds; ``--gpu-only``: section 3 alone, for
tools/gpu_check.sh). Prints one line per figure, a summary table at the
end, and exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from usv_ray.config import ReidConfig
from usv_ray.evaluate.delong import delong_test
from usv_ray.evaluate.metrics import roc_auc

AucFn = Callable[[np.ndarray, np.ndarray], float]


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """The shortest wall seconds of ``repeats`` calls of ``fn()``: the least disturbed by
    other work on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def synthetic_pairs(
    n_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(same (P,) int64, score_a (P,), score_b (P,))``: 30% same-nodule pairs, and two
    similarity scores in (0, 1) that share a latent pair similarity (correlation about 0.7
    before the squashing) with their own noise; score_b is the weaker model."""
    same = (rng.random(n_pairs) < 0.3).astype(np.int64)
    latent = rng.normal(size=n_pairs)
    logit_a = 1.2 * same + 0.7 * latent + 0.7 * rng.normal(size=n_pairs)
    logit_b = 1.0 * same + 0.7 * latent + 0.7 * rng.normal(size=n_pairs)
    return same, 1 / (1 + np.exp(-logit_a)), 1 / (1 + np.exp(-logit_b))


def fastest_auc(same: np.ndarray, score: np.ndarray) -> tuple[str, AucFn]:
    """``(name, fn)`` of the faster AUC on these scores: ``metrics.roc_auc`` or sklearn's
    ``roc_auc_score``, best of 3 each."""
    from sklearn.metrics import roc_auc_score

    candidates: dict[str, AucFn] = {
        "usv_ray.evaluate.metrics.roc_auc": roc_auc,
        "sklearn.metrics.roc_auc_score": roc_auc_score,
    }
    seconds = {name: best_of(lambda fn=fn: fn(same, score)) for name, fn in candidates.items()}
    name = min(seconds, key=seconds.__getitem__)
    return name, candidates[name]


def stratified_bootstrap(
    same: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    auc: AucFn,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(B,)`` AUC difference a - b of ``n_boot`` resamples that each draw as many
    positive and as many negative pairs as there are, with replacement."""
    positives, negatives = np.flatnonzero(same == 1), np.flatnonzero(same == 0)
    differences = np.empty(n_boot)
    for b in range(n_boot):
        rows = np.concatenate(
            [rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)]
        )  # (P,)
        differences[b] = auc(same[rows], score_a[rows]) - auc(same[rows], score_b[rows])
    return differences


@dataclass(frozen=True)
class DelongSpeed:
    """What ``delong_speed`` measured."""

    n_pairs: int
    n_boot: int
    delong_s: float  # best of 3, one delong_test
    bootstrap_s: float  # one bootstrap of n_boot resamples
    bootstrap_auc: str  # the AUC function the bootstrap used
    delong_sd: float  # DeLong standard error of the AUC difference
    bootstrap_sd: float  # standard deviation of the bootstrap differences


def delong_speed(n_pairs: int = 100_000, n_boot: int = 1000, seed: int = 0) -> DelongSpeed:
    """Time ``delong_test`` (best of 3) and a paired bootstrap of the same AUC difference
    on ``n_pairs`` synthetic pair scores."""
    rng = np.random.default_rng(seed)
    same, score_a, score_b = synthetic_pairs(n_pairs, rng)
    delong_s = best_of(lambda: delong_test(same, score_a, score_b))
    comparison = delong_test(same, score_a, score_b)
    auc_name, auc = fastest_auc(same, score_a)
    started = time.perf_counter()
    differences = stratified_bootstrap(same, score_a, score_b, auc, n_boot, rng)
    bootstrap_s = time.perf_counter() - started
    return DelongSpeed(
        n_pairs=n_pairs,
        n_boot=n_boot,
        delong_s=delong_s,
        bootstrap_s=bootstrap_s,
        bootstrap_auc=auc_name,
        delong_sd=float(np.sqrt(comparison.variance)),
        bootstrap_sd=float(differences.std(ddof=1)),
    )


# -----------------------------------------------------------------------------
# 2. Ray Train vs a bare loop


def write_tracklets(
    data: Path, n_nodules: int, per_nodule: int, cfg: ReidConfig, prefix: str
) -> list[str]:
    """Random clips of ``cfg``'s size, ``per_nodule`` per nodule, two nodules per patient
    (speed only: the content does not matter), as ``data/tracklets/<prefix>.parquet``;
    returns the tracklet ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from usv_ray.schemas import TRACKLETS

    rng = np.random.default_rng(0)
    (data / "tracklets").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(n_nodules):
        for t in range(per_nodule):
            shape = (cfg.clip_frames, cfg.clip_height, cfg.clip_width)
            rows.append(
                {
                    "tracklet_id": f"{prefix}{n:03d}{t}",
                    "video_id": f"{prefix}{n:03d}{t}",
                    "patient_key": f"{prefix}{n // 2:03d}",
                    "study_key": None,
                    "nodule_id": f"n{n % 2}",
                    "frame_index": list(range(cfg.clip_frames)),
                    "clip": rng.integers(0, 256, shape, dtype=np.uint8).tobytes(),
                    "n_frames_total": cfg.clip_frames,
                    "height": cfg.clip_height,
                    "width": cfg.clip_width,
                    "source": "annotated",
                    "box_frames": list(range(cfg.clip_frames)),
                    "boxes": [[0.0, 0.0, cfg.clip_width, cfg.clip_height]] * cfg.clip_frames,
                }
            )
    table = pa.Table.from_pylist(rows, schema=TRACKLETS)
    pq.write_table(table, data / "tracklets" / f"{prefix}.parquet")
    return [r["tracklet_id"] for r in rows]


def bare_cm_rates(cfg: ReidConfig, data: Path, ids: list[str], epochs: int) -> list[float]:
    """Clips/s per epoch of a plain loop doing the CM worker's steps (same sampler, model,
    augmentation, losses, optimizer) on the clips in memory."""
    import torch

    from usv_ray.models.reid import build_reid_model as build_model
    from usv_ray.reid.clips import load_tracklets
    from usv_ray.reid.training import cm_loss, cm_steps, identity_labels

    train = load_tracklets(data, ids, cfg)
    labels, clips = identity_labels(train), torch.from_numpy(train.clips)
    torch.manual_seed(cfg.seed)
    model = build_model("CM", int(labels.max()) + 1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rates = []
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101)
        seen, started = 0, time.perf_counter()
        for (index,) in cm_steps(labels, cfg, 0, 1, epoch):
            loss = cm_loss(model, clips[index], torch.from_numpy(labels[index]), cfg, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            seen += len(index)
        rates.append(seen / (time.perf_counter() - started))
    return rates


def ray_vs_bare(tmp: Path, epochs: int, n_nodules: int) -> tuple[float, float, int]:
    """(Ray Train clips/s, bare loop clips/s, torch threads), medians over the epochs after
    the first (warm-up); the bare loop runs before and after the Ray run, to bracket it."""
    import statistics

    import ray
    import torch

    from usv_ray.reid.training import fit_reid

    threads = torch.get_num_threads()
    cfg = ReidConfig(
        workers=1, cpus_per_worker=float(threads), clip_height=32, clip_width=16, epochs=epochs
    )
    ids = write_tracklets(tmp, n_nodules, cfg.k, cfg, "train")
    val = write_tracklets(tmp, 4, 2, cfg, "val")
    bare = bare_cm_rates(cfg, tmp, ids, epochs)[1:]
    ray.init(
        num_cpus=threads + 1,
        include_dashboard=False,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
        object_store_memory=256 * 2**20,
    )
    try:
        trained = fit_reid(cfg, "CM", tmp, ids, val, tmp / "runs", "bench")
    finally:
        ray.shutdown()
    bare += bare_cm_rates(cfg, tmp, ids, 3)[1:]
    return statistics.median(trained.rates[1:]), statistics.median(bare), threads


# -----------------------------------------------------------------------------
# 3. mixed precision (GPU only)


def amp_clip_rates(steps: int = 10, batch: int = 8) -> tuple[float, float]:
    """R(2+1)D training clips/s at 16 x 256 x 128 on the GPU: (fp32, bf16 autocast)."""
    import torch

    from usv_ray.models.reid import ClassificationModel

    device = torch.device("cuda")
    model = ClassificationModel(100).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    clips = torch.randn(batch, 1, 16, 256, 128, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    rates = []
    for amp in (False, True):
        for i in range(steps + 2):
            if i == 2:  # two warm-up steps
                torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                _, logits = model(clips)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - started))
    return rates[0], rates[1]


def gpu_only() -> int:
    """Section 3 alone, or "no CUDA" where there is none."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA: the GPU section (3, mixed precision) is skipped", flush=True)
        return 0
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    fp32, amp = amp_clip_rates()
    print(f"R(2+1)D training, 16 x 256 x 128 clips: fp32 {fp32:.1f}, bf16 {amp:.1f} clips/s")
    print(f"R(2+1)D clips/s, bf16 / fp32: {amp / fp32:.2f} (target none) -")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 pairs and 100 resamples (seconds)"
    )
    parser.add_argument(
        "--gpu-only", action="store_true", help="only section 3 (the GPU): tools/gpu_check.sh"
    )
    args = parser.parse_args()
    n_pairs, n_boot = (10_000, 100) if args.quick else (100_000, 1000)
    if args.gpu_only:
        return gpu_only()
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work on the machine skews every figure)",
        flush=True,
    )
    failures: list[str] = []
    summary: list[tuple[str, str, str, str]] = []  # (figure, value, target, result)

    def report(name: str, value: str, target: str, ok: bool | None) -> None:
        result = "-" if ok is None else ("PASS" if ok else "MISSED")
        print(f"{name}: {value} (target {target}) {result}", flush=True)
        summary.append((name, value, target, result))
        if ok is False:
            failures.append(name)

    # --- 1. DeLong vs bootstrap
    speed = delong_speed(n_pairs, n_boot)
    print(
        f"DeLong test of two correlated AUCs on {speed.n_pairs:,} pairs: "
        f"{speed.delong_s * 1000:.1f} ms (best of 3); paired bootstrap of the AUC difference, "
        f"{speed.n_boot:,} resamples with {speed.bootstrap_auc}: {speed.bootstrap_s:.2f} s",
        flush=True,
    )
    print(
        f"standard error of the AUC difference: DeLong {speed.delong_sd:.5f}, "
        f"bootstrap {speed.bootstrap_sd:.5f}",
        flush=True,
    )
    report(
        f"DeLong test on {speed.n_pairs:,} pairs, s",
        f"{speed.delong_s:.4f}",
        "< 1",
        speed.delong_s < 1.0,
    )
    report(
        f"bootstrap ({speed.n_boot:,} resamples) / DeLong time",
        f"{speed.bootstrap_s / speed.delong_s:.0f}",
        "none",
        None,
    )

    # --- 2. Ray Train vs bare loop
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ray_rate, bare_rate, threads = ray_vs_bare(
            Path(tmp), 3 if args.quick else 5, 16 if args.quick else 40
        )
    print(
        f"CM training (8 x 32 x 16 clips, {threads} torch threads): Ray Train 1 worker "
        f"{ray_rate:.1f} clips/s, bare loop {bare_rate:.1f} clips/s",
        flush=True,
    )
    report("CM training clips/s, Ray Train / bare", f"{ray_rate / bare_rate:.2f}", ">= 0.85",
           ray_rate / bare_rate >= 0.85)  # fmt: skip

    # --- 3. mixed precision on a GPU
    if torch.cuda.is_available():
        fp32, amp = amp_clip_rates()
        print(f"R(2+1)D training, 16 x 256 x 128 clips: fp32 {fp32:.1f}, bf16 {amp:.1f} clips/s")
        report("R(2+1)D clips/s, bf16 / fp32", f"{amp / fp32:.2f}", "none", None)
    else:
        print("no GPU: mixed-precision clips/s skipped", flush=True)

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    width = max(len(row[0]) for row in summary)
    print(f"\n{'figure':<{width}}  {'value':>8}  {'target':<6}  result")
    for name, value, target, result in summary:
        print(f"{name:<{width}}  {value:>8}  {target:<6}  {result}")
    if failures:
        print(f"missed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
