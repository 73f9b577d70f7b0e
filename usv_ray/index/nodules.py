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

On a first build (no existing nodules) step 2 alone is the clustering of the patient.
A new tracklet that lies within tau of two existing nodules joins the nearer one; the two
stay apart (merging them would retire a uid).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

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
    embeddings: np.ndarray, tau: float, method: ClusterMethod, seed: int
) -> np.ndarray:  # (N,) int64 labels
    if method == "closure":
        return closure(embeddings, tau)
    return algorithm1(embeddings, tau, np.random.default_rng(seed))


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
) -> list[Nodule]:
    """``nodules`` with the tracklets ``new_ids`` added (see the module docstring).

    ``embedding_of`` maps every member and new tracklet to its L2-normalised embedding,
    ``study_of`` to its study key. Nodules that gain nothing come back unchanged.

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

    joined: dict[int, list[str]] = {}  # nodule position -> new tracklets that joined it
    pending = np.arange(len(new_ids))
    while len(pending) and len(member_vecs):
        distance = 1.0 - new_vecs[pending] @ member_vecs.T  # (pending, M)
        nearest = distance.argmin(axis=1)
        hits = distance[np.arange(len(pending)), nearest] <= tau
        if not hits.any():
            break
        for i, m in zip(pending[hits], nearest[hits], strict=True):
            joined.setdefault(int(owner[m]), []).append(new_ids[i])
        member_vecs = np.concatenate([member_vecs, new_vecs[pending[hits]]])
        owner = np.concatenate([owner, owner[nearest[hits]]])
        pending = pending[~hits]

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
        labels = _cluster(new_vecs[pending], tau, method, seed)
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
