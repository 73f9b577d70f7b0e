"""Patient-level cross-validation folds: no patient's videos are ever split across folds.

Features for fold k must come from a CNN trained without fold k's patients, so the fold of
a video is a function of its patient alone. Folds are stratified by label as far as whole
patients allow (scikit-learn's StratifiedGroupKFold), and seeded.

:func:`calibration_share` holds patients out of every fold to calibrate the bundle on;
:func:`fold_table` and :func:`fold_split` are the splits ``usv-ray classify`` trains on;
``usv-ray tune`` calls the same two, so a sweep validates on the videos the stage does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from usv_ray.config import ClassifyConfig

# the classify settings that fix which videos a fold's CNN trains and validates on
SPLIT_SETTINGS = ("folds", "seed", "val_fraction")
# the "fold" of the final model (classify.final_model): it tests no video and trains on
# every labelled patient; its CNN, features and LSTM are named "final" (see fold_name)
FINAL_FOLD = -1


def fold_name(fold: int) -> str:
    """The name of fold ``fold``'s models and feature cache: ``fold=2``, or ``final``."""
    return "final" if fold == FINAL_FOLD else f"fold={fold}"


def assign_folds(
    video_ids: Sequence[str],
    patient_keys: Sequence[str],
    labels: Sequence[int],
    k: int,
    seed: int,
) -> dict[str, int]:
    """Fold (0..k-1) of every labelled video; videos with label -1 (unknown) get none.

    Raises ValueError when there are fewer labelled patients than folds, since some fold
    would then be empty. A one-class archive still gets k folds (metrics downstream then
    report NaN with a warning rather than failing).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    video_ids = np.asarray(video_ids, dtype=object)
    patient_keys = np.asarray(patient_keys, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if not (len(video_ids) == len(patient_keys) == len(labels)):
        raise ValueError("video_ids, patient_keys and labels must have the same length")
    if len(set(video_ids.tolist())) != len(video_ids):
        raise ValueError("video_ids repeat")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    known = labels >= 0
    n_patients = len(set(patient_keys[known].tolist()))
    if n_patients < k:
        raise ValueError(f"{n_patients} labelled patients cannot fill {k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    rows = np.flatnonzero(known)
    dummy = np.zeros(len(rows))
    for fold, (_, test) in enumerate(splitter.split(dummy, labels[rows], patient_keys[rows])):
        for row in rows[test]:
            folds[video_ids[row]] = fold
    return folds


def validation_videos(
    video_ids: Sequence[str],
    patient_keys: Sequence[str],
    labels: Sequence[int],
    fraction: float,
    seed: int,
) -> set[str]:
    """A patient-level, label-stratified share of ``video_ids`` to validate a CNN on.

    Taken from the training folds only (never the test fold), about ``fraction`` of the
    patients; at least one patient, and never all of them.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    video_ids = np.asarray(video_ids, dtype=object)
    patients = np.asarray(patient_keys, dtype=object)
    n_patients = len(set(patients.tolist()))
    if n_patients < 2:
        raise ValueError("a validation split needs at least two patients")
    splits = min(n_patients, max(2, round(1 / fraction)))
    splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(np.zeros(len(video_ids)), np.asarray(labels), patients))
    return set(video_ids[held_out].tolist())


def fold_table(videos: pd.DataFrame, c: ClassifyConfig) -> pd.DataFrame:
    """``videos`` (video_id, patient_key, label) with the ``fold`` (int8) of each: the
    ``folds.parquet`` of ``usv-ray classify`` (``classify.folds`` folds, ``classify.seed``).

    Raises ValueError when the labelled patients cannot fill the folds.
    """
    fold_of = assign_folds(
        videos["video_id"], videos["patient_key"], videos["label"], c.folds, c.seed
    )
    return videos.assign(fold=videos["video_id"].map(fold_of).astype(np.int8))


def fold_split(
    folds: pd.DataFrame, k: int, c: ClassifyConfig
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, validation) videos of fold ``k``'s frame CNN, as ``usv-ray classify``
    trains it: the videos outside fold ``k`` less a patient-level ``classify.val_fraction``
    share of them (:func:`validation_videos`, ``classify.seed``), and that share.

    ``folds`` is a :func:`fold_table`: video_id, patient_key, label, fold. Training videos
    keep the table's order, validation videos are sorted.

    Raises ValueError when ``k`` is not a fold or the share cannot be taken.
    """
    if not 0 <= k < c.folds:
        raise ValueError(f"fold {k} is not one of the {c.folds} classify folds")
    train = folds[folds["fold"] != k]
    held = validation_videos(
        train["video_id"], train["patient_key"], train["label"], c.val_fraction, c.seed
    )
    return tuple(v for v in train["video_id"] if v not in held), tuple(sorted(held))


def calibration_share(videos: pd.DataFrame, c: ClassifyConfig) -> pd.DataFrame:
    """The labelled ``videos`` (video_id, patient_key, label) of the patients held out of
    every fold and member to calibrate the bundle on: a label-stratified
    ``classify.calibration_share`` of the patients (``classify.seed``); none for 0.

    Raises ValueError for a share outside [0, 0.5], or one without both classes.
    """
    if not 0 <= c.calibration_share <= 0.5:
        raise ValueError(
            f"classify.calibration_share must be in [0, 0.5], got {c.calibration_share}"
        )
    if c.calibration_share == 0:
        return videos.iloc[:0]
    held = validation_videos(
        videos["video_id"], videos["patient_key"], videos["label"], c.calibration_share, c.seed
    )
    share = videos[videos["video_id"].isin(held)].reset_index(drop=True)
    if share["label"].nunique() < 2:
        raise ValueError(
            f"the calibration share ({share['patient_key'].nunique()} patients) holds one "
            "class only: a threshold needs benign and malignant videos; raise "
            "classify.calibration_share or set it to 0"
        )
    return share
