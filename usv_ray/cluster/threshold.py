"""Threshold clustering of a patient's tracklet embeddings into nodules (compiled, numba).

Two tracklets are *linked* when the cosine distance ``d = 1 - cos`` of their embeddings is
within the threshold ``tau``. Two ways to turn links into clusters live here:

``algorithm1`` is Algorithm 1 of the re-ID paper, as written there: pick a random
unassigned embedding as the seed of a new cluster, then scan the other unassigned ones
*once, in their input order*, adding each that lies within ``tau`` (strictly, ``d < tau``)
of any member the cluster has at that moment; repeat until every embedding is assigned.

``closure`` is its order-independent variant: the connected components of the graph
``d <= tau`` (the transitive closure of the links). It is exactly DBSCAN with
``min_samples=1`` and ``eps=tau`` on the cosine metric, and single-linkage clustering cut
at ``tau``.

How they differ:

- Every Algorithm 1 cluster is connected by links, so it lies inside one closure
  component: Algorithm 1's partition refines the closure's (ties ``d == tau`` aside).
- Algorithm 1 can split a chain that the closure merges. With ``a - b - c`` linked
  (``d(a, b)`` and ``d(b, c)`` below ``tau``, ``d(a, c)`` above) and the input order
  ``a, c, b``, the seed ``a`` scans ``c`` (no link to ``{a}``: left out), then ``b``
  (joins): clusters ``{a, b}`` and ``{c}``. The seed ``b`` gives ``{a, b, c}``, the seed
  ``c`` gives ``{b, c}`` and ``{a}``. The closure always gives ``{a, b, c}``.
- So Algorithm 1 depends on the seed and on the input order, the closure on neither. When
  every nodule's tracklets are pairwise within ``tau`` and no link crosses nodules, both
  find exactly the nodules, whatever the seed.
- The closure is the more exposed to chaining: one tracklet between two nodules (a
  transition clip) joins them into one cluster; Algorithm 1 merges them only when its
  scan happens to reach the bridge before the other nodule's tracklets. Use the closure
  where results must be reproducible and independent of the order the archive delivers
  tracklets in (the nightly index); use ``algorithm1`` to reproduce the paper.

How they are computed. Both give exactly what testing every pair would (the tests check
this against a literal transcription of the paper's loop, DBSCAN and a dense reference),
but compute few of the pairs: a patient's tracklets form a few tight nodules, and most
pairs lie in different ones. Computing all ``n^2`` distances (one matmul) is too slow for
the 20x-over-DBSCAN target: at 200 tracklets of 512 the product alone takes a sixth of
DBSCAN's whole call. So the loops are compiled (numba) and skip pairs:

- *Pivots.* Each cluster seed's cosines to the then-unassigned embeddings are computed
  exactly (one row of dot products); up to ``PIVOTS`` seeds (the first ones; in Algorithm
  1 the latest) also keep the angles ``theta = arccos(cos)`` of that row. Angles between
  unit vectors obey the triangle inequality, so ``|theta(i, p) - theta(j, p)|`` for any
  pivot ``p`` is a lower bound on the angle between ``i`` and ``j``: above
  ``arccos(1 - tau)`` the pair is not linked and its dot product is never computed. Whole
  groups are ruled out at once by the range of their members' angles to each pivot.
- *Closure.* In input order, each not-yet-grouped embedding becomes a leader and takes
  every ungrouped one it links to: a leader's group is connected (a star), so links
  within a group are never needed. Groups are then merged (union-find) where some pair
  across them links; only the pairs the pivot bounds cannot rule out are computed.
- *Algorithm 1.* Each round's seed row gives its direct links; an embedding it does not
  link to is compared, in the paper's one pass, with the current members, skipping every
  member (or the whole cluster) the bounds rule out.
- *Exactness.* The bound holds for exact angles; computed ones carry rounding, and the
  arccos is a polynomial within ``ANGLE_ERROR``. The cut is widened by
  ``3 * sqrt(2 * D * eps)`` (float32, ``D`` 512: 0.033 rad) to cover the dot product's
  error (at most about ``D * eps`` in the cosine, ``sqrt(2 * error)`` in its arccos near
  0), and by twice ``ANGLE_ERROR``: a pair near the cut is computed, not guessed. A pair's
  link is decided by the same dot product whichever element comes first.

On well-separated nodules a patient's ``n`` tracklets in ``k`` nodules cost about ``n k``
dot products instead of ``n^2 / 2``; when nodules overlap the bounds decide less, and at
worst (no pair ruled out) each pair is computed once or twice. Memory is ``O(n)`` per
patient beyond the embeddings (the ``n x PIVOTS`` angles), so a patient with tens of
thousands of tracklets fits, if slowly. The loops run on one core (a Ray task's CPU); the
first call of a process loads them from numba's disk cache (``__pycache__``) or compiles
them (a few seconds); where no cache location is writable, each process compiles them.

The seed choice: each round's seed is the unassigned embedding with the highest of the
priorities ``rng.random(n)`` drawn once up front, which is a uniformly random choice among
the unassigned ones in every round, as the paper asks. The closure needs no randomness;
its clusters are numbered by their smallest member index.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
from numba import njit

__all__ = ["METHODS", "ClusterMethod", "algorithm1", "closure", "cluster_patients"]

ClusterMethod = Literal["closure", "algorithm1"]
METHODS: tuple[str, ...] = get_args(ClusterMethod)

# Seeds whose angles bound the others' distances (memory: n x PIVOTS float64 per patient).
PIVOTS = 32
# Rows gathered per call of the compiled loop over patients: 32,768 x 512 float32 is 64 MiB.
ROWS_PER_BATCH = 32_768
# The largest error of `_angle` (radians; 6.8e-5, checked by the tests).
ANGLE_ERROR = 7e-5
# reassoc lets the dot product's sum run in SIMD lanes; NaN and inf keep their meaning.
_FAST = {"reassoc", "contract"}


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite cosine distance >= 0, got {tau}")
    return tau


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``(N, D)`` C-contiguous float32 or float64 embeddings (float16 and ints promoted);
    ValueError naming the problem."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be (N, D) with D >= 1, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"embeddings must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.result_type(x.dtype, np.float32))


def _inverse_norms(x: np.ndarray) -> np.ndarray:
    """``(N,)`` 1 / L2 norm of each row of ``x`` ``(N, D)``, in its dtype; ValueError for a
    zero or non-finite row, whose cosine distance is undefined."""
    squared = _squared_norms(x)  # (N,)
    if squared.size and not (squared.min() > 0 and squared.max() < np.inf):  # NaN fails too
        bad = int((~(squared > 0) | ~np.isfinite(squared)).sum())
        raise ValueError(
            f"{bad} embedding(s) have a zero or non-finite norm: "
            "the cosine distance is undefined for them"
        )
    return 1.0 / np.sqrt(squared)


def _cuts(x: np.ndarray, tau: float) -> tuple[np.floating, float]:
    """(the cosine a link reaches, ``1 - tau`` in the embeddings' dtype; the angle beyond
    which a pivot bound rules a pair out: ``arccos(1 - tau)`` plus the rounding margin and
    the error of the two computed angles in a bound)."""
    rounding = 3.0 * math.sqrt(2.0 * x.shape[1] * float(np.finfo(x.dtype).eps))
    margin = rounding + 2 * ANGLE_ERROR
    return x.dtype.type(1.0 - tau), math.acos(max(-1.0, 1.0 - tau)) + margin


def _compiled(**options):
    """``numba.njit(**options)`` with numba's disk cache where it finds a writable place
    (``__pycache__``, ``NUMBA_CACHE_DIR`` or the user's cache directory); without one, as in
    a read-only install run by an account with no home, numba refuses ``cache=True`` at
    import, so compile once per process instead."""

    def decorate(function):
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)

    return decorate


@njit(inline="always", fastmath=_FAST)
def _dot(x, i, j):
    """Dot product of rows ``i`` and ``j``: the same value whichever comes first."""
    dot = x[i, 0] * x[j, 0]
    for d in range(1, x.shape[1]):
        dot += x[i, d] * x[j, d]
    return dot


@njit(inline="always", fastmath=_FAST)
def _cos(x, inv, i, j):
    return _dot(x, i, j) * (inv[i] * inv[j])


@_compiled(fastmath=_FAST)
def _squared_norms(x):
    squared = np.empty(x.shape[0], x.dtype)
    for i in range(x.shape[0]):
        squared[i] = _dot(x, i, i)
    return squared


@njit(inline="always")
def _angle(cos):
    """``arccos(cos)`` within ``ANGLE_ERROR`` (Abramowitz and Stegun 4.4.45). In place of
    ``math.acos`` it cut the closure of 200 tracklets (benchmarks/index.py) from 48 to 33 us."""
    a = min(1.0, abs(cos))
    t = math.sqrt(1.0 - a) * (1.5707288 + a * (-0.2121144 + a * (0.0742610 + a * -0.0187293)))
    return t if cos >= 0 else math.pi - t


@njit(inline="always")
def _apart(low_a, high_a, low_b, high_b, pivots, cut):
    """Whether, for one of the first ``pivots`` pivots, the angle ranges ``[low_a, high_a]``
    and ``[low_b, high_b]`` (rows of angles to the pivots) lie more than ``cut`` apart: no
    pair across them links (see the module docstring). A row's own range is its angles."""
    for p in range(pivots):  # noqa: SIM110 (numba compiles no any() over a generator)
        if low_a[p] - high_b[p] > cut or low_b[p] - high_a[p] > cut:
            return True
    return False


@njit(inline="always")
def _root(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]  # path halving
        a = parent[a]
    return a


@_compiled(fastmath=_FAST)
def _closure(x, inv, link, cut):
    """``(n,)`` closure labels of one patient's rows ``x`` ``(n, D)`` (1 / norms ``inv``):
    cosine ``>= link``; angle bounds beyond ``cut`` rule pairs out."""
    n = x.shape[0]
    group = np.full(n, -1, np.int64)  # the leader group that took each row
    theta = np.empty((n, PIVOTS))  # [j, g]: angle to leader g (g < PIVOTS), rows ungrouped then
    k = 0
    for i in range(n):  # leaders in input order, each taking the ungrouped rows it links to
        if group[i] >= 0:
            continue
        group[i] = k
        pivot = k < PIVOTS
        if pivot:
            theta[i, k] = 0.0
        for j in range(i + 1, n):
            if group[j] < 0:
                cos = _cos(x, inv, i, j)
                if pivot:
                    theta[j, k] = _angle(cos)
                if cos >= link:
                    group[j] = k
        k += 1

    # members of each group, contiguous: group g's rows are members[starts[g]:starts[g + 1]]
    starts = np.zeros(k + 1, np.int64)
    for i in range(n):
        starts[group[i] + 1] += 1
    starts = np.cumsum(starts)
    members = np.empty(n, np.int64)
    filled = starts[:-1].copy()
    for i in range(n):
        members[filled[group[i]]] = i
        filled[group[i]] += 1
    # each group's range of angles to the pivots its rows all know: the leaders up to its own
    pivots = min(k, PIVOTS)
    low = np.full((k, pivots), np.inf)
    high = np.full((k, pivots), -np.inf)
    for i in range(n):
        for p in range(min(group[i] + 1, pivots)):
            low[group[i], p] = min(low[group[i], p], theta[i, p])
            high[group[i], p] = max(high[group[i], p], theta[i, p])

    # Merge two groups where a pair across them links. A group's first member is its leader,
    # whose row already tested (and did not link) every row of the later groups.
    parent = np.arange(k)
    for g in range(k):
        if starts[g + 1] - starts[g] == 1:
            continue
        for h in range(g + 1, k):
            if _root(parent, g) == _root(parent, h):
                continue
            shared = min(g + 1, pivots)  # rows of h know leader g's angles, rows of g not h's
            if _apart(low[g], high[g], low[h], high[h], shared, cut):
                continue
            linked = False
            for a in range(starts[g] + 1, starts[g + 1]):
                for b in range(starts[h], starts[h + 1]):
                    i, j = members[a], members[b]
                    angles_i, angles_j = theta[i], theta[j]
                    if not _apart(angles_i, angles_i, angles_j, angles_j, shared, cut) and (
                        _cos(x, inv, i, j) >= link
                    ):
                        linked = True
                        break
                if linked:
                    break
            if linked:
                first, second = _root(parent, g), _root(parent, h)
                parent[max(first, second)] = min(first, second)

    labels = np.empty(n, np.int64)
    number = np.full(k, -1, np.int64)  # label of each root, in order of first member
    count = 0
    for i in range(n):
        root = _root(parent, group[i])
        if number[root] < 0:
            number[root] = count
            count += 1
        labels[i] = number[root]
    return labels


@_compiled(fastmath=_FAST)
def _algorithm1(x, inv, link, cut, priority):
    """``(n,)`` Algorithm 1 labels of one patient's rows (cosine ``> link``), seeds in
    decreasing ``priority`` ``(n,)``, clusters numbered in the order they start."""
    n = x.shape[0]
    labels = np.full(n, -1, np.int64)
    theta = np.empty((n, PIVOTS))  # [j, p]: angle to pivot p, for rows unassigned then
    seed_cos = np.empty(n, x.dtype)
    members = np.empty(n, np.int64)
    low = np.empty(PIVOTS)  # the current cluster's range of angles to each pivot
    high = np.empty(PIVOTS)
    pivots = 0
    cluster = 0
    for s in np.argsort(-priority, kind="mergesort"):  # ties: the first row, like argmax
        if labels[s] >= 0:
            continue
        # the seed becomes a pivot; past PIVOTS it replaces the last one, whose angles only
        # rows that are assigned by now would still need
        column = min(pivots, PIVOTS - 1)
        pivots = min(pivots + 1, PIVOTS)
        for j in range(n):
            if labels[j] < 0:
                seed_cos[j] = _cos(x, inv, s, j)
                theta[j, column] = _angle(seed_cos[j])
        theta[s, column] = 0.0
        labels[s] = cluster
        members[0] = s
        size = 1
        for p in range(pivots):
            low[p] = high[p] = theta[s, p]
        for j in range(n):  # the paper's one pass, in input order
            if labels[j] >= 0:
                continue
            joins = seed_cos[j] > link
            angles_j = theta[j]
            if not joins and not _apart(angles_j, angles_j, low, high, pivots, cut):
                for a in range(1, size):
                    m = members[a]
                    angles_m = theta[m]
                    if not _apart(angles_m, angles_m, angles_j, angles_j, pivots, cut) and (
                        _cos(x, inv, m, j) > link
                    ):
                        joins = True
                        break
            if joins:
                labels[j] = cluster
                members[size] = j
                size += 1
                for p in range(pivots):
                    low[p] = min(low[p], theta[j, p])
                    high[p] = max(high[p], theta[j, p])
        cluster += 1
    return labels


@_compiled()
def _patients(x, inv, bounds, link, cut, paper, priority):
    """``(N,)`` labels of the patients whose rows are ``x[bounds[p]:bounds[p + 1]]``:
    ``_algorithm1`` (``paper``) or ``_closure`` on each."""
    labels = np.empty(x.shape[0], np.int64)
    for p in range(bounds.size - 1):
        rows = slice(bounds[p], bounds[p + 1])
        if paper:
            labels[rows] = _algorithm1(x[rows], inv[rows], link, cut, priority[rows])
        else:
            labels[rows] = _closure(x[rows], inv[rows], link, cut)
    return labels


def closure(embeddings: np.ndarray, tau: float) -> np.ndarray:
    """Connected components of the graph "cosine distance <= ``tau``" of one patient.

    Args:
        embeddings: ``(N, D)`` tracklet embeddings (normalised here; need not be unit).
        tau: cosine-distance threshold, >= 0.

    Returns:
        ``(N,)`` int64 labels 0..k-1, numbered by each cluster's smallest member index, so
        the same input gives the same labels and a permuted input the same partition.

    Raises:
        ValueError: embeddings not ``(N, D)`` numeric, a zero or non-finite row, or a
        negative or non-finite ``tau``.
    """
    x = _check_embeddings(embeddings)
    tau = _check_tau(tau)
    return _closure(x, _inverse_norms(x), *_cuts(x, tau))


def algorithm1(embeddings: np.ndarray, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Algorithm 1 of the re-ID paper on one patient's embeddings (see the module docstring).

    A random unassigned embedding seeds a cluster; one pass over the other unassigned ones
    in input order adds each whose cosine distance to a current member is ``< tau``;
    repeat until all are assigned.

    Args:
        embeddings: ``(N, D)`` tracklet embeddings (normalised here; need not be unit).
        tau: cosine-distance threshold, >= 0.
        rng: draws the seed order: exactly one ``rng.random(N)`` call (none when N is 0);
            each round's seed is the unassigned embedding with the highest of these.

    Returns:
        ``(N,)`` int64 labels 0..k-1 in the order the clusters were started.

    Raises:
        ValueError: as :func:`closure`.
    """
    x = _check_embeddings(embeddings)
    tau = _check_tau(tau)
    return _algorithm1(x, _inverse_norms(x), *_cuts(x, tau), rng.random(x.shape[0]))


def cluster_patients(
    embeddings: np.ndarray,
    patients: np.ndarray,
    tau: float,
    method: ClusterMethod = "closure",
    seed: int = 0,
) -> np.ndarray:
    """Cluster every patient's embeddings at once; labels are per patient.

    Rows are sorted by patient and gathered in batches of about ``ROWS_PER_BATCH``; one
    compiled call clusters a whole batch, so there is no Python work per patient.

    Args:
        embeddings: ``(N, D)`` tracklet embeddings, any row order.
        patients: ``(N,)`` patient of each row (group codes, or keys such as ``patient_key``
            strings); missing values are an error.
        tau: cosine-distance threshold, >= 0.
        method: ``"closure"`` (order-independent, the default) or ``"algorithm1"``.
        seed: seed of ``algorithm1``'s seed order (unused by the closure). The result equals
            calling ``algorithm1`` on each patient's rows (in input order), patients in sorted
            order, all with one ``np.random.default_rng(seed)``.

    Returns:
        ``(N,)`` int64 labels 0..k_p-1 within each patient ``p`` (equal to
        ``closure``/``algorithm1`` on that patient's rows alone); compare labels only
        within a patient.

    Raises:
        ValueError: a bad ``method``, ``tau`` or embedding, mismatched lengths, or a missing
            patient.
    """
    import pandas as pd

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = _check_embeddings(embeddings)
    tau = _check_tau(tau)
    patients = np.asarray(patients)
    if patients.shape != (x.shape[0],):
        raise ValueError(
            f"patients must be (N,) = ({x.shape[0]},) like the embeddings, got {patients.shape}"
        )
    labels = np.zeros(x.shape[0], dtype=np.int64)
    if x.shape[0] == 0:
        return labels
    codes, _ = pd.factorize(patients, sort=True)  # (N,) 0..P-1 in sorted patient order
    if (codes < 0).any():
        raise ValueError(f"{int((codes < 0).sum())} rows have no patient")
    order = np.argsort(codes, kind="stable")  # (N,) rows by patient, input order within
    # Algorithm 1: one draw in patient order = one rng.random(n_p) per patient in turn (PCG64
    # doubles come one per 64-bit output), so each patient sees what algorithm1 would draw.
    # The closure reads no priority: an empty one, whose slices are empty too.
    priority = np.random.default_rng(seed).random(x.shape[0] if method == "algorithm1" else 0)

    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes))])  # (P + 1,) in `order`
    link, cut = _cuts(x, tau)
    first = 0  # patients in batches of about ROWS_PER_BATCH rows (a bigger patient alone)
    while first < bounds.size - 1:
        last = max(first + 1, np.searchsorted(bounds, bounds[first] + ROWS_PER_BATCH, "right") - 1)
        positions = slice(bounds[first], bounds[last])
        rows = order[positions]
        batch = x[rows]  # (n, D), contiguous
        labels[rows] = _patients(
            batch,
            _inverse_norms(batch),
            bounds[first : last + 1] - bounds[first],
            link,
            cut,
            method == "algorithm1",
            priority[positions],
        )
        first = last
    return labels
