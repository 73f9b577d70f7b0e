"""The re-ID paper's clustering comparison (its Table 4) on this data.

Five methods cluster each patient's tracklet embeddings on its own: Algorithm 1 and the
closure (``usv_ray.cluster.threshold``), and scikit-learn's DBSCAN (``min_samples=1``,
cosine metric), MeanShift and AffinityPropagation. Each is tuned on the validation patients
for the pairwise F-score over a small grid of its one parameter, then scored on the test
patients with the chosen value: pairwise precision, recall and F-score (percent,
``usv_ray.cluster.metrics``) and the wall time of clustering the test set. Every method,
the threshold ones included, runs one patient at a time and on one thread, so the times
compare like with like (``cluster_patients``, which batches patients, is faster still).
Grids: ``TAU_GRID`` (the tau sweep's) for ``tau`` and ``eps``, ``BANDWIDTH_GRID``,
``PREFERENCE_GRID`` (with damping fixed at ``AFFINITY_DAMPING``).

Embeddings are L2-normalised first, so every method sees the cosine geometry: DBSCAN's
``eps`` and the threshold methods' ``tau`` are cosine distances; MeanShift's bandwidth is a
Euclidean radius, and AffinityPropagation's similarity the negative squared Euclidean
distance, which on unit vectors are ``sqrt(2 d)`` and ``-2 d`` for a cosine distance ``d``.
DBSCAN with ``min_samples=1`` is the closure (see ``threshold``): the two rows differ only
in time (and, in principle, in how a distance within rounding of ``tau`` is decided).

Edge cases: a patient with one tracklet is one cluster for every method (no model is fit).
AffinityPropagation warns and picks arbitrary exemplars when all similarities are equal (1
or 2 tracklets): that warning is expected and silenced. When it does not converge,
scikit-learn labels every sample -1; that patient then counts as all singletons, and the
table's ``not_converged`` column says on how many test patients it happened.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from usv_ray.cluster.metrics import pairwise_scores
from usv_ray.cluster.threshold import algorithm1, closure
from usv_ray.config import TuneConfig
from usv_ray.evaluate.metrics import MetricWarning

__all__ = [
    "BANDWIDTH_GRID",
    "CANDIDATES",
    "PREFERENCE_GRID",
    "TABLE_COLUMNS",
    "TAU_GRID",
    "Candidate",
    "best_on_grid",
    "clustering_table",
]

TABLE_COLUMNS = (
    "method",
    "parameter",
    "value",  # the value chosen on the validation patients
    "val_f_score",  # its pairwise F-score there, percent
    "precision",  # test, percent
    "recall",
    "f_score",
    "time_ms",  # wall time to cluster every test patient, one patient at a time
    "not_converged",  # test patients where the method did not converge (all singletons)
)


# the tau sweep's grid (usv_ray.config.TuneConfig.tau): 0.001 to 0.81, geometric
TAU_GRID: tuple[float, ...] = TuneConfig().tau
# Euclidean radius on unit vectors: sqrt(2 * 0.03) ~ 0.25 to sqrt(2 * 1.1) ~ 1.5
BANDWIDTH_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
# Similarity -|a - b|^2 = -2 d lies in [-4, 0]; a lower preference gives fewer clusters.
PREFERENCE_GRID: tuple[float, ...] = (-0.25, -0.5, -1.0, -1.5, -2.0, -3.0)
AFFINITY_DAMPING = 0.9  # slower but more often convergent than sklearn's 0.5
AFFINITY_MAX_ITER = 1000


def best_on_grid(scores: Sequence[float]) -> int:
    """The index of the best of ``scores``, one per value of a sorted grid (NaN ranks last).

    On a tie, the middle of the tied values (the lower of two middles): on a plateau of
    equal validation scores, its centre rather than an edge, where a small validation set
    says least about what lies just beyond. With the geometric ``TAU_GRID`` that is the
    plateau's centre on a log scale.
    """
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    ties = np.flatnonzero(values == values.max())
    return int(ties[(len(ties) - 1) // 2])


class _NotConverged(Exception):
    """A per-patient clustering did not converge."""


# A per-patient clustering: (unit embeddings (n, D), parameter value, rng) -> labels (n,)
ClusterFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _dbscan(x: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=1, metric="cosine").fit_predict(x)


def _mean_shift(x: np.ndarray, bandwidth: float, rng: np.random.Generator) -> np.ndarray:
    from sklearn.cluster import MeanShift

    # every sample seeds (no binning), so each seed starts with itself inside the bandwidth
    return MeanShift(bandwidth=bandwidth).fit_predict(x)


def _affinity_propagation(x: np.ndarray, preference: float, rng: np.random.Generator) -> np.ndarray:
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning

    model = AffinityPropagation(
        preference=preference,
        damping=AFFINITY_DAMPING,
        max_iter=AFFINITY_MAX_ITER,
        random_state=int(rng.integers(2**31)),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All samples have mutually equal similarities")
        warnings.filterwarnings("error", category=ConvergenceWarning)
        try:
            labels = model.fit_predict(x)
        except ConvergenceWarning as warning:
            raise _NotConverged from warning
    if (labels < 0).any():
        raise _NotConverged
    return labels


def _algorithm1(x: np.ndarray, tau: float, rng: np.random.Generator) -> np.ndarray:
    return algorithm1(x, tau, rng)


def _closure(x: np.ndarray, tau: float, rng: np.random.Generator) -> np.ndarray:
    return closure(x, tau)


@dataclass(frozen=True)
class Candidate:
    """One method of the comparison: its per-patient clustering and its tuning grid."""

    name: str  # as in the table
    parameter: str  # the tuned parameter's name
    grid: tuple[float, ...]  # values tried on the validation patients, in order
    cluster: ClusterFn


# The paper's row order, then the closure.
CANDIDATES: dict[str, Candidate] = {
    candidate.name: candidate
    for candidate in (
        Candidate("DBSCAN", "eps", TAU_GRID, _dbscan),
        Candidate("MeanShift", "bandwidth", BANDWIDTH_GRID, _mean_shift),
        Candidate("AffinityPropagation", "preference", PREFERENCE_GRID, _affinity_propagation),
        Candidate("Algorithm 1", "tau", TAU_GRID, _algorithm1),
        Candidate("Closure", "tau", TAU_GRID, _closure),
    )
}


def _cluster_each(
    unit: np.ndarray,
    patient_rows: Sequence[np.ndarray],
    cluster: ClusterFn,
    value: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """``(labels (N,), not_converged)``: ``cluster`` on each patient's rows in turn; labels
    are per patient, rows of other patients stay 0. A patient that does not converge gets
    one cluster per tracklet."""
    labels = np.zeros(unit.shape[0], dtype=np.int64)
    failed = 0
    for rows in patient_rows:
        if rows.size == 1:
            continue  # one tracklet: one cluster, for every method
        try:
            labels[rows] = cluster(unit[rows], value, rng)
        except _NotConverged:
            labels[rows] = np.arange(rows.size)
            failed += 1
    return labels, failed


def _rows_by_patient(patients: np.ndarray, selected: np.ndarray) -> list[np.ndarray]:
    """Row indices of each patient among the ``selected`` rows, patients in sorted order."""
    rows = np.flatnonzero(selected)
    codes, _ = pd.factorize(patients[rows], sort=True)
    order = np.argsort(codes, kind="stable")
    return np.split(rows[order], np.flatnonzero(np.diff(codes[order])) + 1)


def _quiet_f_score(truth: np.ndarray, pred: np.ndarray, patients: np.ndarray) -> float:
    """Pairwise F-score (NaN without any pair), without the NaN warning: a tuning step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return pairwise_scores(truth, pred, patients).f_score


def clustering_table(
    embeddings: np.ndarray,
    patients: np.ndarray,
    nodule_ids: np.ndarray,
    splits: np.ndarray,
    *,
    methods: Sequence[str] = tuple(CANDIDATES),
    grids: Mapping[str, Sequence[float]] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's Table 4 for this data: each method tuned on "val", scored on "test".

    Args:
        embeddings: ``(N, D)`` tracklet embeddings (L2-normalised here).
        patients: ``(N,)`` patient of each tracklet (``patient_key``).
        nodule_ids: ``(N,)`` true nodule of each tracklet (unique within a patient is
            enough); must be known on the val and test rows.
        splits: ``(N,)`` ``"val"``, ``"test"`` or anything else (e.g. ``"train"``: unused).
        methods: names from ``CANDIDATES``, in the table's row order.
        grids: a grid per method name to replace its default (``Candidate.grid``).
        seed: seeds Algorithm 1's seed order and AffinityPropagation's ``random_state``;
            every (method, value) run starts from ``np.random.default_rng(seed)``.

    Returns:
        One row per method with ``TABLE_COLUMNS``: the value with the best validation
        F-score (the first of equals, in grid order), then test precision, recall and
        F-score in percent (NaN where undefined), the milliseconds to cluster the test
        patients one by one with that value, and the test patients that did not converge.
        Write it with ``usv_ray.evaluate.tables.write_table``.

    Raises:
        ValueError: mismatched shapes, no val or no test rows, a missing nodule id or
            patient on them, an unknown method, or an empty grid.
    """
    unit = np.asarray(embeddings, dtype=np.float64)
    if unit.ndim != 2 or unit.shape[1] == 0:
        raise ValueError(f"embeddings must be (N, D), got shape {unit.shape}")
    patients, nodule_ids, splits = (np.asarray(a) for a in (patients, nodule_ids, splits))
    n_rows = unit.shape[0]
    for name, array in (("patients", patients), ("nodule_ids", nodule_ids), ("splits", splits)):
        if array.shape != (n_rows,):
            raise ValueError(f"{name} must be ({n_rows},) like the embeddings, got {array.shape}")
    norms = np.linalg.norm(unit, axis=1, keepdims=True)  # (N, 1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("every embedding needs a finite, non-zero norm")
    unit = unit / norms
    unknown = [name for name in methods if name not in CANDIDATES]
    unknown += [name for name in (grids or {}) if name not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {list(CANDIDATES)}")

    rows_of: dict[str, list[np.ndarray]] = {}
    for split in ("val", "test"):
        selected = splits == split
        if not selected.any():
            raise ValueError(f"no {split!r} rows: the comparison tunes on val and scores on test")
        if pd.isna(nodule_ids[selected]).any() or pd.isna(patients[selected]).any():
            raise ValueError(f"{split!r} rows need a nodule id and a patient on every row")
        rows_of[split] = _rows_by_patient(patients, selected)

    from threadpoolctl import threadpool_limits

    # A patient's few tracklets are tiny problems: BLAS/OpenMP threads only add start-up and
    # barrier costs (tens of ms per sklearn call on a busy machine), so every method runs on
    # one thread, the set-up of a one-CPU Ray worker.
    with threadpool_limits(limits=1):
        table = [
            _tune_and_score(
                CANDIDATES[name],
                (grids or {}).get(name),
                unit,
                patients,
                nodule_ids,
                rows_of,
                seed,
            )
            for name in methods
        ]
    return pd.DataFrame(table, columns=list(TABLE_COLUMNS)).astype({"not_converged": np.int64})


def _tune_and_score(
    candidate: Candidate,
    grid: Sequence[float] | None,
    unit: np.ndarray,
    patients: np.ndarray,
    nodule_ids: np.ndarray,
    rows_of: Mapping[str, list[np.ndarray]],
    seed: int,
) -> dict[str, object]:
    """One row of ``clustering_table``: ``candidate`` tuned on val, scored on test."""
    val = np.concatenate(rows_of["val"])
    test = np.concatenate(rows_of["test"])
    grid = tuple(float(v) for v in (candidate.grid if grid is None else grid))
    if not grid:
        raise ValueError(f"the grid of {candidate.name} is empty")
    val_f = []
    for value in grid:
        labels, _ = _cluster_each(
            unit, rows_of["val"], candidate.cluster, value, np.random.default_rng(seed)
        )
        val_f.append(_quiet_f_score(nodule_ids[val], labels[val], patients[val]))
    best = best_on_grid(val_f)  # NaN (no pairs at all) ranks last

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    labels, failed = _cluster_each(unit, rows_of["test"], candidate.cluster, grid[best], rng)
    elapsed = time.perf_counter() - started
    scores = pairwise_scores(nodule_ids[test], labels[test], patients[test])
    return {
        "method": candidate.name,
        "parameter": candidate.parameter,
        "value": grid[best],
        "val_f_score": 100.0 * val_f[best],
        "precision": 100.0 * scores.precision,
        "recall": 100.0 * scores.recall,
        "f_score": 100.0 * scores.f_score,
        "time_ms": 1000.0 * elapsed,
        "not_converged": failed,
    }
