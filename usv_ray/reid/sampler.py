"""A distributed P x K identity sampler for the batch-hard triplet loss.

Every batch holds P identities (nodules) x K tracklets of each, and every rank gets whole
identities: all K tracklets of an identity sit in one batch on one rank, so the batch-hard
loss finds its positives locally and needs no cross-rank gather (as in fast-reid).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def pk_batches(
    identities: Sequence[Hashable],
    p: int,
    k: int,
    *,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """This rank's P x K batches for one epoch: tracklet indices, ``(P * K,)`` int64 each.

    Call once per epoch on every rank with the same ``identities``, ``seed`` and ``epoch``
    (a list has ``__iter__`` and ``__len__``, so it can be a DataLoader's ``batch_sampler``).
    A batch is identity-major: ``batch.reshape(p, k)[i]`` are the K tracklets of its i-th
    identity, and its P identities are distinct.

    - Epoch: every identity appears once per epoch with K of its tracklets (an identity
      epoch, not a tracklet epoch). The identities are shuffled with
      ``np.random.default_rng([seed, epoch])``, the same on every rank, and dealt round
      robin, so an identity is on exactly one rank per epoch; the result is reproducible
      from ``(seed, epoch)`` and differs between epochs.
    - Lockstep: every rank gets ``ceil(n_identities / (p * world_size))`` batches, so DDP
      steps stay in step. A rank whose identities do not fill its last batch pads it with
      its own first identities (re-used, with freshly drawn tracklets, never twice in one
      batch): no identity is dropped and none crosses ranks.
    - Tracklets: an identity with at least K tracklets gives K distinct ones, drawn without
      replacement. One with n < K gives all n once plus K - n drawn with replacement; with
      a single tracklet that tracklet is repeated K times, so its positives may be at
      distance 0 in the triplet loss (then only its hardest negative is pushed beyond the
      margin), unless the clip sampling or augmentation differs between repeats.
      Tracklets are drawn with ``np.random.default_rng([seed, epoch, rank])``.

    Args:
        identities: the identity (e.g. ``nodule_uid``) of each tracklet index 0..N-1.
        p: identities per batch; k: tracklets per identity.
        rank, world_size: this worker's rank among ``world_size`` data-parallel workers.
        seed, epoch: non-negative integers that fix the epoch's batches.

    Raises:
        ValueError: ``p`` or ``k`` < 1, a bad rank / world size / seed / epoch, or fewer
            distinct identities than ``p * world_size`` (some rank could not fill a batch).
    """
    if p < 1 or k < 1:
        raise ValueError(f"p and k must be at least 1, got p={p}, k={k}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed} and {epoch}")
    tracklets_of: dict[Hashable, list[int]] = {}  # identity -> its tracklet indices
    for index, identity in enumerate(identities):
        tracklets_of.setdefault(identity, []).append(index)
    groups = [np.asarray(t, dtype=np.int64) for t in tracklets_of.values()]  # first-seen order
    if len(groups) < p * world_size:
        raise ValueError(
            f"{len(groups)} identities cannot fill a batch of p={p} identities on each of "
            f"{world_size} ranks (need at least {p * world_size})"
        )

    order = np.random.default_rng([seed, epoch]).permutation(len(groups))  # same on all ranks
    mine = order[rank::world_size]  # this rank's identities, whole
    n_batches = -(-len(groups) // (p * world_size))  # ceil: equal on every rank
    # Pad from the head: pad <= p and the tail batch holds identities past the head (the
    # constraint above gives len(mine) >= p), so no identity occurs twice in one batch.
    pad = n_batches * p - len(mine)
    slots = np.concatenate([mine, mine[:pad]]).reshape(n_batches, p)  # (n_batches, P)

    rng = np.random.default_rng([seed, epoch, rank])
    batches = []
    for row in slots:
        picks = [_draw(groups[g], k, rng) for g in row]  # P x (K,)
        batches.append(np.concatenate(picks))  # (P * K,)
    return batches


def _draw(tracklets: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K of one identity's tracklets: distinct if it has K, else all of them plus repeats."""
    if len(tracklets) >= k:
        return rng.choice(tracklets, size=k, replace=False)  # (K,)
    extra = rng.choice(tracklets, size=k - len(tracklets), replace=True)
    return rng.permutation(np.concatenate([tracklets, extra]))  # (K,)
