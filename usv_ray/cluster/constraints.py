"""What a video says about its tracklets: two tracklets visible in the same frames of one
video show two different nodules (a probe images each nodule once per frame), so the
clustering must never put them in one nodule (a *cannot-link*).

:func:`cannot_links` finds those pairs in a tracklets table; :func:`constrained_closure`
and :func:`constrained_algorithm1` are the two clusterings of
:mod:`usv_ray.cluster.threshold` that respect them:

- the closure becomes *constrained single linkage*: the links (distance within ``tau``)
  are taken nearest first, and each merges its two clusters unless a cannot-link
  pair lies across them. Without cannot-links it is exactly the closure (every link merges,
  and the order of merges does not change connected components); with them, the nearest
  links decide, and a chain that would join two nodules seen side by side breaks at its
  longest link;
- Algorithm 1 keeps its seed and its one pass in input order, and an embedding joins the
  cluster only when it is linked to a member and cannot-links none.

Both take every pair's distance of the patient (``n^2`` floats): cosine distances
(:func:`cosine_distances`) or ``1 - P(same)`` of a :class:`~usv_ray.cluster.link.LinkModel`.
With cosine distances they run only for the patients that have cannot-links among their
new tracklets, which are a few dozen at most; the compiled clusterings keep the rest.

The one case the rule gets wrong: a tracker that follows one nodule with two overlapping
tracks (a duplicate box that NMS left) would keep the two tracks apart. Annotated
tracklets are one per nodule and video, so they are never affected.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np
import pandas as pd

__all__ = [
    "cannot_links",
    "constrained_algorithm1",
    "constrained_closure",
    "cosine_distances",
    "pairs_of",
]


def cannot_links(tracklets: pd.DataFrame) -> set[frozenset[str]]:
    """The pairs of tracklet ids (``tracklet_id``, ``video_id``, ``box_frames``: the source
    frames each covers) of one video that share a frame."""
    pairs: set[frozenset[str]] = set()
    for _, part in tracklets.groupby("video_id", sort=False):
        if len(part) < 2:
            continue
        ids = part["tracklet_id"].tolist()
        frames = [set(np.asarray(f).tolist()) for f in part["box_frames"]]
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                if frames[a] & frames[b]:
                    pairs.add(frozenset((ids[a], ids[b])))
    return pairs


def pairs_of(ids: Iterable[str], links: Collection[frozenset[str]]) -> np.ndarray:
    """``(K, 2)`` positions into ``ids`` of the cannot-link pairs among them."""
    ids = list(ids)
    position = {t: i for i, t in enumerate(ids)}
    found = [
        sorted(position[t] for t in pair)
        for pair in links
        if len(pair) == 2 and all(t in position for t in pair)
    ]
    return np.asarray(sorted(found), dtype=np.int64).reshape(-1, 2)


def cosine_distances(embeddings: np.ndarray) -> np.ndarray:
    """``(n, n)`` cosine distances of the rows (normalised here)."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if x.ndim != 2 or not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("embeddings must be (N, D) with finite, non-zero rows")
    unit = x / norms
    return 1.0 - unit @ unit.T


def _blocked(n: int, cannot: np.ndarray) -> list[set[int]]:
    blocked: list[set[int]] = [set() for _ in range(n)]
    for i, j in np.asarray(cannot, dtype=np.int64).reshape(-1, 2):
        if i == j:
            raise ValueError(f"tracklet {i} cannot-links itself")
        blocked[i].add(int(j))
        blocked[j].add(int(i))
    return blocked


def _numbered(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 in order of each cluster's first row."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def constrained_closure(d: np.ndarray, tau: float, cannot: np.ndarray) -> np.ndarray:
    """Constrained single linkage of one patient's ``(n, n)`` distances ``d``
    (:func:`cosine_distances`, or a :class:`~usv_ray.cluster.link.LinkModel`'s) at ``tau``:
    the links ``d <= tau`` nearest first (ties by position), each merging its clusters
    unless a pair of ``cannot`` ``(K, 2)`` lies across them. ``(n,)`` labels numbered by
    each cluster's smallest member, as :func:`usv_ray.cluster.threshold.closure` numbers
    them."""
    n = len(d)
    blocked = _blocked(n, cannot)
    parent = list(range(n))
    members = [{i} for i in range(n)]
    apart = [set(b) for b in blocked]  # per root: rows its cluster cannot-links

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    rows, cols = np.triu_indices(n, k=1)
    linked = d[rows, cols] <= tau
    rows, cols = rows[linked], cols[linked]
    for k in np.lexsort((cols, rows, d[rows, cols])):
        a, b = root(int(rows[k])), root(int(cols[k]))
        if a == b or apart[a] & members[b]:
            continue
        keep, gone = min(a, b), max(a, b)
        parent[gone] = keep
        members[keep] |= members[gone]
        apart[keep] |= apart[gone]
    return _numbered(np.array([root(i) for i in range(n)], dtype=np.int64))


def constrained_algorithm1(
    d: np.ndarray, tau: float, cannot: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Algorithm 1 of :func:`usv_ray.cluster.threshold.algorithm1` on ``(n, n)`` distances
    ``d`` (the same single ``rng.random(n)`` draw of the seed order, ``d < tau``, one pass
    in input order), where a row joins only a cluster it cannot-links no member of.
    ``(n,)`` labels in the order the clusters were started."""
    n = len(d)
    blocked = _blocked(n, cannot)
    labels = np.full(n, -1, np.int64)
    priority = rng.random(n) if n else np.empty(0)
    cluster = 0
    for seed in np.argsort(-priority, kind="mergesort"):
        if labels[seed] >= 0:
            continue
        members = [int(seed)]
        labels[seed] = cluster
        for j in range(n):
            if labels[j] >= 0 or blocked[j] & set(members):
                continue
            if (d[j, members] < tau).any():
                labels[j] = cluster
                members.append(j)
        cluster += 1
    return labels
