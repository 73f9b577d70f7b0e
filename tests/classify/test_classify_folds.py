import numpy as np
import pandas as pd
import pytest

from usv_ray.classify.folds import assign_folds, fold_split, fold_table, validation_videos
from usv_ray.config import load_config


def _archive(n_patients: int, seed: int):
    rng = np.random.default_rng(seed)
    videos, patients, labels = [], [], []
    for p in range(n_patients):
        label = int(rng.integers(0, 2))
        for v in range(int(rng.integers(1, 5))):
            videos.append(f"v{p}-{v}")
            patients.append(f"p{p}")
            labels.append(label if v else int(rng.integers(-1, 2)))  # some unknown labels
    return videos, patients, labels


@pytest.mark.parametrize(
    ("n_patients", "k", "seed"), [(10, 5, 0), (23, 5, 1), (40, 3, 2), (6, 2, 3)]
)
def test_no_patient_in_two_folds_and_every_fold_used(n_patients, k, seed):
    videos, patients, labels = _archive(n_patients, seed)
    folds = assign_folds(videos, patients, labels, k, seed)
    by_patient: dict[str, set[int]] = {}
    for video, patient, label in zip(videos, patients, labels, strict=True):
        if label < 0:
            assert video not in folds  # unknown labels are not evaluated
            continue
        by_patient.setdefault(patient, set()).add(folds[video])
    assert all(len(f) == 1 for f in by_patient.values())
    assert set(folds.values()) == set(range(k))


def test_seeded_and_stratified():
    videos, patients, labels = _archive(60, 7)
    assert assign_folds(videos, patients, labels, 5, 0) == assign_folds(
        videos, patients, labels, 5, 0
    )
    assert assign_folds(videos, patients, labels, 5, 0) != assign_folds(
        videos, patients, labels, 5, 1
    )
    folds = assign_folds(videos, patients, labels, 5, 0)
    shares = [
        np.mean([lab for v, lab in zip(videos, labels, strict=True) if folds.get(v) == f])
        for f in range(5)
    ]
    assert max(shares) - min(shares) < 0.35  # each fold sees both classes in similar shares


def test_one_class_archive_still_folds():
    videos, patients, _ = _archive(10, 0)
    assert set(assign_folds(videos, patients, [0] * len(videos), 5, 0).values()) == set(range(5))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["a", "b"], ["p", "q"], [0, 1], 5), "cannot fill 5 folds"),
        ((["a", "a"], ["p", "q"], [0, 1], 2), "repeat"),
        ((["a"], ["p", "q"], [0], 2), "same length"),
        ((["a", "b"], ["p", "q"], [0, 1], 1), "at least 2"),
    ],
)
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        assign_folds(*args, seed=0)


@pytest.mark.parametrize(("patients", "fraction"), [(20, 0.15), (3, 0.5), (2, 0.1)])
def test_validation_videos_hold_out_whole_patients(patients, fraction):
    videos = [f"v{i}" for i in range(3 * patients)]
    keys = [f"p{i % patients}" for i in range(3 * patients)]
    labels = [i % 2 for i in range(3 * patients)]
    held = validation_videos(videos, keys, labels, fraction, seed=0)
    held_patients = {keys[videos.index(v)] for v in held}
    assert 1 <= len(held_patients) < patients
    assert held == {v for v, k in zip(videos, keys, strict=True) if k in held_patients}
    assert held == validation_videos(videos, keys, labels, fraction, seed=0)  # seeded


def test_fold_split_is_the_training_folds_less_a_validation_share():
    """fold_table and fold_split: what every fold's CNN trains and validates on."""
    videos, patients, labels = _archive(20, 4)
    table = pd.DataFrame({"video_id": videos, "patient_key": patients, "label": labels})
    table = table[table["label"] >= 0]
    c = load_config(None, ["classify.folds=4", "classify.val_fraction=0.25"]).classify
    folds = fold_table(table, c)
    assert folds["fold"].dtype == np.int8
    assert dict(zip(folds["video_id"], folds["fold"], strict=True)) == assign_folds(
        table["video_id"], table["patient_key"], table["label"], 4, c.seed
    )
    for k in range(4):
        train, val = fold_split(folds, k, c)
        outside = folds.loc[folds["fold"] != k]
        assert set(train) | set(val) == set(outside["video_id"]) and not set(train) & set(val)
        assert set(val) == validation_videos(
            outside["video_id"], outside["patient_key"], outside["label"], 0.25, c.seed
        )
        assert list(val) == sorted(val) and list(train) == [
            v for v in outside["video_id"] if v in set(train)
        ]
    with pytest.raises(ValueError, match="not one of the 4 classify folds"):
        fold_split(folds, 4, c)
