"""How well an index links tracklets into nodules, against the hidden truth, with intervals.

Every tracklet of the index is matched to the true nodule it shows: an annotated one by its
own nodule, an automatic one by its boxes (:func:`usv_ray.score.tracks.tracklet_nodules`;
none when its boxes match no nodule in half its frames). Then, over patients drawn with
replacement (``n_boot`` resamples, 95% percentile intervals):

- pairwise precision, recall and F over the tracklets that show a nodule: all of them,
  the annotated ones alone and the automatic ones alone (pairs within a patient, as the
  re-ID paper's Table 4 counts them);
- the share of patients for whom the index lists as many nodules as their videos show;
- tonight, where ``tonight`` names the night's videos: the share of returning patients'
  nodules whose tracklets tonight joined the ``nodule_uid`` holding their earlier ones, and
  the share of tonight's nodules wrongly merged (their tracklets tonight went to a
  ``nodule_uid`` that mostly holds another nodule).

A nodule's uid "holding" tracklets means the uid most of them sit in.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from usv_ray.score.keyed import KeyedTruth

SOURCES = ("all", "annotated", "automatic")


@dataclass(frozen=True)
class Linking:
    """The two tables of :func:`linking_quality` and the per-patient pair counts behind the
    "all" row (what a paired comparison of two indexes resamples)."""

    pairs: pd.DataFrame  # one row per SOURCES: tracklets, pairs, precision, recall, f (+ _ci)
    nodules: pd.DataFrame  # one row per figure: share, share_ci, count ("k of n")
    counts: pd.Series  # patient_key -> (tp, fp, fn) of every tracklet on a nodule


def _quiet(function, *args, **kwargs):
    from usv_ray.evaluate.metrics import MetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return function(*args, **kwargs)


def _ci(numerators, denominators, n_boot: int, seed: int) -> str | float:
    from usv_ray.evaluate.metrics import ratio_ci
    from usv_ray.evaluate.tables import ci_text

    low, high = _quiet(
        ratio_ci, numerators, denominators, n_boot=n_boot, rng=np.random.default_rng(seed)
    )
    return ci_text(low, high)


def _share(numerator: float, denominator: float) -> float:
    return 100 * numerator / denominator if denominator else float("nan")


def _pair_row(members: pd.DataFrame, n_boot: int, seed: int) -> tuple[dict, pd.Series]:
    """Pairwise scores of ``members`` (patient_key, nodule_uid, nodule_id; each tracklet on a
    true nodule), and its per-patient (tp, fp, fn)."""
    from usv_ray.cluster.metrics import pair_counts_by_patient

    patients, counts = pair_counts_by_patient(
        members["nodule_id"].to_numpy(),
        members["nodule_uid"].to_numpy(),
        members["patient_key"].to_numpy(),
    )
    tp, fp, fn = (counts[:, i] for i in range(3))
    row = {"pairs": int((tp + fn).sum())}
    for name, num, den in (
        ("precision", tp, tp + fp),
        ("recall", tp, tp + fn),
        ("f", 2 * tp, 2 * tp + fp + fn),
    ):
        row[name] = _share(num.sum(), den.sum())
        row[f"{name}_ci"] = _ci(num, den, n_boot, seed)
    return row, pd.Series(list(map(tuple, counts)), index=patients, dtype=object)


def _majority(frame: pd.DataFrame, by: list[str], of: str) -> pd.Series:
    """The value of ``of`` most rows of each ``by`` group hold (ties: the smallest), as
    :func:`usv_ray.score.night.nodule_truth` takes a nodule's majority."""
    return frame.groupby(by)[of].agg(lambda values: values.mode().iloc[0])


def _night_rows(members: pd.DataFrame, tonight: Collection[str], n_boot: int, seed: int) -> list:
    """Returning nodules that kept their uid, and tonight's nodules wrongly merged: a
    nodule's uid is the one most of its tracklets sit in, a uid's nodule the one most of
    its tracklets show."""
    members = members.assign(tonight=members["video_id"].isin(set(tonight)))
    nodule = ["patient_key", "nodule_id"]
    now = _majority(members[members["tonight"]], nodule, "nodule_uid").rename("now")
    before = _majority(members[~members["tonight"]], nodule, "nodule_uid").rename("before")
    owner = _majority(members, ["nodule_uid"], "nodule_id")
    seen = now.reset_index()
    seen["owner"] = seen["now"].map(owner)
    seen["merged"] = seen["owner"] != seen["nodule_id"]
    back = seen.join(before, on=["patient_key", "nodule_id"], how="inner")
    back["kept"] = back["now"] == back["before"]
    rows = []
    for figure, frame, column in (
        ("returning nodules tonight in their earlier nodule_uid", back, "kept"),
        ("tonight's nodules wrongly merged into another", seen, "merged"),
    ):
        per = frame.groupby("patient_key")[column].agg(["sum", "size"])
        rows.append(
            {
                "figure": figure,
                "share": _share(per["sum"].sum(), per["size"].sum()),
                "share_ci": _ci(per["sum"], per["size"], n_boot, seed),
                "count": f"{int(per['sum'].sum())} of {int(per['size'].sum())}",
            }
        )
    return rows


def linking_quality(
    nodules: pd.DataFrame,
    tracklets: pd.DataFrame,
    truth: KeyedTruth,
    *,
    videos: pd.DataFrame | None = None,
    tonight: Collection[str] = (),
    nodule_of: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Linking:
    """The index ``nodules`` (rows of nodules.parquet) of ``tracklets`` (tracklet_id,
    video_id, patient_key, source, nodule_id, box_frames, boxes) against ``truth``.

    ``videos`` (video_id, patient_key): the ingested videos whose true nodules a patient's
    count is held against (default: the tracklets' videos). ``tonight``: the night's video
    ids (no night rows without them). ``nodule_of``: each tracklet's true nodule
    (:func:`~usv_ray.score.tracks.tracklet_nodules` of ``tracklets``) where the caller has
    it already; matching the automatic tracklets' boxes is the costly part.
    """
    from usv_ray.score.tracks import tracklet_nodules

    if nodule_of is None:
        nodule_of = tracklet_nodules(tracklets, truth)
    truth_of = nodule_of.set_index("tracklet_id")["nodule_id"]
    members = nodules[["patient_key", "nodule_uid", "tracklet_ids"]].explode("tracklet_ids")
    members = members.rename(columns={"tracklet_ids": "tracklet_id"}).merge(
        tracklets[["tracklet_id", "video_id", "source"]], on="tracklet_id"
    )
    members["nodule_id"] = members["tracklet_id"].map(truth_of)
    shown = members.dropna(subset=["nodule_id"])
    rows, counts = [], pd.Series(dtype=object)
    for source in SOURCES:
        chosen = members if source == "all" else members[members["source"] == source]
        on = shown if source == "all" else shown[shown["source"] == source]
        row, per_patient = _pair_row(on, n_boot, seed)
        rows.append(
            {
                "tracklets": source,
                "indexed": len(chosen),
                "on_a_nodule": len(on),
                "patients": on["patient_key"].nunique(),
                **row,
            }
        )
        if source == "all":
            counts = per_patient

    videos = tracklets if videos is None else videos
    videos = videos.drop_duplicates("video_id")[["video_id", "patient_key"]]
    true = truth.boxes.merge(videos, on="video_id").groupby("patient_key")["nodule_id"].nunique()
    listed = nodules.groupby("patient_key")["nodule_uid"].nunique()
    both = pd.concat([true.rename("true"), listed.rename("listed")], axis=1).fillna(0)
    right = (both["listed"] == both["true"]).astype(int)
    figures = [
        {
            "figure": "patients with the right nodule count",
            "share": _share(right.sum(), len(right)),
            "share_ci": _ci(right, np.ones(len(right)), n_boot, seed),
            "count": f"{int(right.sum())} of {len(right)}",
        }
    ]
    if len(tonight):
        figures += _night_rows(shown, tonight, n_boot, seed)
    return Linking(pd.DataFrame(rows), pd.DataFrame(figures), counts)


def f_difference(a: pd.Series, b: pd.Series, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pairwise F of index ``b`` minus index ``a`` (their :attr:`Linking.counts`, one set of
    patients) in points, with its 95% interval (``f_difference_low``, ``_high``) from one
    resample of patients for both."""
    from usv_ray.evaluate.metrics import sums_ci

    patients = a.index.union(b.index)
    nan = float("nan")
    if not len(patients):
        return {"f_difference": nan, "f_difference_low": nan, "f_difference_high": nan}

    def f(counts: np.ndarray) -> np.ndarray:  # (..., 3) tp, fp, fn -> (...) in points
        tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100 * 2 * tp / (2 * tp + fp + fn)

    def difference(sums: np.ndarray) -> np.ndarray:  # (..., 6): a's counts, then b's
        return f(sums[..., 3:]) - f(sums[..., :3])

    per_patient = np.array(
        [[*a.get(p, (0, 0, 0)), *b.get(p, (0, 0, 0))] for p in patients], dtype=np.float64
    )  # (P, 6)
    rng = np.random.default_rng(seed)
    low, high = _quiet(sums_ci, difference, per_patient, n_boot=n_boot, rng=rng)
    return {
        "f_difference": float(difference(per_patient.sum(axis=0))),
        "f_difference_low": low,
        "f_difference_high": high,
    }
