"""Patient-level train / validation / test splits: every stage that splits an archive by
patient (re-ID, the detector) splits it the same way, so no patient is on two sides."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def split_patients(
    patient_keys: Sequence[str],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    *,
    seed: int,
) -> dict[str, str]:
    """``"train"``, ``"val"`` or ``"test"`` for every distinct patient key.

    Sizes follow the largest-remainder rule: each split gets ``floor(fraction * n)``
    patients, and the patients left over go one each to the splits with the largest
    remainders, ties to the earlier split (train, val, test). So 10 patients give 8/1/1 and
    24 give 19/3/2 (remainders .2/.4/.4: val wins the tie). Then an empty split takes one
    patient from the largest split, so all three are non-empty. The patients (sorted, so
    the input order does not matter; repeats are allowed) are shuffled with
    ``np.random.default_rng(seed)`` and cut in that order.

    Raises:
        ValueError: fewer than 3 distinct patients, or ``fractions`` not three positive
            numbers summing to 1.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    patients = np.unique(np.asarray(patient_keys, dtype=object).astype(str))  # sorted
    n = len(patients)
    if n < 3:
        raise ValueError(f"{n} patients cannot fill train, val and test (need at least 3)")
    quotas = np.asarray(fractions, dtype=np.float64) * n  # (3,)
    sizes = np.floor(quotas).astype(np.int64)  # (3,)
    by_remainder = np.argsort(-(quotas - sizes), kind="stable")  # ties: earlier split first
    sizes[by_remainder[: n - sizes.sum()]] += 1
    for split in range(3):
        if sizes[split] == 0:
            sizes[split] += 1
            sizes[np.argmax(sizes)] -= 1
    shuffled = np.random.default_rng(seed).permutation(patients)
    labels = np.repeat(SPLITS, sizes)  # (n,)
    return dict(zip(shuffled.tolist(), labels.tolist(), strict=True))
