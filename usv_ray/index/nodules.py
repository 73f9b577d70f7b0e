"""One patient's nodules, kept up to date as new tracklets arrive.

A nightly run sees a patient's existing nodules (from the index) and the tracklets that
are new since. Existing nodules are never split, merged or renamed, so a ``nodule_uid``
that a clinician or another system has recorded stays valid:

1. each new tracklet joins the existing nodule with the nearest member, when that member
   lies within tau (cosine distance): "within tau of any member", as in Algorithm 1 and
   the closure. A tracklet that joined becomes a member the next new ones can reach, so
   a follow-up exam's chain of views still joins the nodule it matches;
2. the new tracklets that reach no existing nodule are clustered among themselves
   (``closure`` or ``algorithm1``) into new nodules.

Two tracklets visible in the same frames of one video are two nodules (a cannot-link,
:mod:`usv_ray.cluster.constraints`): a new tracklet never joins a nodule holding a
tracklet it cannot-links (it joins the nearest nodule within tau that it may join), and
the clustering of step 2 never puts such a pair together.

On a first build (no existing nodules) step 2 alone is the clustering of the patient.
A new tracklet that lies within tau of two existing nodules joins the nearer one; the two
stay apart (merging them would retire a uid).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from usv_ray.cluster.constraints import constrained_algorithm1, constrained_closure, pairs_of
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


def _cluster(
    embeddings: np.ndarray, tau: float, method: ClusterMethod, seed: int, cannot: np.ndarray
) -> np.ndarray:  # (N,) int64 labels
    """``method`` on a patient's rows, with the cannot-link pairs ``cannot`` (K, 2) kept
    apart (the compiled clustering where there are none)."""
    rng = np.random.default_rng(seed)
    if len(cannot):
        if method == "closure":
            return constrained_closure(embeddings, tau, cannot)
        return constrained_algorithm1(embeddings, tau, cannot, rng)
    return closure(embeddings, tau) if method == "closure" else algorithm1(embeddings, tau, rng)


def update_patient(
    patient_key: str,
    nodules: Sequence[Nodule],
    new_ids: Sequence[str],
    embedding_of: Mapping[str, np.ndarray],
    study_of: Mapping[str, str | None],
    tau: float,
    method: ClusterMethod,
    now: datetime,
    seed: int = 0,
    cannot: Collection[frozenset[str]] = (),
) -> list[Nodule]:
    """``nodules`` with the tracklets ``new_ids`` added (see the module docstring).

    ``embedding_of`` maps every member and new tracklet to its L2-normalised embedding,
    ``study_of`` to its study key; ``cannot`` holds the cannot-link pairs of tracklet ids
    (:func:`usv_ray.cluster.constraints.cannot_links`). Nodules that gain nothing come
    back unchanged.

    Raises:
        ValueError: for an embedding that is not finite.
    """
    new_ids = sorted(new_ids)
    if not new_ids:
        return list(nodules)
    members = [t for n in nodules for t in n.tracklet_ids]
    vectors = np.stack([embedding_of[t] for t in [*members, *new_ids]]).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError(f"non-finite embedding among the tracklets of patient {patient_key}")
    owner = np.repeat(np.arange(len(nodules)), [len(n.tracklet_ids) for n in nodules])
    member_vecs, new_vecs = vectors[: len(members)], vectors[len(members) :]  # (M, D), (N, D)

    apart: dict[str, set[str]] = {}  # tracklet -> the tracklets it cannot-links
    for pair in cannot:
        a, b = tuple(pair)
        apart.setdefault(a, set()).add(b)
        apart.setdefault(b, set()).add(a)
    holds = [set(n.tracklet_ids) for n in nodules]  # each nodule's members, as they grow
    joined: dict[int, list[str]] = {}  # nodule position -> new tracklets that joined it
    pending = np.arange(len(new_ids))
    while len(pending) and len(member_vecs):
        distance = 1.0 - new_vecs[pending] @ member_vecs.T  # (pending, M)
        for row, i in enumerate(pending):  # never into a nodule it cannot-links a member of
            others = apart.get(new_ids[i])
            for position, held in enumerate(holds if others else ()):
                if held & others:
                    distance[row, owner == position] = np.inf
        nearest = distance.argmin(axis=1)
        hits = np.flatnonzero(distance[np.arange(len(pending)), nearest] <= tau)
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
        member_vecs = np.concatenate([member_vecs, new_vecs[pending[took]]])
        owner = np.concatenate([owner, owner[nearest[took]]])
        pending = np.delete(pending, took)

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
        labels = _cluster(new_vecs[pending], tau, method, seed, pairs_of(rest, cannot))
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
