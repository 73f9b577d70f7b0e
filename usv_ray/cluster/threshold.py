"""Threshold clustering of a patient's tracklet embeddings into nodules (numpy).

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

Both are vectorised over patients: one patient's ``(n, n)`` distances come from one matmul;
the closure then propagates the smallest member index over the link matrix (with pointer
jumping), Algorithm 1 grows one cluster per round from its seed by boolean propagation (a
Python loop over rounds, one per cluster, never over pairs). ``cluster_patients`` batches
patients of equal tracklet count into ``(B, n, n)`` arrays. A patient's ``n`` tracklets
cost ``O(n^2 D)`` time and ``O(n^2)`` memory (10,000 tracklets: about 0.5 GB), so a single
patient with tens of thousands of tracklets needs another method.

The seed choice: each round's seed is the unassigned embedding with the highest of the
priorities ``rng.random(n)`` drawn once up front, which is a uniformly random choice among
the unassigned ones in every round, as the paper asks. The closure needs no randomness;
its clusters are numbered by their smallest member index.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

__all__ = ["METHODS", "ClusterMethod", "algorithm1", "closure", "cluster_patients"]

ClusterMethod = Literal["closure", "algorithm1"]
METHODS: tuple[str, ...] = get_args(ClusterMethod)

# Embeddings gathered into one batch of equal-size patients: 32,768 x 512 float32 is 64 MiB.
ROWS_PER_BATCH = 32_768


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite cosine distance >= 0, got {tau}")
    return tau


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``(N, D)`` floating embeddings (float16/ints promoted); ValueError naming the problem."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be (N, D) with D >= 1, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"embeddings must be numeric, got dtype {x.dtype}")
    return x.astype(np.result_type(x.dtype, np.float32), copy=False)


def _inverse_norms(x: np.ndarray) -> np.ndarray:
    """``(...)`` 1 / L2 norm of each row of ``x`` ``(..., D)``; ValueError for a zero or
    non-finite row, whose cosine distance is undefined."""
    squared = np.einsum("...d,...d->...", x, x)  # (...)
    if squared.size and not (squared.min() > 0 and squared.max() < np.inf):  # NaN fails too
        bad = int((~(squared > 0) | ~np.isfinite(squared)).sum())
        raise ValueError(
            f"{bad} embedding(s) have a zero or non-finite norm: "
            "the cosine distance is undefined for them"
        )
    return 1.0 / np.sqrt(squared)


def _links(x: np.ndarray, tau: float, *, strict: bool) -> np.ndarray:
    """``(B, n, n)`` bool: cosine distance ``1 - cos`` of two rows of each of the ``B``
    groups of ``x`` ``(B, n, D)`` below ``tau`` (``strict``) or at most ``tau``, taken as
    ``cos > 1 - tau`` (``>=``). Exactly symmetric (a matmul's two triangles may differ in
    the last bit, which would let a tie link ``i`` to ``j`` but not ``j`` to ``i``), and
    True on the diagonal (a tracklet is always with itself, even at ``tau = 0``)."""
    inverse = _inverse_norms(x)  # (B, n)
    cosine = x @ x.transpose(0, 2, 1)  # (B, n, n), before normalising: n^2 not n D divisions
    cosine *= inverse[:, :, None]
    cosine *= inverse[:, None, :]
    cosine = np.minimum(cosine, cosine.transpose(0, 2, 1))
    links = cosine > 1.0 - tau if strict else cosine >= 1.0 - tau
    diagonal = np.arange(x.shape[1])
    links[:, diagonal, diagonal] = True
    return links


def _components(links: np.ndarray) -> np.ndarray:
    """``(B, n)`` int64 connected-component labels of ``B`` graphs with the symmetric
    boolean link matrices ``links`` ``(B, n, n)``, numbered 0..k-1 by smallest member.

    Min-label propagation: every element repeatedly takes the smallest index among itself
    and its links, then jumps to that element's own smallest index (pointer jumping: a
    chain of n links settles in about log2(n) rounds instead of n). At the fixed point each
    element holds its component's smallest index.
    """
    n_groups, n, _ = links.shape
    index = np.arange(n)
    groups = np.arange(n_groups)[:, None]  # (B, 1), to index one element per group
    smallest = np.tile(index, (n_groups, 1))  # (B, n)
    while True:
        # links[b, i, i] is True, so the minimum includes the element itself
        updated = np.where(links, smallest[:, None, :], n).min(axis=2)  # (B, n)
        updated = updated[groups, updated]  # pointer jumping
        if (updated == smallest).all():
            break
        smallest = updated
    rank = np.cumsum(smallest == index, axis=1) - 1  # (B, n): cluster number at first members
    return rank[groups, smallest]


def _algorithm1_rounds(links: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """``(B, n)`` int64 Algorithm 1 labels 0..k-1 (in the order the clusters start) of ``B``
    groups with the boolean link matrices ``links`` ``(B, n, n)`` (True on the diagonal).

    Each round starts one cluster per group at its unassigned element of highest
    ``priority`` ``(B, n)`` and grows it to a fixed point: the seed pulls in every
    unassigned element it links to; any other member ``i`` only the elements ``j > i``,
    the ones a single pass in input order reaches after ``i`` joined. The least fixed
    point of that rule is exactly the set the paper's one pass collects (an element joins
    iff a path of links runs to it from the seed through members in increasing input order).
    Groups run in lockstep: a finished group has no unassigned element, so its rounds
    change nothing.
    """
    n_groups, n, _ = links.shape
    labels = np.zeros((n_groups, n), dtype=np.int64)
    # pulls[b, j, i]: member i pulls element j in, i.e. i was scanned before j (i < j);
    # laid out so that the reduction runs over the last, contiguous axis
    pulls = links & np.tri(n, k=-1, dtype=bool)  # (B, n, n)
    unassigned = np.ones((n_groups, n), dtype=bool)
    groups = np.arange(n_groups)
    for cluster in range(n):
        seed = np.where(unassigned, priority, -np.inf).argmax(axis=1)  # (B,)
        members = links[groups, seed] & unassigned  # (B, n): the seed and all it links to
        size = np.count_nonzero(members)
        while True:  # members only grow: an unchanged count is the fixed point
            members |= (pulls & members[:, None, :]).any(axis=2) & unassigned
            grown = np.count_nonzero(members)
            if grown == size:
                break
            size = grown
        labels[members] = cluster
        unassigned &= ~members
        if not unassigned.any():
            break
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
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _components(_links(x[None], tau, strict=False))[0]


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
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    priority = rng.random(n)[None]  # (1, N)
    links = _links(x[None], tau, strict=True)  # (1, N, N); the paper's strict "<"
    return _algorithm1_rounds(links, priority)[0]


def cluster_patients(
    embeddings: np.ndarray,
    patients: np.ndarray,
    tau: float,
    method: ClusterMethod = "closure",
    seed: int = 0,
) -> np.ndarray:
    """Cluster every patient's embeddings at once; labels are per patient.

    Patients with the same number of tracklets are stacked into ``(B, n, D)`` batches, so
    the cost is a few array operations per batch rather than Python work per patient.

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
    sizes = np.bincount(codes)  # (P,)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (P,) first position in `order`
    if method == "algorithm1":
        # One draw in patient order = one rng.random(n_p) per patient in turn (PCG64 doubles
        # come one per 64-bit output), so each patient sees what algorithm1 would draw.
        priority = np.random.default_rng(seed).random(x.shape[0])  # (N,) by position in order

    # one-tracklet patients: label 0 and no distances, but still a clear error for a bad row
    _inverse_norms(x[order[starts[sizes == 1]]])
    for size in np.unique(sizes):
        if size == 1:
            continue
        group = np.flatnonzero(sizes == size)  # patients with `size` tracklets
        per_batch = max(1, ROWS_PER_BATCH // size)
        for first in range(0, group.size, per_batch):
            batch = group[first : first + per_batch]  # (B,)
            positions = starts[batch][:, None] + np.arange(size)  # (B, n) positions in order
            rows = order[positions]  # (B, n) rows of the embeddings
            if method == "closure":
                labels[rows] = _components(_links(x[rows], tau, strict=False))
            else:
                links = _links(x[rows], tau, strict=True)  # (B, n, n)
                labels[rows] = _algorithm1_rounds(links, priority[positions])
    return labels
