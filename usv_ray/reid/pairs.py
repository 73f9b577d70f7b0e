"""The re-ID split and tracklet pairs for nodule re-identification (numpy).

Pairs never cross patients: the task is to tell which of one patient's tracklets show the
same nodule, so a pair from two patients would be a trivially easy negative. Identities
(nodules) therefore need only be unique within a patient, and tracklets pair up within
their patient, grouped with an argsort rather than an O(N²) scan of the whole archive.

:func:`split_tracklets` and :func:`clamp_p` are the split and the P x K batch that
``usv-ray reid`` trains with; ``usv-ray tune`` calls the same two, so a sweep trains and
validates on the tracklets the stage does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from usv_ray.splits import split_patients

if TYPE_CHECKING:
    import pandas as pd

    from usv_ray.config import ReidConfig


def split_tracklets(tracklets: pd.DataFrame, r: ReidConfig) -> pd.DataFrame:
    """The re-ID split of the tracklets with a known nodule (the others cannot be paired):
    tracklet_id, patient_key, nodule_id and split (``splits.parquet`` of ``usv-ray reid``),
    by :func:`split_patients` with ``reid.split`` and ``reid.seed``, in the input order.

    Raises:
        ValueError: as :func:`split_patients` (fewer than 3 annotated patients, ...).
    """
    known = tracklets.loc[
        tracklets["nodule_id"].notna(), ["tracklet_id", "patient_key", "nodule_id"]
    ]
    split_of = split_patients(known["patient_key"].tolist(), r.split, seed=r.seed)
    return known.assign(split=known["patient_key"].map(split_of)).reset_index(drop=True)


def training_nodules(splits: pd.DataFrame) -> int:
    """Distinct nodules (patient, nodule_id) among the training tracklets of ``splits``."""
    train = splits[splits["split"] == "train"]
    return int(train.groupby(["patient_key", "nodule_id"]).ngroups)


def clamp_p(r: ReidConfig, n_identities: int) -> ReidConfig:
    """``r`` with ``reid.p`` lowered to what ``n_identities`` training nodules fill: each
    of ``reid.workers`` workers (one when it is 0: training in this process) draws P
    distinct nodules per batch.

    Raises:
        ValueError: fewer than 2 nodules per worker (the triplet loss needs a negative).
    """
    workers = max(1, r.workers)
    per_worker = n_identities // workers
    if per_worker < 2:
        raise ValueError(
            f"{n_identities} training nodules for {workers} workers: the triplet loss needs "
            "at least 2 nodules per worker; add patients or use fewer reid.workers"
        )
    return r if r.p <= per_worker else dataclasses.replace(r, p=per_worker)


def within_patient_pairs(
    patient_keys: Sequence[str], identities: Sequence
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of tracklets of the same patient: the evaluation pairs.

    Args:
        patient_keys: ``(N,)`` the patient of each tracklet.
        identities: ``(N,)`` its nodule, sortable (str or int), unique within a patient.

    Returns:
        ``i (M,)``, ``j (M,)`` int64 tracklet indices with ``i < j``, and ``same (M,)`` bool,
        whether the two show the same nodule. Ordered by patient (sorted key), then by
        ``(i, j)``. A patient with n tracklets gives n (n - 1) / 2 pairs.
    """
    patients, identity_codes = _codes(patient_keys, identities)
    order = np.argsort(patients, kind="stable")  # (N,) grouped by patient, indices ascending
    group_sizes = np.bincount(patients)  # (n_patients,)
    firsts, seconds = [], []
    for members in np.split(order, np.cumsum(group_sizes)[:-1]):  # ascending indices
        a, b = np.triu_indices(len(members), k=1)  # (m,), (m,) with a < b
        firsts.append(members[a])
        seconds.append(members[b])
    i = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)  # (M,)
    j = np.concatenate(seconds) if seconds else np.zeros(0, np.int64)  # (M,)
    return i, j, identity_codes[i] == identity_codes[j]


def partner_pairs(
    patient_keys: Sequence[str], identities: Sequence, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One positive and (where there is one) one negative partner per tracklet: an epoch's
    training pairs for the verification model.

    - Positive: a tracklet of the same nodule, drawn uniformly among the others; a tracklet
      that is its nodule's only one is paired with itself (a pair at distance 0 when both
      sides give the same clip).
    - Negative: a tracklet of another nodule of the same patient, drawn uniformly among
      that patient's other-nodule tracklets (so nodules with more tracklets come up more
      often). A patient with a single nodule has no negatives: its tracklets get only a
      positive pair.

    Args:
        patient_keys: ``(N,)`` the patient of each tracklet.
        identities: ``(N,)`` its nodule, sortable (str or int), unique within a patient.
        rng: draws the partners; pass a new or advanced Generator for each epoch.

    Returns:
        ``anchor (M,)``, ``partner (M,)`` int64 tracklet indices and ``same (M,)`` bool:
        first the N positives (anchor ``0..N-1``), then the negatives in anchor order.
    """
    patients, identity_codes = _codes(patient_keys, identities)
    n = len(patients)
    order = np.lexsort((identity_codes, patients))  # (N,) by patient, then nodule
    sorted_patients, sorted_nodules = patients[order], identity_codes[order]  # (N,), (N,)
    patient_start, patient_size = _runs(sorted_patients[:, None])  # (N,), (N,)
    nodule_start, nodule_size = _runs(np.stack([sorted_patients, sorted_nodules], axis=1))
    position = np.arange(n)  # (N,) sorted positions

    # Positive: skip ahead by 1..size-1 within the nodule's run, wrapping: uniform over
    # the others. A run of one stays put.
    step = rng.integers(1, np.maximum(nodule_size, 2))  # (N,)
    step = np.where(nodule_size > 1, step, 0)
    positive = nodule_start + (position - nodule_start + step) % nodule_size  # (N,)

    # Negative: the u-th of the patient's tracklets outside this nodule's run.
    n_others = patient_size - nodule_size  # (N,)
    u = rng.integers(0, np.maximum(n_others, 1))  # (N,)
    before = nodule_start - patient_start  # (N,) other-nodule tracklets before the run
    negative = patient_start + u + np.where(u >= before, nodule_size, 0)  # (N,)
    negative = np.where(n_others > 0, negative, position)  # none: a placeholder, dropped below

    positive_of = np.empty(n, np.int64)
    positive_of[order] = order[positive]  # (N,) back to tracklet indices
    negative_of = np.empty(n, np.int64)
    negative_of[order] = order[negative]
    has_negative = np.zeros(n, bool)
    has_negative[order] = n_others > 0
    anchors = np.flatnonzero(has_negative)  # (N_neg,)
    anchor = np.concatenate([np.arange(n), anchors])  # (M,)
    partner = np.concatenate([positive_of, negative_of[anchors]])  # (M,)
    same = np.concatenate([np.ones(n, bool), np.zeros(len(anchors), bool)])  # (M,)
    return anchor, partner, same


def _codes(patient_keys: Sequence[str], identities: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``(N,)`` of the patients and of the identities, checked to align."""
    patient_keys = np.asarray(patient_keys, dtype=object)
    identities = np.asarray(identities)
    if patient_keys.ndim != 1 or identities.shape != patient_keys.shape:
        raise ValueError(
            f"patient_keys and identities must be (N,) alike, got {patient_keys.shape} "
            f"and {identities.shape}"
        )
    patients = np.unique(patient_keys.astype(str), return_inverse=True)[1].reshape(-1)
    nodules = np.unique(identities, return_inverse=True)[1].reshape(-1)
    return patients.astype(np.int64), nodules.astype(np.int64)


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``sorted_keys (N, C)``: the start and length of its run of equal
    rows (positions in the sorted order), each ``(N,)``."""
    changes = np.ones(len(sorted_keys), bool)  # (N,) where a new run begins
    changes[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    starts = np.flatnonzero(changes)  # (R,)
    lengths = np.diff(np.append(starts, len(sorted_keys)))  # (R,)
    run = np.cumsum(changes) - 1  # (N,) run of each row
    return starts[run], lengths[run]
