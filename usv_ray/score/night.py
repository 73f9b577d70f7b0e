"""The night against the hidden truth: each new video's diagnosis, each nodule's, and which
way of scoring a nodule ranks malignant nodules above benign ones.

Honest figures need predictions a model made without seeing the patient. On the archive
the diagnosis bundle's members are its fold models: each archive patient's videos and
tracklets are read by the member of the fold that held the patient out (its P in
``member_probs``, through the bundle's calibrator), as cross-validation read them. The
night's new patients are new to every member; its follow-ups are archive patients, read
the same way by the member that held them out, and shown apart (new videos of nodules the
archive already showed).

A nodule of the index is as malignant as the annotated (or, for automatic tracklets,
box-matched) true nodule that most of its tracklets show.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from usv_ray.evaluate.calibration import Calibrator

SHORT = 8  # hex digits of a keyed id shown in a table: enough to tell rows apart


def oof_probs(rows: pd.DataFrame, record: Mapping[str, Any], folds: pd.DataFrame) -> np.ndarray:
    """Calibrated P(malignant) of each row of a diagnoses table (patient_key, prob,
    member_probs) by the bundle member that did not train on the row's patient; rows of
    patients outside every fold (unlabelled, new) keep the ensemble's ``prob``."""
    members = [member["fold"] for member in record["members"]]
    fold_of = dict(zip(folds["patient_key"], folds["fold"].astype(int).tolist(), strict=True))
    raw = np.array(
        [
            probs[members.index(fold_of[p])] if fold_of.get(p) in members else np.nan
            for p, probs in zip(rows["patient_key"], rows["member_probs"], strict=True)
        ],
        dtype=np.float64,
    )
    held_out = ~np.isnan(raw)
    calibrated = rows["prob"].to_numpy(np.float64).copy()
    if held_out.any():
        calibrator = Calibrator.from_dict(record["calibrator"])
        calibrated[held_out] = calibrator.apply(raw[held_out])
    return calibrated


def nodule_truth(
    nodules: pd.DataFrame, tracklet_nodules: pd.DataFrame, truth_nodules: pd.DataFrame
) -> pd.Series:
    """True malignancy (1.0 / 0.0) of each index nodule (by nodule_uid): that of the true
    nodule most of its tracklets show (``tracklet_nodules``: tracklet_id, nodule_id); NaN
    when none of its tracklets is matched to one."""
    members = nodules[["nodule_uid", "tracklet_ids"]].explode("tracklet_ids")
    members = members.merge(tracklet_nodules, left_on="tracklet_ids", right_on="tracklet_id")
    members = members.dropna(subset=["nodule_id"])
    if members.empty:
        return pd.Series(np.nan, index=nodules["nodule_uid"])
    majority = members.groupby("nodule_uid")["nodule_id"].agg(lambda ids: ids.mode().iloc[0])
    malignant = truth_nodules.drop_duplicates("nodule_id").set_index("nodule_id")["malignant"]
    return majority.map(malignant).astype(float).reindex(nodules["nodule_uid"])


def _auc_row(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, seed: int) -> dict:
    from usv_ray.evaluate.metrics import MetricWarning, bootstrap_ci, roc_auc
    from usv_ray.evaluate.tables import ci_text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # one class: NaN in the table
        auc = roc_auc(labels, probs)
        low, high = (
            bootstrap_ci(
                roc_auc, labels, probs, patients, n_boot=1000, rng=np.random.default_rng(seed)
            )
            if len(labels)
            else (np.nan, np.nan)
        )
    return {
        "nodules": len(labels),
        "malignant": int(labels.sum()),
        "roc_auc": 100 * auc,
        "roc_auc_ci": ci_text(low, high),
    }


def scoring_comparison(sets: Mapping[str, pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """Per-nodule ROC AUC of each way of scoring (in percent, patient-bootstrap 95% CI) on
    each set of nodules, and the paired DeLong test of tracklets vs videos.

    ``sets``: name -> one row per nodule with patient_key, truth (0/1) and the P of each
    way (``tracklets``, ``videos``); nodules without a truth or a P are left out.
    """
    from usv_ray.evaluate.delong import delong_test
    from usv_ray.evaluate.metrics import MetricWarning

    rows = []
    for name, frame in sets.items():
        known = frame.dropna(subset=["truth", "tracklets", "videos"])
        labels = known["truth"].to_numpy(np.float64).astype(np.int64)
        patients = known["patient_key"].to_numpy()
        probs = {way: known[way].to_numpy(np.float64) for way in ("tracklets", "videos")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            test = delong_test(labels, probs["tracklets"], probs["videos"])
        for way in ("tracklets", "videos"):
            row = {"nodules_of": name, "scoring": way}
            row.update(_auc_row(labels, probs[way], patients, seed))
            row["p_value"] = test.p_value
            rows.append(row)
    return pd.DataFrame(rows)


def short(ids: pd.Series) -> pd.Series:
    """The first hex digits of keyed ids, to name rows in a table."""
    return ids.str.slice(0, SHORT)
