"""Writing the diagnosis bundle: the variable-frame CNN-LSTM of ``usv-ray classify`` as a
product (:mod:`usv_ray.bundle.diagnosis` loads it).

``usv-ray classify`` ends by writing ``CLS/bundle/`` (:mod:`usv_ray.bundle` describes
the layout and its checks):

- the members: each fold's frame CNN and variable-frame LSTM (trained without that fold's
  patients), and with ``classify.final_model`` one more pair trained on every labelled
  patient for the epochs the folds chose (the median of their best epochs). A video's
  raw P(malignant) is the mean of the members' P, and their standard deviation is the
  disagreement a reader sees beside it;
- the calibrator (Platt scaling, or isotonic regression) fitted on the out-of-fold
  predictions of the variable-frame CNN-LSTM, so the P the bundle gives means what it
  says, and the operating point: the threshold of calibrated P that reaches
  ``classify.target_sensitivity`` on those predictions, with the specificity it costs;
- the ingest settings the frames must have been made with, the config and data
  fingerprints, the cross-validated metrics with their intervals.

By default the calibrator is fitted on single fold models' predictions and applied to the
members' mean, which is less extreme: on a night of 150 new synthetic patients that reads
more videos malignant than the bundle promises (benchmarks/operating_point.py). With
``classify.calibration_share`` a label-stratified share of the patients trains no member;
the calibrator and the operating point are then fitted on the members' mean P of their
videos (:func:`share_predictions`), what the bundle deploys. The figures in
``tables/operating_point`` are cross-fitted (each fold, of the out-of-fold predictions or
of the share's patients, read at the threshold chosen on the others), so they estimate
what a new patient will see; the bundle's own calibrator and threshold are fitted on all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from usv_ray import bundle
from usv_ray.bundle.diagnosis import KIND
from usv_ray.classify.folds import FINAL_FOLD, fold_name
from usv_ray.classify.methods import VARIABLE, method_slug
from usv_ray.config import ClassifyConfig
from usv_ray.evaluate.calibration import Calibrator
from usv_ray.layout import ClassifyFolder

METHOD = VARIABLE  # the method a bundle holds
log = logging.getLogger(__name__)


def member_files(out: ClassifyFolder, fold: int) -> dict[str, Path]:
    """The frame CNN and variable-frame LSTM of fold ``fold`` (or the final model) in a
    classify folder ``out``, as the training runs left them."""
    from usv_ray.runner import model_path

    cnn_run, lstm_run = ("cnn_final", "lstm_final") if fold == FINAL_FOLD else ("cnn", "lstm")
    name = fold_name(fold)
    return {
        "cnn": model_path(out.runs / cnn_run / "models", name),
        "lstm": model_path(out.runs / lstm_run / "models", f"{name}_variable"),
    }


def chosen_epochs(files: Sequence[Path]) -> int:
    """The epochs to train a final model for: the median of the fold models' best epochs
    (counted from 1, rounded up), as their finished-model files record them."""
    from usv_ray.runner import load_model

    best = [load_model(path)[1]["best_epoch"] + 1 for path in files]
    return math.ceil(float(np.median(best)))


# ---------------------------------------------------------------------------- calibration


def calibration_table(
    cfg: ClassifyConfig, predictions: pd.DataFrame, plots: Path, subtitle: str
) -> pd.DataFrame:
    """Per method: Brier score and expected calibration errors (equal-width and equal-mass
    bins) of its out-of-fold P before and after calibration (cross-fitted: each fold's by
    a calibrator fitted on the other folds), and a reliability diagram of each in
    ``plots/reliability_<method>.png``."""
    from usv_ray.evaluate.calibration import calibration_summary, cross_fitted
    from usv_ray.evaluate.plots import reliability_plot

    rows = []
    for method, part in predictions.groupby("method", sort=True):
        labels, probs = part["label"].to_numpy(), part["prob"].to_numpy().astype(np.float64)
        after = cross_fitted(labels, probs, part["fold"].to_numpy(), cfg.calibration)
        before_s = calibration_summary(labels, probs, cfg.calibration_bins)
        after_s = calibration_summary(labels, after, cfg.calibration_bins)
        rows.append(
            {
                "method": method,
                "n_videos": len(part),
                "calibration": cfg.calibration,
                **{f"{name}_before": value for name, value in before_s.items()},
                **{f"{name}_after": value for name, value in after_s.items()},
            }
        )
        reliability_plot(
            {"before calibration": (labels, probs), f"after ({cfg.calibration})": (labels, after)},
            plots / f"reliability_{method_slug(method)}.png",
            f"{method} · {subtitle}",
            cfg.calibration_bins,
        )
    return pd.DataFrame(rows)


def _with_ci(
    metric, labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, seed: int, n_boot: int
) -> dict[str, float]:
    from usv_ray.evaluate.metrics import bootstrap_ci

    value = metric(labels, probs)
    low, high = bootstrap_ci(
        metric, labels, probs, patients, n_boot=n_boot, rng=np.random.default_rng(seed)
    )
    return {"value": float(value), "low": low, "high": high}


# the target sensitivities the bundle records the trade-off at, beside its own target
TRADEOFF = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


def _fold_calibrations(
    labels: np.ndarray, raw: np.ndarray, folds: np.ndarray, method: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold: (its rows, the other folds' P and its own P, both calibrated by a
    calibrator fitted on the other folds only). Fitted once, read at every target."""
    from usv_ray.evaluate.calibration import fit_calibrator

    parts = []
    for k in np.unique(folds):
        mine = folds == k
        fitted = fit_calibrator(labels[~mine], raw[~mine], method)
        parts.append((mine, fitted.apply(raw[~mine]), fitted.apply(raw[mine])))
    return parts


def _reading_at(
    target: float,
    labels: np.ndarray,
    calibrated: np.ndarray,
    fold_calibrations: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[float, np.ndarray, np.ndarray]:
    """(threshold of calibrated P at sensitivity ``target``, the 0/1 readings there, the
    cross-fitted readings: each fold calibrated and read at the threshold chosen on the
    other folds only, :func:`_fold_calibrations`)."""
    from usv_ray.evaluate.calibration import operating_point as threshold_at

    threshold = threshold_at(labels, calibrated, target)
    held_out = np.zeros(len(labels), bool)
    for mine, rest, own in fold_calibrations:
        held_out[mine] = own >= threshold_at(labels[~mine], rest, target)
    reading = calibrated >= threshold if math.isfinite(threshold) else np.zeros(len(labels), bool)
    return threshold, reading, held_out


def operating_point(
    cfg: ClassifyConfig, oof: pd.DataFrame, calibrator: Calibrator
) -> dict[str, Any]:
    """The bundle's operating point on the out-of-fold predictions ``oof`` (video_id,
    patient_key, fold, prob, label): the threshold of calibrated P at
    ``cfg.target_sensitivity``, and the whole trade-off (``curve``: one row per target
    sensitivity of :data:`TRADEOFF` and the bundle's own).

    Each row holds the threshold, the sensitivity and specificity there and the share of
    videos read malignant (``positive_share``), each with its patient-bootstrap 95% CI, in
    sample and cross-fitted (each fold read at the threshold chosen on the other folds'
    calibrated P: what a new patient will see). The bundle's own row is also the point's
    top level, as the night reads it."""
    from usv_ray.evaluate.metrics import sensitivity, specificity

    labels = oof["label"].to_numpy()
    patients = oof["patient_key"].to_numpy()
    raw = oof["prob"].to_numpy().astype(np.float64)
    calibrated = calibrator.apply(raw)
    fold_calibrations = _fold_calibrations(labels, raw, oof["fold"].to_numpy(), cfg.calibration)
    measures = {
        "sensitivity": partial(sensitivity, threshold=0.5),  # the readings are 0/1 already
        "specificity": partial(specificity, threshold=0.5),
        "positive_share": lambda _labels, reading: float(np.mean(reading)),
    }
    curve = []
    for target in sorted({*TRADEOFF, cfg.target_sensitivity}):
        threshold, reading, held_out = _reading_at(target, labels, calibrated, fold_calibrations)
        row: dict[str, Any] = {"target_sensitivity": target, "threshold": threshold}
        for name, metric in measures.items():
            for suffix, readings in (("", reading), ("_cross_fitted", held_out)):
                row[f"{name}{suffix}"] = _with_ci(
                    metric, labels, readings.astype(float), patients, cfg.seed, cfg.n_boot
                )
        curve.append(row)
    (own,) = (row for row in curve if row["target_sensitivity"] == cfg.target_sensitivity)
    return {**own, "n_videos": len(oof), "curve": curve}


def weak_specificity(cfg: ClassifyConfig, point: Mapping[str, Any]) -> str | None:
    """The one-line warning when the bundle's target sensitivity leaves its cross-fitted
    specificity below ``cfg.min_specificity``, naming both numbers; None when it does not."""
    spec = point["specificity_cross_fitted"]
    if not spec["value"] < cfg.min_specificity:  # NaN (one class) warns elsewhere
        return None
    better = [
        row
        for row in point["curve"]
        if row["specificity_cross_fitted"]["value"] >= cfg.min_specificity
    ]
    remedy = (
        f"sensitivity {100 * max(r['sensitivity_cross_fitted']['value'] for r in better):.0f}% "
        "is the most any threshold keeps above it"
        if better
        else "no threshold keeps it above that"
    )
    return (
        f"classify: at the target sensitivity {100 * cfg.target_sensitivity:g}% the bundle's "
        f"specificity is {100 * spec['value']:.1f}% (95% CI {100 * spec['low']:.1f}-"
        f"{100 * spec['high']:.1f}, cross-fitted, {point['n_videos']} videos), below "
        f"classify.min_specificity {100 * cfg.min_specificity:g}%: most benign videos will "
        f"read malignant; {remedy} (tables/operating_point lists the trade-off)"
    )


def operating_point_table(point: Mapping[str, Any]) -> pd.DataFrame:
    """The trade-off as a table, one row per target sensitivity (the bundle's own has
    ``chosen`` "yes"): values in percent with their 95% CIs."""
    from usv_ray.evaluate.tables import ci_text

    rows = []
    for point_row in point["curve"]:
        row: dict[str, Any] = {
            "method": METHOD,
            "n_videos": point["n_videos"],
            "chosen": "yes"
            if point_row["target_sensitivity"] == point["target_sensitivity"]
            else "",
            "target_sensitivity": 100.0 * point_row["target_sensitivity"],
            "threshold": point_row["threshold"],
        }
        for name in (
            "sensitivity",
            "specificity",
            "sensitivity_cross_fitted",
            "specificity_cross_fitted",
            "positive_share_cross_fitted",
        ):
            value = point_row[name]
            row[name] = 100.0 * value["value"]
            row[f"{name}_ci"] = ci_text(value["low"], value["high"])
        rows.append(row)
    return pd.DataFrame(rows)


def share_predictions(
    cfg: ClassifyConfig, data: Path, bundle_path: Path, share: pd.DataFrame
) -> pd.DataFrame:
    """The videos of the calibration share (video_id, patient_key, label) read by every
    member of the bundle at ``bundle_path``: with ``member_probs`` (M,), ``prob`` their mean
    (what the bundle deploys) and ``fold``, the share's patients in label-stratified folds
    for the cross-fitted figures (``classify.folds`` of them, fewer for a small share)."""
    from usv_ray.bundle.diagnosis import read_video
    from usv_ray.classify.folds import assign_folds
    from usv_ray.layout import IngestFolder

    model = bundle.load(bundle_path, KIND)
    folder = IngestFolder(data)
    members = []
    for video_id in share["video_id"]:
        entry = folder.journal_entry(video_id) or {}
        images, _, _ = read_video(str(folder.frames(video_id)), None, entry.get("shards"))
        members.append(model.member_probs(images)[0])
    k = min(cfg.folds, share["patient_key"].nunique())
    fold_of = assign_folds(share["video_id"], share["patient_key"], share["label"], k, cfg.seed)
    return share.assign(
        member_probs=[m.astype(np.float32) for m in members],
        prob=[float(np.mean(m)) for m in members],
        fold=share["video_id"].map(fold_of).astype(np.int8),
    )


def calibrate(
    cfg: ClassifyConfig,
    scored: pd.DataFrame,
    out: ClassifyFolder,
    subtitle: str,
    share: pd.DataFrame | None = None,
) -> tuple[Calibrator, dict[str, Any], str]:
    """The bundle's calibrator, operating point and what they were fitted on: the
    calibration ``share``'s members' mean P (:func:`share_predictions`), else the
    out-of-fold predictions in ``scored`` of the bundle's method. Writes
    ``tables/calibration`` (every method's out-of-fold P), ``tables/operating_point`` and
    ``plots/operating_curve.png``, logs the point, and warns when its specificity is below
    ``cfg.min_specificity``."""
    from usv_ray.evaluate.calibration import fit_calibrator
    from usv_ray.evaluate.plots import operating_curve_plot
    from usv_ray.evaluate.tables import write_table as write_results

    calibration = calibration_table(cfg, scored, out.plots, subtitle)
    write_results(calibration, out.tables / "calibration", float_format="{:.3f}")
    if share is None:
        fitted = scored[scored["method"] == METHOD]
        fitted_on = f"out-of-fold predictions of {len(fitted)} videos of {METHOD}"
    else:
        fitted = share
        fitted_on = (
            f"the members' mean P of {len(share)} videos of {share['patient_key'].nunique()} "
            "patients that no member trained on (classify.calibration_share)"
        )
    probs = fitted["prob"].to_numpy().astype(np.float64)
    calibrator = fit_calibrator(fitted["label"].to_numpy(), probs, cfg.calibration)
    point = operating_point(cfg, fitted, calibrator)
    write_results(operating_point_table(point), out.tables / "operating_point")
    operating_curve_plot(
        point, cfg.min_specificity, out.plots / "operating_curve.png", f"{METHOD} · {subtitle}"
    )
    log.info(
        "operating point: calibrated P >= %.3f reads malignant (sensitivity %.1f%%, "
        "specificity %.1f%% cross-fitted on %s)",
        point["threshold"],
        100 * point["sensitivity_cross_fitted"]["value"],
        100 * point["specificity_cross_fitted"]["value"],
        fitted_on,
    )
    if warning := weak_specificity(cfg, point):
        log.warning(warning)
    return calibrator, point, fitted_on


# ---------------------------------------------------------------------------- write and load


def write_calibrated_bundle(
    cfg: ClassifyConfig,
    data: Path,
    out: ClassifyFolder,
    folds: Sequence[int],
    meta: Mapping[str, Any],
    scored: pd.DataFrame,
    share: pd.DataFrame,
    subtitle: str,
) -> dict[str, Any]:
    """Calibrate (:func:`calibrate`) and write the bundle of the members of ``folds``, with
    ``meta``. With a calibration ``share``, the members read its videos first
    (:func:`share_predictions`, written to ``calibration_share.parquet``) from a bundle of
    them in a temporary folder beside ``bundle/``, so that ``bundle/`` never holds an
    uncalibrated one. Returns the record."""
    import shutil

    from usv_ray.bundle import now_utc
    from usv_ray.io import write_table

    read = None
    if len(share):
        log.info(
            "calibration share: reading its %d videos of %d patients with every member",
            len(share),
            share["patient_key"].nunique(),
        )
        members = out.root / "share_members"  # a crash leaves it: the next run replaces it
        shutil.rmtree(members, ignore_errors=True)
        uncalibrated = {
            "calibrator": Calibrator("identity", {}, 0, 0).to_dict(),
            "operating_point": {},
        }
        write_diagnosis_bundle(out, folds, {**meta, **uncalibrated}, members)
        read = share_predictions(cfg, data, members, share)
        shutil.rmtree(members)
        write_table(pa.Table.from_pandas(read, preserve_index=False), out.calibration_share)
    calibrator, point, fitted_on = calibrate(cfg, scored, out, subtitle, read)
    calibration = {
        "calibrator": calibrator.to_dict(),
        "calibrator_fitted_on": fitted_on,
        "calibrator_made_at": now_utc(),
        "operating_point": point,
    }
    return write_diagnosis_bundle(out, folds, {**meta, **calibration})


def write_diagnosis_bundle(
    out: ClassifyFolder,
    folds: Sequence[int],
    meta: Mapping[str, Any],
    folder: Path | None = None,
) -> dict[str, Any]:
    """Write ``out/bundle`` (or ``folder``) from the classify folder ``out``: the members of
    ``folds`` (fold numbers, :data:`FINAL_FOLD` for the final model), and ``meta`` (ingest
    settings, config, fingerprints, metrics, calibrator, operating point). Returns its
    record."""
    files, members = {}, []
    for fold in folds:
        name = fold_name(fold)
        member = {"name": name, "fold": fold}
        for part, path in member_files(out, fold).items():
            files[f"{part}_{name}.pt"] = path
            member[part] = f"{part}_{name}.pt"
        members.append(member)
    return bundle.write(
        folder or out.bundle,
        KIND,
        files,
        {**meta, "method": METHOD, "members": members},
        versioned=("calibrator", "operating_point", "members"),
    ).record
