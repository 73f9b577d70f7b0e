"""Nodule index speed, measured in one run, one section per target.

1. per patient: clustering one patient's tracklet embeddings with ``closure`` and with
   ``algorithm1`` vs scikit-learn's DBSCAN (``min_samples=1``, cosine metric, ``eps=tau``:
   the same partition as the closure) on the same embeddings, for 5 and for 200
   tracklets per patient. Target: at least 20x faster than DBSCAN.
2. all patients: ``cluster_patients`` on 1,000,000 synthetic 512-d float32 embeddings
   spread over 200,000 patients, closure (the index's default) and Algorithm 1. Target:
   under 60 s each, on 2 cores.
3. embedding: the index's Ray Data job (``ShardEmbedder`` on one actor of 1 CPU)
   vs a bare PyTorch loop (torch on 1 thread) over the same 512 tracklet clips (128 files
   of 4, one per video as ingest writes them) with the same untrained R(2+1)D model,
   tracklets/s after each one's first batch (the throughput; target: ratio at least 0.8),
   and over the whole job, start-up counted (printed: Ray's actor start-up, ~25 s here, is
   a fixed cost that a nightly run over a real archive amortises and a 512-tracklet
   benchmark does not). Where CUDA is available it also compares the two on the GPU
   (an actor of 1 GPU vs the loop on the GPU, 16x the clips in batches of 128; no target).

Embeddings are realistic in shape: each patient has 1-3 nodules (2 for 5 tracklets, 6 for
200 tracklets in section 1), each tracklet a unit nodule centre plus Gaussian noise, so
same-nodule cosine distances are about 0.15 and different-nodule ones about 1 (tau 0.35).
Section 1 also times the clustering's worst case, printed without a target: 200 tracklets
drawn from 200 nodules (about 136 clusters), random directions whose pivot bounds rule
out almost no pair, so the compiled loops compute nearly every pair (see
``usv_ray.cluster.threshold``).

Section 1 runs every method on one thread (threadpoolctl), the set-up of a one-CPU Ray
worker: on a patient's few tracklets BLAS/OpenMP threads only add start-up and barrier
costs, which hit sklearn's OpenMP neighbour search hardest on a busy machine and would
flatter the ratio. Timings alternate between the methods in rounds and keep each method's
best round (the least disturbed by other work on a shared machine).

Sections are functions in ``SECTIONS``, each returning its ``Figure`` rows; ``main`` runs
them in order (or those named with ``--sections``), prints a summary table and exits
non-zero when a target is missed. ``--sections embedding-gpu`` runs the GPU half of section 3
alone (tools/gpu_check.sh); it is not among the default sections.

Run: ``.venv/bin/python benchmarks/index.py`` (about 4 minutes on 2 cores: a minute for
sections 1-2, most of it generating the 2 GB of embeddings, 3 for section 3; ``--quick``:
100,000 embeddings, 64 clips and fewer repeats).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy bundles

from common import Figure, Rates, load, rates, summary

from usv_ray.cluster.metrics import pairwise_scores
from usv_ray.cluster.threshold import algorithm1, closure, cluster_patients
from usv_ray.config import RayConfig, ReidConfig
from usv_ray.schemas import EMBEDDING_DIM

TAU = 0.35  # between the ~0.15 same-nodule and ~1 different-nodule cosine distances
NOISE = 0.4  # norm of the noise added to a unit nodule centre


def noisy_unit(centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n, D)`` float32: each unit centre ``(n, D)`` plus noise of norm about ``NOISE``."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32) * np.float32(
        NOISE / np.sqrt(centres.shape[1])
    )
    return (centres + noise).astype(np.float32)


def patient_embeddings(n: int, n_nodules: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, EMBEDDING_DIM)`` float32 tracklet embeddings of one patient with ``n_nodules``
    nodules."""
    centres = rng.standard_normal((n_nodules, EMBEDDING_DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = noisy_unit(centres[rng.integers(n_nodules, size=n)], rng)
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # the re-ID model's output is unit


def per_call_seconds(
    methods: dict[str, Callable[[], object]], calls: int, rounds: int
) -> dict[str, float]:
    """Seconds per call of each method: ``rounds`` rounds, each timing ``calls`` calls of
    every method in turn; each method's best round."""
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(rounds):
        for name, fn in methods.items():
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / calls)
    return best


# -----------------------------------------------------------------------------
# 1. one patient: closure and Algorithm 1 vs DBSCAN


def section_per_patient(args: argparse.Namespace) -> list[Figure]:
    """Per-call time of ``closure``, ``algorithm1`` and DBSCAN on one patient."""
    from sklearn.cluster import DBSCAN
    from threadpoolctl import threadpool_limits

    figures = []
    rng = np.random.default_rng(0)
    # the target's two sizes, then the worst case: 200 tracklets of 200 nodules, random
    # directions that the pivot bounds hardly rule out (printed, no target)
    for n, n_nodules, calls in ((5, 2, 400), (200, 6, 20), (200, 200, 20)):
        x = patient_embeddings(n, n_nodules, rng)
        dbscan = DBSCAN(eps=TAU, min_samples=1, metric="cosine")
        generator = np.random.default_rng(1)
        methods = {
            "DBSCAN": lambda x=x, dbscan=dbscan: dbscan.fit_predict(x),
            "closure": lambda x=x: closure(x, TAU),
            "algorithm1": lambda x=x, g=generator: algorithm1(x, TAU, g),
        }
        with threadpool_limits(limits=1):
            same = dbscan.fit_predict(x)
            ours = closure(x, TAU)
            agree = np.array_equal(same[:, None] == same, ours[:, None] == ours)
            seconds = per_call_seconds(
                methods, max(1, calls // (5 if args.quick else 1)), 3 if args.quick else 7
            )
        print(
            f"{n} tracklets, {n_nodules} nodules, 1 thread: DBSCAN "
            f"{seconds['DBSCAN'] * 1e3:.3f} ms, closure {seconds['closure'] * 1e3:.3f} ms, "
            f"algorithm1 {seconds['algorithm1'] * 1e3:.3f} ms per call "
            f"({ours.max() + 1} clusters; closure and DBSCAN partitions "
            f"{'agree' if agree else 'DIFFER'}; {load()})",
            flush=True,
        )
        worst = n_nodules == n
        for method in ("closure", "algorithm1"):
            ratio = seconds["DBSCAN"] / seconds[method]
            name = f"{n} tracklets{', no structure' if worst else ''}: DBSCAN / {method} time"
            target = "none" if worst else ">= 20"
            figures.append(Figure(name, f"{ratio:.1f}", target, None if worst else ratio >= 20))
    return figures


# -----------------------------------------------------------------------------
# 2. every patient at once


def archive_embeddings(
    n_rows: int, n_patients: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings (N, EMBEDDING_DIM) float32, patients (N,) int64, nodule (N,) int64)`` of a
    synthetic archive: every patient has at least one tracklet (about N / P on average),
    1-3 nodules, rows in random order. Nodule centres come from a pool of 4096 random unit
    vectors (only within-patient distinctness matters; a patient's nodules rarely share
    one), filled in chunks to keep memory at the embeddings' 2 GB."""
    sizes = 1 + np.bincount(
        rng.integers(n_patients, size=n_rows - n_patients), minlength=n_patients
    )
    patients = rng.permutation(np.repeat(np.arange(n_patients), sizes))  # (N,)
    n_nodules = rng.integers(1, 4, size=n_patients)  # (P,)
    nodule = (rng.random(n_rows) * n_nodules[patients]).astype(np.int64)  # (N,)
    pool = rng.standard_normal((4096, EMBEDDING_DIM)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    centre = (patients * 7919 + nodule * 104_729) % len(pool)  # (N,) a pool row per nodule
    embeddings = np.empty((n_rows, EMBEDDING_DIM), dtype=np.float32)
    for first in range(0, n_rows, 65_536):
        rows = slice(first, min(n_rows, first + 65_536))
        embeddings[rows] = noisy_unit(pool[centre[rows]], rng)
    return embeddings, patients, nodule


def section_all_patients(args: argparse.Namespace) -> list[Figure]:
    """Wall time of ``cluster_patients`` over a whole synthetic archive."""
    n_rows, n_patients = (100_000, 20_000) if args.quick else (1_000_000, 200_000)
    started = time.perf_counter()
    embeddings, patients, nodule = archive_embeddings(n_rows, n_patients, np.random.default_rng(2))
    print(
        f"{n_rows:,} x {EMBEDDING_DIM} float32 embeddings "
        f"({embeddings.nbytes / 2**30:.1f} GiB) over "
        f"{n_patients:,} patients (at most {np.bincount(patients).max()} tracklets each) "
        f"generated in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    figures = []
    for method in ("closure", "algorithm1"):
        print(f"cluster_patients, {method}: starting ({load()})", flush=True)
        started = time.perf_counter()
        labels = cluster_patients(embeddings, patients, TAU, method=method)
        seconds = time.perf_counter() - started
        scores = pairwise_scores(nodule, labels, patients)
        print(
            f"cluster_patients, {method}, tau {TAU}: {seconds:.2f} s "
            f"({n_rows / seconds:,.0f} embeddings/s); pairwise precision "
            f"{100 * scores.precision:.2f}, recall {100 * scores.recall:.2f} ({load()})",
            flush=True,
        )
        figures.append(
            Figure(
                f"cluster_patients, {n_rows:,} embeddings, {method}, s",
                f"{seconds:.2f}",
                "< 60",
                seconds < 60,
            )
        )
    return figures


# -----------------------------------------------------------------------------
# 3. embedding throughput: the index's Ray Data job vs a bare loop, 1 CPU


def embedding_rates(
    tmp: Path, n_tracklets: int, gpu: bool = False, batch_size: int = 16
) -> tuple[Rates, Rates]:
    """(Ray Data, bare loop) rates embedding the same clips with the same model on 1 CPU
    (or, with ``gpu``, on the GPU): the index's embedding job (shards read in the actor)
    with one actor of 1 CPU (and 1 GPU), and a bare loop (pyarrow read, the same
    TrackletEmbedder batches, torch on 1 thread; the mean of a run before and one after).
    ``whole`` counts the start-up (Ray's: an actor process that imports torch and
    torchvision, ~10 s here), ``steady`` starts at the first batch out."""
    import pyarrow.parquet as pq
    import ray
    import torch
    from reid import write_tracklets
    from toy_bundle import write_toy_reid_bundle

    from usv_ray.bundle.reid import EMBED_COLUMNS, ShardEmbedder, TrackletEmbedder
    from usv_ray.layout import IngestFolder
    from usv_ray.pool import run_batches

    cfg = ReidConfig(clip_frames=8, clip_height=64, clip_width=32)  # the demo's patch size
    for video in range(n_tracklets // 4):  # one file per video, 4 tracklets each, as ingest
        write_tracklets(tmp, 1, 4, cfg, f"v{video:03d}")
    model = write_toy_reid_bundle(tmp / "reid", clip=(8, 64, 32))
    shards = IngestFolder(tmp).tracklet_shards()

    def bare() -> Rates:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            started = time.perf_counter()
            embedder = TrackletEmbedder(str(model), "CM", batch_size, "cuda" if gpu else "cpu")
            # one chunk, so batches hold batch_size rows and not a file's 4
            table = pq.read_table(shards, columns=EMBED_COLUMNS).combine_chunks()
            first = None
            for batch in table.to_batches(batch_size):
                embedder({c: batch[c].to_numpy(zero_copy_only=False) for c in EMBED_COLUMNS})
                first = first or (time.perf_counter(), batch.num_rows)
            return rates(n_tracklets, started, *first, time.perf_counter())
        finally:
            torch.set_num_threads(threads)

    before = bare()
    # Ray as the index starts it (a local Ray finds the GPU itself); the embedding actor holds
    # 1 CPU, the read tasks need one more
    ray_cfg = RayConfig(num_cpus=2, object_store_mb=256, progress=False)
    try:
        started = time.perf_counter()
        items = [{"shard": shard, "tracklets": ""} for shard in shards]
        kwargs = {"bundle": str(model), "kind": "CM", "batch_size": batch_size}
        first, rows = None, 0
        # the index's embedding job: items of 2 shards (8 tracklets) per batch, as the index
        for batch in run_batches(
            ShardEmbedder, kwargs, items, workers=1, ray=ray_cfg, batch_size=8, gpus=int(gpu)
        ):
            first = first or (time.perf_counter(), batch.num_rows)
            rows += batch.num_rows
        assert rows == n_tracklets, (rows, n_tracklets)
        ray_rates = rates(n_tracklets, started, *first, time.perf_counter())
    finally:
        ray.shutdown()
    after = bare()
    bare_rates = Rates((before.whole + after.whole) / 2, (before.steady + after.steady) / 2)
    return ray_rates, bare_rates


def section_embedding(args: argparse.Namespace) -> list[Figure]:
    """Tracklets/s of the index's Ray Data embedding job vs a bare loop, 1 CPU each; and,
    where there is a GPU, 1 GPU each (no target: the issue's target is on 1 CPU)."""
    import tempfile

    import torch

    n_tracklets = 64 if args.quick else 512
    # a GPU embeds a CPU's whole run in well under a second: more clips, bigger batches
    runs = [] if getattr(args, "gpu_only", False) else [("1 CPU", False, n_tracklets, 16)]
    if torch.cuda.is_available():
        runs.append(("1 GPU", True, 16 * n_tracklets, 128))
    figures = []
    for where, gpu, n, batch_size in runs:
        with tempfile.TemporaryDirectory() as tmp:
            ray_rates, bare_rates = embedding_rates(Path(tmp), n, gpu, batch_size)
        print(
            f"embedding {n} tracklets of 8 x 64 x 32 on {where} (batches of {batch_size}): "
            f"Ray Data {ray_rates.steady:.1f}/s after its first batch ({ray_rates.whole:.1f}/s "
            f"with its start-up), bare loop {bare_rates.steady:.1f}/s "
            f"({bare_rates.whole:.1f}/s) ({load()})",
            flush=True,
        )
        steady = ray_rates.steady / bare_rates.steady
        whole = ray_rates.whole / bare_rates.whole
        target = (">= 0.8", steady >= 0.8) if not gpu else ("none", None)
        figures += [
            Figure(f"embedding on {where}, Ray Data / bare loop", f"{steady:.2f}", *target),
            Figure(f"the same on {where}, start-up counted", f"{whole:.2f}", "none", None),
        ]
    return figures


def section_embedding_gpu(args: argparse.Namespace) -> list[Figure]:
    """The GPU half of ``embedding`` alone (tools/gpu_check.sh), or "no CUDA"."""
    import torch

    if not torch.cuda.is_available():
        return [Figure("embedding on 1 GPU, Ray Data / bare loop", "no CUDA", "none", None)]
    return section_embedding(argparse.Namespace(**{**vars(args), "gpu_only": True}))


SECTIONS: dict[str, Callable[[argparse.Namespace], list[Figure]]] = {
    "per-patient": section_per_patient,
    "all-patients": section_all_patients,
    "embedding": section_embedding,
    "embedding-gpu": section_embedding_gpu,
}
# what runs without --sections: "embedding" already has the GPU run where there is a GPU
DEFAULT_SECTIONS = ["per-patient", "all-patients", "embedding"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="100,000 embeddings, 64 clips, fewer repeats"
    )
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=DEFAULT_SECTIONS, help="run these"
    )
    args = parser.parse_args()
    print(f"{load()} (other work on the machine skews every figure)", flush=True)
    figures: list[Figure] = []
    for name in args.sections:
        print(f"--- {name}", flush=True)
        for figure in SECTIONS[name](args):
            result = "-" if figure.ok is None else ("PASS" if figure.ok else "MISSED")
            print(f"{figure.name}: {figure.value} (target {figure.target}) {result}", flush=True)
            figures.append(figure)

    return summary(figures)


if __name__ == "__main__":
    sys.exit(main())
