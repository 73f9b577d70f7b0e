"""Re-identification evaluation speed, measured in one run.

1. DeLong: the paired DeLong test of two correlated AUCs (``delong_test``) on 100,000
   synthetic pair scores, best of 3, vs a 1,000-resample paired bootstrap of the same AUC
   difference (both AUCs of every resample; resamples stratified by class, as DeLong keeps
   the class sizes fixed). The bootstrap uses ``metrics.roc_auc`` or sklearn's
   ``roc_auc_score``, whichever is faster on these scores (measured first, and printed).
   Target (from the issue): DeLong on 100,000 pairs in well under a second, here < 1 s.

Run: ``.venv/bin/python benchmarks/reid.py`` (about half a minute on 2 cores; ``--quick``:
10,000 pairs and 100 resamples, seconds). Prints one line per figure, a summary table at the
end, and exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 pairs and 100 resamples (seconds)"
    )
    args = parser.parse_args()
    n_pairs, n_boot = (10_000, 100) if args.quick else (100_000, 1000)
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
