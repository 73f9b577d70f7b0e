from collections import Counter

import numpy as np
import pytest

from usv_ray.config import load_config
from usv_ray.reid.pairs import (
    clamp_p,
    partner_pairs,
    split_patients,
    split_tracklets,
    training_nodules,
    within_patient_pairs,
)


def _archive(n_patients: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffled tracklets: patients with 1..4 nodules of 1..4 tracklets each."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"p{p}", f"p{p}-n{n}")
        for p in range(n_patients)
        for n in range(rng.integers(1, 5))
        for _ in range(rng.integers(1, 5))
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return [r[0] for r in rows], [r[1] for r in rows]


# Largest remainder, ties to the earlier split (train, val, test).
SPLIT_SIZES = [
    (3, (0.8, 0.1, 0.1), (1, 1, 1)),  # 2.4/.3/.3 -> 3/0/0; val, then test take one from train
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (24, (0.8, 0.1, 0.1), (19, 3, 2)),  # 19.2/2.4/2.4: one left over, val wins the tie
    (25, (0.8, 0.1, 0.1), (20, 3, 2)),  # 20/2.5/2.5: val wins the tie
    (787, (0.8, 0.1, 0.1), (629, 79, 79)),  # 629.6/78.7/78.7: two left, to val and test
    (100, (0.7, 0.2, 0.1), (70, 20, 10)),
    (7, (0.5, 0.25, 0.25), (3, 2, 2)),  # 3.5/1.75/1.75: two left, to val and test (.75 > .5)
]


@pytest.mark.parametrize(("n", "fractions", "sizes"), SPLIT_SIZES)
def test_split_sizes(n, fractions, sizes):
    split = split_patients([f"p{i}" for i in range(n)], fractions, seed=0)
    counts = Counter(split.values())
    assert (counts["train"], counts["val"], counts["test"]) == sizes
    assert len(split) == n


def test_split_is_by_patient_seeded_and_order_free():
    patients, _ = _archive(40, seed=1)  # repeated keys, one per tracklet
    split = split_patients(patients, seed=3)
    assert set(split) == set(patients)  # each patient once, in exactly one split
    assert split_patients(patients[::-1], seed=3) == split
    assert split_patients(patients, seed=4) != split


@pytest.mark.parametrize(
    ("patients", "fractions", "message"),
    [
        (["a", "b"], (0.8, 0.1, 0.1), "at least 3"),
        (["a", "a", "a", "b"], (0.8, 0.1, 0.1), "at least 3"),
        (["a", "b", "c"], (0.8, 0.2, 0.0), "three positive numbers"),
        (["a", "b", "c"], (0.5, 0.3, 0.3), "summing to 1"),
        (["a", "b", "c"], (0.5, 0.5), "three positive numbers"),
    ],
)
def test_split_rejects(patients, fractions, message):
    with pytest.raises(ValueError, match=message):
        split_patients(patients, fractions, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_patient_pairs_match_brute_force(seed):
    patients, nodules = _archive(12, seed)
    i, j, same = within_patient_pairs(patients, nodules)
    expected = {
        (a, b, nodules[a] == nodules[b])
        for a in range(len(patients))
        for b in range(a + 1, len(patients))
        if patients[a] == patients[b]
    }
    got = list(zip(i.tolist(), j.tolist(), same.tolist(), strict=True))
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected  # all pairs i < j within a patient, never across
    assert i.dtype == j.dtype == np.int64 and same.dtype == bool


def test_within_patient_pairs_small_cases():
    i, j, same = within_patient_pairs(["a", "b", "a", "a"], ["x", "y", "x", "z"])
    assert i.tolist() == [0, 0, 2] and j.tolist() == [2, 3, 3]
    assert same.tolist() == [True, False, False]
    i, j, same = within_patient_pairs(["a", "b"], ["x", "y"])  # one tracklet each
    assert len(i) == len(j) == len(same) == 0
    i, j, same = within_patient_pairs([], [])
    assert len(i) == len(j) == len(same) == 0


def test_identities_need_only_be_unique_within_a_patient():
    i, j, same = within_patient_pairs(["a", "a", "b", "b"], [1, 2, 1, 1])
    assert list(zip(i.tolist(), j.tolist(), same.tolist(), strict=True)) == [
        (0, 1, False),
        (2, 3, True),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partner_pairs(seed):
    patients, nodules = _archive(30, seed)
    n = len(patients)
    anchor, partner, same = partner_pairs(patients, nodules, np.random.default_rng(seed))
    assert anchor[:n].tolist() == list(range(n)) and same[:n].all()  # one positive each
    assert not same[n:].any() and np.all(np.diff(anchor[n:]) > 0)  # at most one negative
    for a, b, s in zip(anchor.tolist(), partner.tolist(), same.tolist(), strict=True):
        assert patients[a] == patients[b]  # never across patients
        assert (nodules[a] == nodules[b]) == s
        n_of_nodule = nodules.count(nodules[a])
        if s:
            assert (a == b) == (n_of_nodule == 1)  # itself only when it is the only one
    with_negative = set(anchor[n:].tolist())
    for t in range(n):
        others = {nodules[u] for u in range(n) if patients[u] == patients[t]} - {nodules[t]}
        assert (t in with_negative) == bool(others)  # single-nodule patients: no negative


def test_partner_pairs_draw_uniformly_and_reproducibly():
    # Patient a: nodule x has tracklets 0, 1, 2; nodule y has 3 and 4. Patient b: one nodule.
    patients = ["a"] * 5 + ["b"] * 2
    nodules = ["x", "x", "x", "y", "y", "z", "z"]
    draws = [partner_pairs(patients, nodules, np.random.default_rng(s)) for s in range(400)]
    positives_of_0 = Counter(int(d[1][0]) for d in draws)
    negatives_of_0 = Counter(int(d[1][7]) for d in draws)  # negatives start at index 7
    assert set(positives_of_0) == {1, 2} and min(positives_of_0.values()) > 150
    assert set(negatives_of_0) == {3, 4} and min(negatives_of_0.values()) > 150
    assert all(d[0][7:].tolist() == [0, 1, 2, 3, 4] for d in draws)  # b has no negatives
    assert all(d[1][5] == 6 and d[1][6] == 5 for d in draws)
    first, again = (partner_pairs(patients, nodules, np.random.default_rng(9)) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))


def test_partner_pairs_single_tracklet_is_its_own_positive():
    anchor, partner, same = partner_pairs(["a", "a"], ["x", "y"], np.random.default_rng(0))
    assert anchor.tolist() == [0, 1, 0, 1]
    assert partner.tolist() == [0, 1, 1, 0]
    assert same.tolist() == [True, True, False, False]


def test_pairs_reject_misaligned_inputs():
    with pytest.raises(ValueError, match="alike"):
        within_patient_pairs(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="alike"):
        partner_pairs(["a"], ["x", "y"], np.random.default_rng(0))


def test_split_tracklets_splits_the_annotated_by_patient():
    import pandas as pd

    patients, nodules = _archive(10, seed=5)
    tracklets = pd.DataFrame(
        {
            "tracklet_id": [f"t{i}" for i in range(len(patients))],
            "patient_key": patients,
            "nodule_id": [None if i % 7 == 0 else n for i, n in enumerate(nodules)],
        }
    )
    r = load_config(None, ["reid.seed=2"]).reid
    splits = split_tracklets(tracklets, r)
    known = tracklets[tracklets["nodule_id"].notna()]
    assert splits["tracklet_id"].tolist() == known["tracklet_id"].tolist()  # no unannotated
    by_patient = split_patients(known["patient_key"].tolist(), r.split, seed=2)
    assert splits["split"].tolist() == known["patient_key"].map(by_patient).tolist()
    train = known[splits["split"].to_numpy() == "train"]
    pairs = zip(train["patient_key"], train["nodule_id"], strict=True)
    assert training_nodules(splits) == len(set(pairs))


@pytest.mark.parametrize(
    ("p", "workers", "nodules", "expected"),
    [
        (8, 1, 20, 8),
        (8, 1, 5, 5),
        (8, 2, 9, 4),
        (3, 2, 4, 2),
        (8, 2, 3, None),
        (2, 1, 1, None),
        (8, 0, 5, 5),  # workers 0 trains in this process: one worker
    ],
)
def test_clamp_p(p, workers, nodules, expected):
    r = load_config(None, [f"reid.p={p}", f"reid.workers={workers}"]).reid
    if expected is None:
        with pytest.raises(ValueError, match="at least 2 nodules per worker"):
            clamp_p(r, nodules)
    else:
        assert clamp_p(r, nodules).p == expected
        assert clamp_p(r, nodules).k == r.k  # only P changes
