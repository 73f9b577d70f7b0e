"""One patient's nodules, kept up to date as new tracklets arrive.

A nightly run sees a patient's existing nodules (from the index) and the tracklets that
are new since. Existing nodules are never split, merged or renamed, so a ``nodule_uid``
that a clinician or another system has recorded stays valid:

1. each new tracklet joins the existing nodule with the nearest member, when that member
   lies within the cut (:class:`Links`: cosine distance within tau, or a calibrated
   P(same nodule) of at least its threshold): "within tau of any member", as in
   Algorithm 1 and the closure. A tracklet that joined becomes a member the next new ones
   can reach, so a follow-up exam's chain of views still joins the nodule it matches;
2. the new tracklets that reach no existing nodule are clustered among themselves
   (``closure`` or ``algorithm1``) into new nodules.

Two tracklets visible in the same frames of one video are two nodules (a cannot-link,
:mod:`usv_ray.cluster.constraints`): a new tracklet never joins a nodule holding a
tracklet it cannot-links (it joins the nearest nodule within the cut that it may join), and
the clustering of step 2 never puts such a pair together.

On a first build (no existing nodules) step 2 alone is the clustering of the patient.
A new tracklet that lies within the cut of two existing nodules joins the nearer one; the two
stay apart (merging them would retire a uid).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from usv_ray.cluster.constraints import (
    constrained_algorithm1,
    constrained_closure,
    cosine_distances,
    pairs_of,
)
from usv_ray.cluster.link import LinkModel
from usv_ray.cluster.threshold import algorithm1, closure
from usv_ray.config import ClusterMethod


@dataclass(frozen=True)
class Nodule:
    """One nodule of a patient, as the index stores it (less its centroid and version)."""

    nodule_uid: str
    tracklet_ids: tuple[str, ...]  # sorted
    first_study: str | None  # the exam it was first indexed from
    last_study: str | None  # the latest exam that added a tracklet
    updated_at: datetime


def nodule_uid(patient_key: str, founder: str) -> str:
    """A stable id from the patient and the smallest tracklet id the nodule was founded on.

    Both are keyed hashes already, so the uid reveals nothing new; a rebuild that finds the
    same clusters gives the same uids.
    """
    return hashlib.sha256(f"{patient_key}/{founder}".encode()).hexdigest()[:16]


def _study(study_of: Mapping[str, str | None], tracklet_ids: Sequence[str], pick=max) -> str | None:
    """One study key among ``tracklet_ids``'s: study keys are hashes that carry no date, so
    among the exams of one run ``pick`` (min or max) is a fixed tie-break."""
    studies = [study_of[t] for t in tracklet_ids if study_of[t] is not None]
    return pick(studies) if studies else None


@dataclass(frozen=True)
class Links:
    """How the index decides that two of a patient's tracklets show one nodule: their
    distance is within :attr:`cut`.

    Without a ``model`` the distance is their embeddings' cosine distance and the cut is
    tau; with a :class:`~usv_ray.cluster.link.LinkModel` it is ``1 - P(same nodule)``
    from the embeddings, the exams (``study_of``) and the boxes (``geometry_of``: each
    tracklet's box centre depth and height, :func:`~usv_ray.cluster.link.box_geometry`),
    and the cut is ``1 - index.link_threshold``. A tracklet without geometry counts as of
    no known exam: the look alone links it.
    """

    embedding_of: Mapping[str, np.ndarray]  # L2-normalised, every member and new tracklet
    study_of: Mapping[str, str | None]
    cut: float
    model: LinkModel | None = None
    geometry_of: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """``(n, D)`` float32 embeddings of ``ids``.

        Raises:
            ValueError: for an embedding that is not finite.
        """
        vectors = np.stack([self.embedding_of[t] for t in ids]).astype(np.float32)
        if not np.isfinite(vectors).all():
            raise ValueError("non-finite embedding")
        return vectors

    def distances(self, ids: Sequence[str]) -> np.ndarray:
        """``(n, n)`` distances of ``ids``."""
        vectors = self.vectors(ids)
        if self.model is None:
            return cosine_distances(vectors)
        # a tracklet without boxes (or gone from the archive) counts as of no known exam
        known = [t in self.geometry_of for t in ids]
        depth, height = np.asarray([self.geometry_of.get(t, (0.0, 1.0)) for t in ids]).T
        studies = [self.study_of.get(t) if k else None for t, k in zip(ids, known, strict=True)]
        return self.model.distances(vectors, studies, depth, height)


def _cluster(
    links: Links, ids: Sequence[str], d: np.ndarray, method: ClusterMethod, seed: int, cannot
) -> np.ndarray:  # (N,) int64 labels
    """``method`` on a patient's tracklets ``ids`` (their distances ``d``), with the
    cannot-link pairs ``cannot`` (K, 2) kept apart; on cosine distances without any, the
    compiled clustering."""
    rng = np.random.default_rng(seed)
    if len(cannot) or links.model is not None:
        if method == "closure":
            return constrained_closure(d, links.cut, cannot)
        return constrained_algorithm1(d, links.cut, cannot, rng)
    x = links.vectors(ids)
    return closure(x, links.cut) if method == "closure" else algorithm1(x, links.cut, rng)


def update_patient(
    patient_key: str,
    nodules: Sequence[Nodule],
    new_ids: Sequence[str],
    links: Links,
    method: ClusterMethod,
    now: datetime,
    seed: int = 0,
    cannot: Collection[frozenset[str]] = (),
) -> list[Nodule]:
    """``nodules`` with the tracklets ``new_ids`` added (see the module docstring).

    ``links`` says which tracklets link (every member and new tracklet's embedding, study
    key and, with a link model, box geometry); ``cannot`` holds the cannot-link pairs of
    tracklet ids (:func:`usv_ray.cluster.constraints.cannot_links`). Nodules that gain
    nothing come back unchanged.

    Raises:
        ValueError: for an embedding that is not finite.
    """
    new_ids = sorted(new_ids)
    if not new_ids:
        return list(nodules)
    members = [t for n in nodules for t in n.tracklet_ids]
    try:
        d = links.distances([*members, *new_ids])  # (M + N, M + N)
    except ValueError as exc:
        raise ValueError(f"{exc} among the tracklets of patient {patient_key}") from exc
    cut, first_new = links.cut, len(members)
    owner = np.repeat(np.arange(len(nodules)), [len(n.tracklet_ids) for n in nodules])
    member_rows = np.arange(first_new)  # rows of d that are members, as they grow

    apart: dict[str, set[str]] = {}  # tracklet -> the tracklets it cannot-links
    for pair in cannot:
        a, b = tuple(pair)
        apart.setdefault(a, set()).add(b)
        apart.setdefault(b, set()).add(a)
    holds = [set(n.tracklet_ids) for n in nodules]  # each nodule's members, as they grow
    joined: dict[int, list[str]] = {}  # nodule position -> new tracklets that joined it
    pending = np.arange(len(new_ids))
    while len(pending) and len(member_rows):
        distance = d[np.ix_(first_new + pending, member_rows)]  # (pending, M): a copy
        for row, i in enumerate(pending):  # never into a nodule it cannot-links a member of
            others = apart.get(new_ids[i])
            for position, held in enumerate(holds if others else ()):
                if held & others:
                    distance[row, owner == position] = np.inf
        nearest = distance.argmin(axis=1)
        hits = np.flatnonzero(distance[np.arange(len(pending)), nearest] <= cut)
        if not len(hits):
            break
        took = []
        for row in hits[np.argsort(distance[hits, nearest[hits]], kind="stable")]:
            i, position = pending[row], int(owner[nearest[row]])
            if holds[position] & apart.get(new_ids[i], set()):
                continue  # a nearer new tracklet it cannot-links joined first: next round
            joined.setdefault(position, []).append(new_ids[i])
            holds[position].add(new_ids[i])
            took.append(row)
        took = np.asarray(took, dtype=np.int64)
        member_rows = np.concatenate([member_rows, first_new + pending[took]])
        owner = np.concatenate([owner, owner[nearest[took]]])
        pending = np.delete(pending, took)

    study_of = links.study_of
    updated = []
    for position, nodule in enumerate(nodules):
        added = joined.get(position)
        if added is None:
            updated.append(nodule)
            continue
        tracklets = tuple(sorted([*nodule.tracklet_ids, *added]))
        last = _study(study_of, added) or nodule.last_study
        updated.append(replace(nodule, tracklet_ids=tracklets, last_study=last, updated_at=now))

    if len(pending):
        rest = [new_ids[i] for i in pending]
        rows = first_new + pending
        labels = _cluster(links, rest, d[np.ix_(rows, rows)], method, seed, pairs_of(rest, cannot))
        for label in np.unique(labels):
            founders = sorted(new_ids[i] for i in pending[labels == label])
            first, last = _study(study_of, founders, min), _study(study_of, founders, max)
            updated.append(
                Nodule(nodule_uid(patient_key, founders[0]), tuple(founders), first, last, now)
            )
    return updated


def centroid(nodule: Nodule, embedding_of: Mapping[str, np.ndarray]) -> np.ndarray:
    """The L2-normalised mean embedding of the nodule's tracklets, (D,) float32."""
    mean = np.mean([embedding_of[t] for t in nodule.tracklet_ids], axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
