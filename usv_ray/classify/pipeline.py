"""The classify stage: patient-level k-fold cross-validation of every method of the paper.

For each fold k, a frame CNN is trained on the other folds' patients (a patient-level
share of them validates it; one Ray Train run trains every fold's), then embeds every
frame of the archive into ``features/fold=k``. One Ray Train run then trains every fold's
LSTMs on the cached features (the variable-frame set and each equal-frame set), another
the 3D-CNN baselines on clips. Each fold's videos are predicted by the models that never
saw them, every method into one predictions table, and the paper's tables and figures are
drawn from it.

Output layout under ``out``::

    classify.json               settings and data this folder was made from; its summary
    folds.parquet               video_id, patient_key, label, fold
    runs/                       Ray Train runs: cnn, lstm and video (checkpoints, and each
                                finished model in models/)
    features/fold=k/            512-d feature and P(malignant) of every frame
    predictions/predictions.parquet   video_id, patient_key, fold, method, prob, label
    bundle/                     the diagnosis bundle (usv_ray.classify.bundle): the fold
                                models (and the final one), calibrator, operating point
    tables/calibration.{md,csv}     Brier score and calibration errors before and after
    tables/operating_point.{md,csv} the threshold at the target sensitivity
    tables/table3.{md,csv}      ablation: CNN_Vote, CNN_Aver, Variable-frame CNNLSTM
    tables/table4.{md,csv}      comparison: 3D CNNs, Key_Frame, equal- and variable-frame
    tables/frame_counts.{md,csv}  equal-frame sets of 10..20 frames vs variable-frame
    plots/*.png                 ROC, PR, confusion, probability and reliability plots

Every step skips what a previous run of the same folder finished (a trained fold, a
written cache, finished LSTMs), so a rerun after a crash picks up where it stopped; a
folder made with other settings or data is refused rather than mixed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.classify.methods import EQUAL, TABLE3, TABLE4, VARIABLE, equal_method
from usv_ray.classify.report import describe
from usv_ray.config import Config, to_dict
from usv_ray.errors import UsvRayError
from usv_ray.io import remove_stale_tmp, write_table
from usv_ray.layout import (
    ClassifyFolder,
    IngestFolder,
    LayoutError,
    StageRun,
    digest_rows,
    holds,
)
from usv_ray.schemas import PREDICTIONS

if TYPE_CHECKING:
    from usv_ray.classify.cnn import CnnFold

log = logging.getLogger(__name__)


class ClassifyError(UsvRayError, ValueError):
    """The data cannot be classified as asked (no labelled videos, too few patients, ...)."""


@dataclass(frozen=True)
class ClassifySummary:
    out: Path
    videos: int  # labelled videos cross-validated
    patients: int
    table4: pd.DataFrame  # the paper's Table 4 for this data
    bundle: dict  # the diagnosis bundle's record (bundle/bundle.json)
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        from usv_ray.evaluate.tables import to_markdown

        point = self.bundle["operating_point"]
        table = self.table4[
            ["method", "n_videos", "accuracy", "sensitivity", "specificity", "roc_auc"]
        ]
        return (
            f"classify: {self.videos} videos of {self.patients} patients cross-validated in "
            f"{self.seconds:.0f} s\n{to_markdown(table)}\n"
            f"  tables: {self.out / 'tables'}\n"
            f"  plots: {self.out / 'plots'}\n"
            f"  predictions: {self.out / 'predictions'}\n"
            f"  bundle: {self.out / 'bundle'} ({self.bundle['version']}: "
            f"{len(self.bundle['members'])} members, {self.bundle['calibrator']['method']} "
            f"calibration, threshold {point['threshold']:.3f} at sensitivity "
            f"{point['target_sensitivity']:g}: specificity "
            f"{100 * point['specificity_cross_fitted']['value']:.1f}% cross-fitted)"
        )


def labelled_videos(data: Path) -> pd.DataFrame:
    """video_id, patient_key, label of every ingested video with a known label and frames.

    Raises:
        ClassifyError: no videos.parquet in ``data``, or no labelled video with frames.
    """
    folder = IngestFolder(data)
    try:
        videos = folder.read_videos(["video_id", "patient_key", "label", "status"])
    except LayoutError as exc:
        raise ClassifyError(str(exc)) from exc
    videos = videos[(videos["status"] == "ok") & videos["label"].isin([0, 1])]
    has_frames = [folder.frames(v).exists() for v in videos["video_id"]]
    videos = (
        videos[np.asarray(has_frames, dtype=bool)]
        .sort_values("video_id", kind="stable")
        .reset_index(drop=True)
    )
    if videos.empty:
        raise ClassifyError(f"no ingested video with a benign/malignant label in {data}")
    return videos[["video_id", "patient_key", "label"]].astype({"label": np.int8})


def data_fingerprint(videos: pd.DataFrame) -> str:
    """The labelled videos (and their patients and labels) a folder was trained on."""
    return digest_rows(videos[["video_id", "patient_key", "label"]].itertuples(index=False))


def _fold_jobs(cfg: Config, folds: pd.DataFrame) -> list[CnnFold]:
    """Each fold's training and validation videos (:func:`usv_ray.classify.folds.fold_split`):
    the validation share picks the best epoch of every model of the fold (CNN, LSTMs,
    3D CNNs), none of which trains on it."""
    from usv_ray.classify.cnn import CnnFold
    from usv_ray.classify.folds import fold_split

    return [CnnFold(k, *fold_split(folds, k, cfg.classify)) for k in range(cfg.classify.folds)]


def _train_cnns(cfg: Config, data: Path, out: ClassifyFolder, folds: pd.DataFrame) -> None:
    """Every fold's CNN (one Ray Train run), then each fold's feature cache not written yet."""
    from usv_ray.classify.cnn import fit_cnns
    from usv_ray.classify.features import cache_features

    c = cfg.classify
    missing = [k for k in range(c.folds) if not (out.features / f"fold={k}").exists()]
    if not missing:
        return  # every cache written: the CNNs are not needed again
    everything = folds["video_id"].tolist()
    jobs = _fold_jobs(cfg, folds)
    started = time.perf_counter()
    log.info(
        "training the frame CNNs of %d folds (%s videos, %s validate) for %d epochs",
        c.folds,
        "/".join(str(len(job.train_ids)) for job in jobs),
        "/".join(str(len(job.val_ids)) for job in jobs),
        c.cnn.epochs,
    )
    runs = fit_cnns(c, data, jobs, out.runs, "cnn")
    log.info(
        "CNNs done in %.0f s (best validation loss %s)",
        time.perf_counter() - started,
        " / ".join(f"{run.best_value:.3f} (epoch {run.best_epoch + 1})" for run in runs.values()),
    )
    for k in missing:
        log.info("fold %d/%d: caching the features of %d videos", k + 1, c.folds, len(everything))
        cache_features(c, data, everything, runs[k].path, k, out.features)


def _frame_rows(out: ClassifyFolder, k: int) -> pd.DataFrame:
    columns = ["video_id", "seq_index", "frame_index", "frame_prob"]
    return pq.read_table(out.features / f"fold={k}", columns=columns).to_pandas()


def _annotated_key_frames(data: Path, video_ids: list[str]) -> dict[str, int]:
    from usv_ray.classify.baselines import annotated_key_frames

    tables = [
        pq.read_table(path, columns=["video_id", "frame_index", "source"])
        for video_id in video_ids
        if (path := IngestFolder(data).tracklets(video_id)).exists()
    ]
    if not tables:
        return {}
    tracklets = pa.concat_tables(tables).to_pandas()
    # a detector's tracklets say where it saw a nodule, not where a reader put a key frame
    return annotated_key_frames(tracklets[tracklets["source"] == "annotated"])


def _frame_baselines(
    cfg: Config, data: Path, out: ClassifyFolder, folds: pd.DataFrame
) -> pd.DataFrame:
    """CNN_Vote, CNN_Aver and Key_Frame of every video, from its own fold's cache."""
    from usv_ray.classify.baselines import average, key_frame, vote

    annotated = _annotated_key_frames(data, folds["video_id"].tolist())
    parts = []
    for k in range(cfg.classify.folds):
        tested = set(folds.loc[folds["fold"] == k, "video_id"])
        frames = _frame_rows(out, k)
        frames = frames[frames["video_id"].isin(tested)]
        for scores in (
            vote(frames, cfg.classify.threshold),
            average(frames),
            key_frame(frames, annotated),
        ):
            parts.append(
                pd.DataFrame(
                    {"video_id": scores.index, "method": scores.name, "prob": scores.to_numpy()}
                )
            )
    return pd.concat(parts, ignore_index=True)


def _lstms(cfg: Config, out: ClassifyFolder, folds: pd.DataFrame) -> pd.DataFrame:
    """Every fold's variable- and equal-frame LSTMs, trained in one run, and their predictions."""
    from usv_ray.classify.lstm import LstmJob, fit_lstms, job_sequences, predict

    c = cfg.classify
    frame_counts = sorted({*c.frame_counts, c.equal_frames})
    lengths = _frame_rows(out, 0).groupby("video_id").size()  # cached frames per video
    longest = {  # fold k -> the longest video it trains on
        k: int(lengths[folds.loc[folds["fold"] != k, "video_id"]].max()) for k in range(c.folds)
    }
    jobs = [
        LstmJob(k, n)
        for k in range(c.folds)
        for n in (None, *frame_counts)
        if n is None or n <= longest[k]
    ]
    for n in frame_counts:
        short = [k for k in range(c.folds) if n > longest[k]]
        if short:
            log.warning(
                "equal-frame set N=%d: no training video has %d frames in fold(s) %s; "
                "it has no predictions there",
                n,
                n,
                short,
            )
    videos = {
        row.video_id: (int(row.label), int(row.fold)) for row in folds.itertuples(index=False)
    }
    log.info(
        "training %d LSTMs (%d folds x variable + %d equal-frame sets)",
        len(jobs),
        c.folds,
        len(frame_counts),
    )
    started = time.perf_counter()
    val_ids = {job.fold: job.val_ids for job in _fold_jobs(cfg, folds)}
    weights = fit_lstms(c, out.features, videos, jobs, out.runs, "lstm", val_ids)
    log.info("LSTMs done in %.0f s", time.perf_counter() - started)
    parts = []
    for job in jobs:
        tested = job_sequences(out.features, videos, job, train=False)
        method = VARIABLE if job.frames is None else equal_method(job.frames, c.equal_frames)
        parts.append(
            pd.DataFrame(
                {
                    "video_id": [s.video_id for s in tested],
                    "method": method,
                    "prob": predict(weights[job], tested),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _video_models(
    cfg: Config, data: Path, out: ClassifyFolder, folds: pd.DataFrame
) -> pd.DataFrame:
    """The 3D-CNN baselines of every fold, trained in one run, and their predictions."""
    from usv_ray.classify.video import fit_video_models, predict_video_models

    c = cfg.classify
    fold_of = dict(zip(folds["video_id"], folds["fold"].astype(int), strict=True))
    log.info(
        "training %d 3D-CNN baselines x %d folds on %d-frame clips of %d px for %d epochs",
        len(c.video.models),
        c.folds,
        c.video.clip_frames,
        c.video.clip_size,
        c.video.epochs,
    )
    started = time.perf_counter()
    val_ids = {job.fold: job.val_ids for job in _fold_jobs(cfg, folds)}
    states = fit_video_models(c, data, fold_of, out.runs, "video", val_ids)
    log.info("3D-CNN baselines done in %.0f s", time.perf_counter() - started)
    return predict_video_models(c, states, data, fold_of)[["video_id", "method", "prob"]]


def _predictions(folds: pd.DataFrame, scored: pd.DataFrame) -> pa.Table:
    rows = scored.merge(folds, on="video_id", how="left", validate="many_to_one")
    rows = rows.sort_values(["method", "fold", "video_id"], kind="stable")
    columns = {field.name: rows[field.name] for field in PREDICTIONS}
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=PREDICTIONS, preserve_index=False)


def _tables(cfg: Config, predictions: pd.DataFrame, out: ClassifyFolder) -> pd.DataFrame:
    """Write Tables 3 and 4 and the frame-count table; return Table 4."""
    from usv_ray.evaluate.tables import method_table
    from usv_ray.evaluate.tables import write_table as write_results

    c = cfg.classify

    def table(methods) -> pd.DataFrame:
        chosen = predictions[predictions["method"].isin(methods)]
        return method_table(chosen, threshold=c.threshold, n_boot=c.n_boot, seed=c.seed)

    write_results(table(TABLE3), out.tables / "table3")
    table4 = table(TABLE4)
    write_results(table4, out.tables / "table4")
    counts = sorted({*c.frame_counts, c.equal_frames})
    frames = table([equal_method(n, c.equal_frames) for n in counts] + [VARIABLE])
    frames["method"] = frames["method"].replace(EQUAL, f"{EQUAL} (N={c.equal_frames})")
    order = {f"{EQUAL} (N={n})": i for i, n in enumerate(counts)}
    frames = frames.sort_values("method", key=lambda m: m.map(order).fillna(len(order)))
    write_results(frames.reset_index(drop=True), out.tables / "frame_counts")
    return table4


def _plots(cfg: Config, predictions: pd.DataFrame, out: ClassifyFolder, subtitle: str) -> None:
    from usv_ray.classify.methods import method_slug
    from usv_ray.evaluate.plots import confusion_plot, pr_plot, probability_plot, roc_plot

    c = cfg.classify
    shown = [m for m in (*TABLE4, "CNN_Vote", "CNN_Aver") if m in set(predictions["method"])]
    curves = {
        m: (
            predictions.loc[predictions["method"] == m, "label"].to_numpy(),
            predictions.loc[predictions["method"] == m, "prob"].to_numpy(),
        )
        for m in shown
    }
    plots = out.plots
    roc_plot(curves, plots / "roc.png", subtitle)
    pr_plot(curves, plots / "pr.png", subtitle)
    for method, (labels, probs) in curves.items():
        slug = method_slug(method)
        confusion_plot(
            labels, probs, plots / f"confusion_{slug}.png", f"{method} · {subtitle}", c.threshold
        )
        probability_plot(
            labels,
            probs,
            plots / f"probabilities_{slug}.png",
            f"{method} · {subtitle}",
            c.threshold,
        )


def _final_model(cfg: Config, data: Path, out: ClassifyFolder, folds: pd.DataFrame) -> None:
    """One more frame CNN and variable-frame LSTM, on every labelled video, each trained
    for the epochs its fold models chose (no validation set: each keeps its last epoch)."""
    from usv_ray.classify.bundle import chosen_epochs, member_files
    from usv_ray.classify.cnn import CnnFold, fit_cnns
    from usv_ray.classify.features import cache_features
    from usv_ray.classify.folds import FINAL_FOLD
    from usv_ray.classify.lstm import LstmJob, fit_lstms

    fold_files = [member_files(out, k) for k in range(cfg.classify.folds)]
    c = replace(
        cfg.classify,
        cnn=replace(cfg.classify.cnn, epochs=chosen_epochs([f["cnn"] for f in fold_files])),
        lstm=replace(cfg.classify.lstm, epochs=chosen_epochs([f["lstm"] for f in fold_files])),
    )
    everything = folds["video_id"].tolist()
    log.info(
        "final model on all %d labelled videos: frame CNN %d epochs, LSTM %d epochs (the "
        "folds' median best)",
        len(everything),
        c.cnn.epochs,
        c.lstm.epochs,
    )
    final = CnnFold(FINAL_FOLD, tuple(everything), ())
    trained = fit_cnns(c, data, [final], out.runs, "cnn_final")[FINAL_FOLD]
    if not (out.features / "final").exists():
        cache_features(c, data, everything, trained.path, FINAL_FOLD, out.features)
    videos = {
        row.video_id: (int(row.label), int(row.fold)) for row in folds.itertuples(index=False)
    }
    job = LstmJob(FINAL_FOLD)
    fit_lstms(c, out.features, videos, [job], out.runs, "lstm_final")


def _bundle(
    cfg: Config,
    data: Path,
    out: ClassifyFolder,
    folds: pd.DataFrame,
    share: pd.DataFrame,
    scored: pd.DataFrame,
    subtitle: str,
    run: StageRun,
) -> dict:
    """The final model if asked, then the bundle, calibrated on the calibration ``share``
    when there is one, else out of fold."""
    from usv_ray.bundle.diagnosis import FRAME_SETTINGS
    from usv_ray.classify.bundle import write_calibrated_bundle
    from usv_ray.classify.folds import FINAL_FOLD
    from usv_ray.evaluate.metrics import METRICS

    c = cfg.classify
    if c.final_model:
        _final_model(cfg, data, out, folds)
    ingest = IngestFolder(data).settings()
    table = pd.read_csv(out.tables / "table4.csv").set_index("method")
    metrics = {
        name: {"value": float(table.loc[VARIABLE, name]), "ci": table.loc[VARIABLE, f"{name}_ci"]}
        for name in METRICS
    }
    meta = {
        "ingest": {name: ingest[name] for name in FRAME_SETTINGS},
        "config": {"classify": to_dict(c)},
        "fingerprints": {"folder": run.fingerprint, "data": data_fingerprint(folds)},
        "trained_on": {
            "videos": len(folds),
            "patients": int(folds["patient_key"].nunique()),
            "malignant": int(folds["label"].sum()),
        },
        "metrics": {"percent, out-of-fold, patient-bootstrap 95% CI": metrics},
    }
    folds_in = [*range(c.folds), *([FINAL_FOLD] if c.final_model else [])]
    return write_calibrated_bundle(c, data, out, folds_in, meta, scored, share, subtitle)


@holds("classify")
def run_classify(cfg: Config, data: str | Path, out: str | Path) -> ClassifySummary:
    """Cross-validate every method on the ingested videos of ``data`` into ``out``, then
    write the diagnosis bundle (``out/bundle``).

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray.classify.folds import calibration_share, fold_table
    from usv_ray.runtime import ensure_ray

    data, out = Path(data), ClassifyFolder(out)
    c = cfg.classify
    videos = labelled_videos(data)
    IngestFolder(data).settings()  # the bundle needs it: fail now, not after the training
    if (
        not 0 < c.target_sensitivity <= 1
        or not 0 <= c.min_specificity <= 1
        or c.calibration_bins < 1
    ):  # as for the bundle
        raise ClassifyError(
            "classify.target_sensitivity must be in (0, 1], classify.min_specificity in "
            f"[0, 1] and classify.calibration_bins at least 1, got {c.target_sensitivity}, "
            f"{c.min_specificity} and {c.calibration_bins}"
        )
    run = StageRun(out.record, {"classify": c}, data=data_fingerprint(videos), data_folder=data)
    run.claim()
    remove_stale_tmp(out.features)
    try:
        share = calibration_share(videos, c)
        folds = fold_table(videos[~videos["video_id"].isin(share["video_id"])], c)
    except ValueError as exc:
        raise ClassifyError(str(exc)) from exc
    write_table(pa.Table.from_pandas(folds, preserve_index=False), out.folds)
    log.info(
        "classify: %d videos of %d patients (%d malignant) in %d patient-level folds%s",
        len(folds),
        folds["patient_key"].nunique(),
        int(folds["label"].sum()),
        c.folds,
        f"; {len(share)} videos of {share['patient_key'].nunique()} patients held out of "
        "every member to calibrate on"
        if len(share)
        else "",
    )

    ensure_ray(cfg.ray)
    _train_cnns(cfg, data, out, folds)
    scored = [_frame_baselines(cfg, data, out, folds), _lstms(cfg, out, folds)]
    if c.video.models:
        scored.append(_video_models(cfg, data, out, folds))
    predictions = _predictions(folds, pd.concat(scored, ignore_index=True))
    write_table(predictions, out.predictions)
    frame = predictions.to_pandas()
    table4 = _tables(cfg, frame, out)
    subtitle = (
        f"{len(folds)} videos, {folds['patient_key'].nunique()} patients from {data}; "
        f"{c.folds}-fold CV, CNN {c.cnn.epochs} ep, LSTM {c.lstm.epochs} ep, seed {c.seed}"
    )
    _plots(cfg, frame, out, subtitle)
    bundle = _bundle(cfg, data, out, folds, share, frame, subtitle, run)
    patients = int(folds["patient_key"].nunique())
    seconds = run.finish({"videos": len(folds), "patients": patients, "bundle": bundle["version"]})
    describe(out.root, data)
    return ClassifySummary(out.root, len(folds), patients, table4, bundle, seconds)
