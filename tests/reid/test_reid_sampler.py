from collections import Counter

import numpy as np
import pytest

from usv_ray.reid.sampler import pk_batches


def _identities(n_identities: int, seed: int, max_tracklets: int = 6) -> list[str]:
    """One identity per tracklet, 1..max_tracklets tracklets each, interleaved."""
    rng = np.random.default_rng(seed)
    ids = [f"n{i}" for i in range(n_identities) for _ in range(rng.integers(1, max_tracklets + 1))]
    return [ids[t] for t in rng.permutation(len(ids))]


def _all_ranks(identities, p, k, world_size, seed=0, epoch=0):
    return [
        pk_batches(identities, p, k, rank=r, world_size=world_size, seed=seed, epoch=epoch)
        for r in range(world_size)
    ]


CASES = [  # (n_identities, p, k, world_size)
    (40, 4, 3, 2),
    (37, 4, 4, 2),
    (50, 3, 2, 4),
    (9, 3, 4, 3),
    (12, 4, 1, 1),
    (23, 2, 5, 3),
]


@pytest.mark.parametrize(("n_identities", "p", "k", "world_size"), CASES)
def test_batches_are_p_identities_by_k_tracklets(n_identities, p, k, world_size):
    identities = _identities(n_identities, seed=n_identities)
    for batches in _all_ranks(identities, p, k, world_size):
        for batch in batches:
            assert batch.shape == (p * k,) and batch.dtype == np.int64
            per_identity = batch.reshape(p, k)  # identity-major
            owners = [{identities[t] for t in row} for row in per_identity]
            assert all(len(o) == 1 for o in owners)  # each row is one identity
            assert len(set.union(*owners)) == p  # P distinct identities


@pytest.mark.parametrize(("n_identities", "p", "k", "world_size"), CASES)
def test_whole_identities_disjoint_across_ranks_and_lockstep(n_identities, p, k, world_size):
    identities = _identities(n_identities, seed=n_identities)
    per_rank = _all_ranks(identities, p, k, world_size)
    counts = {len(batches) for batches in per_rank}
    assert counts == {-(-n_identities // (p * world_size))}  # same number on every rank
    owned = [{identities[t] for b in batches for t in b} for batches in per_rank]
    for r in range(world_size):
        for s in range(r + 1, world_size):
            assert not owned[r] & owned[s]  # an identity lives on one rank
    assert set.union(*owned) == set(identities)  # padding drops no identity
    for batches in per_rank:
        uses = Counter(identities[t] for b in batches for t in b.reshape(p, k)[:, 0])
        assert max(uses.values()) <= 2  # re-used at most once, for padding
        assert sum(uses.values()) == len(batches) * p


def test_deterministic_from_seed_and_epoch_and_changes_across_epochs():
    identities = _identities(30, seed=1)
    kwargs = {"rank": 1, "world_size": 2}
    first = pk_batches(identities, 4, 3, seed=5, epoch=0, **kwargs)
    again = pk_batches(identities, 4, 3, seed=5, epoch=0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    next_epoch = pk_batches(identities, 4, 3, seed=5, epoch=1, **kwargs)
    other_seed = pk_batches(identities, 4, 3, seed=6, epoch=0, **kwargs)
    for other in (next_epoch, other_seed):
        assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))

    def owned(batches):
        return {identities[t] for b in batches for t in b}

    assert owned(first) != owned(next_epoch)  # identities are re-dealt each epoch


def test_small_identities_with_replacement_large_without():
    # n0 has 1 tracklet, n1 has 2, n2 has 6 and n3 has 4; K = 4.
    identities = ["n0"] + ["n1"] * 2 + ["n2"] * 6 + ["n3"] * 4
    (batch,) = pk_batches(identities, 4, 4, rank=0, world_size=1, seed=0, epoch=0)
    rows = {identities[row[0]]: sorted(row.tolist()) for row in batch.reshape(4, 4)}
    assert rows["n0"] == [0, 0, 0, 0]  # the only tracklet, repeated: positives at distance 0
    assert set(rows["n1"]) == {1, 2}  # both tracklets, plus repeats
    assert len(set(rows["n2"])) == 4 and set(rows["n2"]) <= set(range(3, 9))  # distinct
    assert rows["n3"] == [9, 10, 11, 12]  # exactly K: all of them


def test_hashable_identities_of_any_kind():
    identities = [("p1", 0), ("p1", 1), ("p2", 0), ("p1", 0), 7, 7]
    (batch,) = pk_batches(identities, 4, 2, rank=0, world_size=1, seed=0, epoch=0)
    assert {identities[t] for t in batch} == {("p1", 0), ("p1", 1), ("p2", 0), 7}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 0}, "p and k must be at least 1"),
        ({"k": 0}, "p and k must be at least 1"),
        ({"p": 6}, "cannot fill a batch"),
        ({"world_size": 3}, "cannot fill a batch"),
        ({"rank": 2}, "rank"),
        ({"world_size": 0}, "rank"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = {"p": 3, "k": 2, "rank": 0, "world_size": 2, "seed": 0, "epoch": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        pk_batches(_identities(7, seed=0), **arguments)
