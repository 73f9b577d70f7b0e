"""The targets of ``usv-ray tune`` (:data:`TARGETS`) and its entry point :func:`run_tune`.

A target is a :class:`~usv_ray.tune.sweep.Target` built from the config and the data
folder; :func:`usv_ray.tune.sweep.run_target` runs it. This module imports the engine and
the targets' modules, never the reverse.

The training targets' points are Tune trials that launch the stage's own Ray Train run
(``fit_cnns``, ``fit_lstms``, ``fit_reid``, all on :func:`usv_ray.runner.train_models`, which adds
``TuneReportCallback`` inside a Tune trial). The CNN and re-ID runs report every epoch,
so ASHA can stop poor trials; an LSTM run reports once per model, so its trial reports
its validation metrics itself when the model is trained. The tau target
(:mod:`usv_ray.tune.tau`) trains nothing and runs as a plain loop.

The data a trial trains and validates on comes from the stages' own split functions, so
a sweep cannot tune on other data than the stage trains on, and never touches a test set:
the classify targets use fold ``tune.fold``'s training videos and validation share as
:func:`usv_ray.classify.folds.fold_split` gives them to that fold's CNN in ``usv-ray
classify`` (the LSTM targets read that CNN's features, which it computed for those videos
without training on them); the re-ID target uses :func:`usv_ray.reid.pairs.split_tracklets`
and the stage's P clamp :func:`usv_ray.reid.pairs.clamp_p`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from usv_ray.config import Config, ConfigError
from usv_ray.io import write_table
from usv_ray.tune.sweep import (
    Target,
    TuneError,
    TuneSummary,
    TuneTrials,
    apply_params,
    run_name,
    run_target,
)
from usv_ray.tune.tau import tau_target

log = logging.getLogger(__name__)

CLASSIFY_COLUMNS = ("epoch", "best_val_loss", "val_loss", "val_acc")
LSTM_COLUMNS = ("best_val_loss", "val_auc", "val_acc", "val_videos", "train_videos")
REID_COLUMNS = ("epoch", "best_val_acc", "val_acc", "val_auc", "train_loss")


# -- the frame CNN ----------------------------------------------------------------------


def _labelled_videos(data: Path) -> pd.DataFrame:
    """video_id, patient_key, label of the ingested videos with a label and frames."""
    from usv_ray.classify.pipeline import ClassifyError, labelled_videos
    from usv_ray.layout import IngestFolder

    if not IngestFolder(data).videos.exists():
        raise TuneError(
            f"{IngestFolder(data).videos} not found: the cnn target needs an ingest folder as "
            "--data"
        )
    try:
        return labelled_videos(data)
    except ClassifyError as exc:
        raise TuneError(str(exc)) from exc


def _with_folds(cfg: Config, videos: pd.DataFrame) -> pd.DataFrame:
    """``videos`` with the classify fold of each (classify's own fold table)."""
    from usv_ray.classify.folds import fold_table

    try:
        return fold_table(videos, cfg.classify)
    except ValueError as exc:
        raise TuneError(str(exc)) from exc


def _fold_split(cfg: Config, folds: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(training, validation) videos of fold ``tune.fold``'s CNN, as classify splits them;
    ``folds`` has video_id, patient_key, label and fold."""
    from usv_ray.classify.folds import fold_split

    try:
        train_ids, val_ids = fold_split(folds, cfg.tune.fold, cfg.classify)
    except ValueError as exc:
        raise TuneError(f"tune.fold={cfg.tune.fold}: {exc}") from exc
    return list(train_ids), list(val_ids)


def cnn_trial(
    params: dict, *, cfg: Config, data: str, train_ids: list, val_ids: list, storage: str
) -> None:
    """One CNN trial: the frame CNN with ``params``, validated every epoch (ASHA needs it)."""
    from usv_ray.classify.cnn import CnnFold, fit_cnns

    c = dataclasses.replace(apply_params(cfg, params).classify, val_every=1)
    fold = CnnFold(cfg.tune.fold, tuple(train_ids), tuple(val_ids))
    fit_cnns(c, Path(data), [fold], Path(storage), run_name("cnn"))


def _log_uniform(bounds: tuple[float, float], name: str) -> Any:
    from ray import tune

    low, high = bounds
    if not 0 < low <= high:
        raise TuneError(f"tune.{name} must be 0 < low <= high, got {bounds}")
    return tune.loguniform(low, high) if low < high else low


def _choice(values: tuple, name: str) -> Any:
    from ray import tune

    if not values:
        raise TuneError(f"tune.{name} is empty")
    return tune.choice(list(values)) if len(values) > 1 else values[0]


def cnn_target(cfg: Config, data: Path, out: Path) -> Target:
    """Learning rate and batch size of the frame CNN."""
    from ray import tune

    train_ids, val_ids = _fold_split(cfg, _with_folds(cfg, _labelled_videos(data)))
    c = cfg.classify
    trainable = tune.with_parameters(
        cnn_trial,
        cfg=cfg,
        data=str(data.resolve()),
        train_ids=train_ids,
        val_ids=val_ids,
        storage=str((out / "runs").resolve()),
    )
    return Target(
        "cnn",
        {
            "classify.cnn.lr": _log_uniform(cfg.tune.cnn_lr, "cnn_lr"),
            "classify.cnn.batch_size": _choice(cfg.tune.cnn_batch_size, "cnn_batch_size"),
        },
        "best_val_loss",
        "min",
        CLASSIFY_COLUMNS,
        *_settings(cfg, data, "classify", train_ids=train_ids, val_ids=val_ids),
        TuneTrials.of(trainable, "epoch", c.cnn.epochs, c.workers, c.cpus_per_worker, c.use_gpu),
    )


def _settings(
    cfg: Config, data: Path, section: str, **inputs: Any
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """What a sweep's results depend on: the stage's and the sweep's settings, its
    ``inputs`` (the videos or tracklets it reads); and the folder it reads."""
    return {section: getattr(cfg, section), "tune": cfg.tune}, inputs, data.resolve()


# -- the LSTMs on cached features ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LstmInputs:
    """What an LSTM trial reads: one fold's cache and its training/validation videos."""

    features: str  # a classify folder's features/ (or a capped copy of fold k's cache)
    fold: int  # the fold whose CNN computed the features
    videos: dict[str, tuple[int, int]]  # video_id -> (label, fold): fold k = validation


def _check_split_settings(cfg: Config, data: Path) -> None:
    """Refuse a classify folder made with other split settings than ``cfg``.

    Fold k's features come from a CNN trained on fold k's training videos less its
    validation share; with another seed or val_fraction the LSTM would validate on videos
    that CNN trained on (their features are overfit, the scores optimistic).
    """
    import json

    from usv_ray.classify.folds import SPLIT_SETTINGS

    record = data / "classify.json"
    if not record.exists():
        raise TuneError(f"{record} not found: --data must be a classify folder")
    made = json.loads(record.read_text()).get("classify", {})
    wrong = [k for k in SPLIT_SETTINGS if k in made and made[k] != getattr(cfg.classify, k)]
    if wrong:
        fix = " ".join(f"--set classify.{k}={made[k]}" for k in wrong)
        raise TuneError(f"{data} was classified with other split settings: tune with {fix}")


def _lstm_inputs(cfg: Config, data: Path) -> LstmInputs:
    path = data / "folds.parquet"
    k = cfg.tune.fold
    if not path.exists() or not (data / "features" / f"fold={k}").exists():
        raise TuneError(
            f"{data} holds no folds.parquet and features/fold={k}: the lstm, equal_frames "
            "and variable_max targets need a classify folder (usv-ray classify --out) as --data"
        )
    _check_split_settings(cfg, data)
    folds = pq.read_table(path).to_pandas()
    train_ids, val_ids = _fold_split(cfg, folds)
    labels = dict(zip(folds["video_id"], folds["label"].astype(int), strict=True))
    # the job of fold k trains on every video whose fold is not k and validates on fold k's
    held = set(val_ids)
    return LstmInputs(
        str((data / "features").resolve()),
        k,
        {v: (labels[v], k if v in held else k + 1) for v in [*train_ids, *val_ids]},
    )


def lstm_trial(
    params: dict, *, cfg: Config, inputs: LstmInputs, features: dict, storage: str
) -> None:
    """One LSTM trial: train on the training videos, keeping the best epoch on the
    validation videos as the stage does, then report its validation metrics.

    ``features`` maps a value of ``ingest.n_frames`` (variable_max) to its capped cache;
    the equal-frame N comes from ``classify.equal_frames`` when the sweep sets it.
    """
    from ray import tune

    from usv_ray.classify.lstm import LstmJob, fit_lstms, job_sequences, predict
    from usv_ray.evaluate.metrics import MetricWarning, roc_auc

    trial_cfg = apply_params(cfg, params)
    c = trial_cfg.classify
    frames = c.equal_frames if "classify.equal_frames" in params else None
    folder = Path(features.get(trial_cfg.ingest.n_frames, inputs.features))
    job = LstmJob(inputs.fold, frames)
    # as in the stage: the validation videos sit outside the tested fold, and the runner
    # leaves them out of training and keeps the epoch with the best loss on them
    held_ids = {v for v, (_, fold) in inputs.videos.items() if fold == inputs.fold}
    videos = {v: (label, inputs.fold + 1) for v, (label, _) in inputs.videos.items()}
    val_ids = {inputs.fold: sorted(held_ids)}
    name = run_name("lstm")
    weights = fit_lstms(c, folder, videos, [job], Path(storage), name, val_ids)[job]
    sequences = job_sequences(folder, videos, job, train=True)
    trained = [s for s in sequences if s.video_id not in held_ids]
    held = [s for s in sequences if s.video_id in held_ids]
    prob = predict(weights, held)  # (V,) P(malignant)
    label = np.asarray([s.label for s in held], dtype=np.int64)  # (V,)
    if len(held) == 0:
        val_loss, auc, acc = math.nan, math.nan, math.nan
    else:
        p = np.clip(prob, 1e-7, 1 - 1e-7)
        val_loss = float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))
        acc = float(np.mean((prob >= c.threshold) == label))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # one-class validation: NaN
            auc = roc_auc(label, prob)
    tune.report(
        {
            "epoch": c.lstm.epochs - 1,
            "best_val_loss": val_loss,  # the name the classify targets share
            "val_auc": auc,
            "val_acc": acc,
            "val_videos": len(held),
            "train_videos": len(trained),
        }
    )


def _lengths(inputs: LstmInputs) -> pd.Series:
    """Cached frames of every video of the sweep (fold k's cache)."""
    table = pq.read_table(Path(inputs.features) / f"fold={inputs.fold}", columns=["video_id"])
    counts = table.to_pandas().groupby("video_id").size()
    return counts.reindex(list(inputs.videos)).fillna(0).astype(int)


def _capped_folder(out: Path, cap: int) -> str:
    """Where the sweep in ``out`` keeps the cache capped at ``cap`` frames per video."""
    return str((out / "features" / f"max={cap}").resolve())


def _capped_cache(inputs: LstmInputs, cap: int, out: Path) -> None:
    """Write into ``_capped_folder(out, cap)`` a copy of fold k's cache with at most ``cap``
    frames per video, spread uniformly over the cached ones as ingest samples them: the
    variable-frame set of ``ingest.n_frames=cap``, without ingesting again. Written once,
    reused by reruns."""
    from usv_ray.frames import uniform_positions

    target = Path(_capped_folder(out, cap)) / f"fold={inputs.fold}" / "features.parquet"
    if not target.exists():
        table = pq.read_table(Path(inputs.features) / f"fold={inputs.fold}").to_pandas()
        table = table.sort_values(["video_id", "seq_index"], kind="stable")
        keep = []
        for _, rows in table.groupby("video_id", sort=False):
            index = rows.index.to_numpy()
            keep.append(index if len(index) <= cap else index[uniform_positions(len(index), cap)])
        import pyarrow as pa

        kept = table.loc[np.concatenate(keep)] if keep else table
        write_table(pa.Table.from_pandas(kept, preserve_index=False), target)


def _lstm_target(cfg: Config, data: Path, out: Path, kind: str) -> Target:
    from ray import tune

    inputs = _lstm_inputs(cfg, data)
    c, t = cfg.classify, cfg.tune
    train_lengths = _lengths(inputs)[[v for v, (_, f) in inputs.videos.items() if f != t.fold]]
    longest = int(train_lengths.max())
    features: dict[int, str] = {}
    prepare = None
    if kind == "lstm":
        space = {
            "classify.lstm.lr": _log_uniform(t.lstm_lr, "lstm_lr"),
            "classify.lstm.batch_size": _choice(t.lstm_batch_size, "lstm_batch_size"),
        }
    elif kind == "equal_frames":
        counts = sorted(n for n in set(t.frame_counts) if n <= longest)
        if len(counts) < len(set(t.frame_counts)):
            log.warning(
                "tune equal_frames: no training video has more than %d cached frames; "
                "leaving out N = %s",
                longest,
                sorted(n for n in set(t.frame_counts) if n > longest),
            )
        if not counts:
            raise TuneError(f"no tune.frame_counts value fits the {longest}-frame videos")
        space = {"classify.equal_frames": tune.grid_search(counts)}
    else:
        caps = sorted(m for m in set(t.variable_max) if m >= 1)
        if not caps:
            raise TuneError(f"tune.variable_max holds no positive value: {t.variable_max}")
        if max(caps) > longest:
            log.warning(
                "tune variable_max: the cache holds at most %d frames per video (ingest "
                "n_frames); caps above it train on the same set",
                longest,
            )
        features = {m: _capped_folder(out, m) for m in caps}
        space = {"ingest.n_frames": tune.grid_search(caps)}

        def prepare() -> None:
            for m in caps:
                _capped_cache(inputs, m, out)

    trainable = tune.with_parameters(
        lstm_trial,
        cfg=cfg,
        inputs=inputs,
        features=features,
        storage=str((out / "runs").resolve()),
    )
    return Target(
        kind,
        space,
        "best_val_loss",
        "min",
        LSTM_COLUMNS,
        *_settings(cfg, data, "classify", videos=sorted(inputs.videos), ingest_cap=kind),
        TuneTrials.of(
            trainable,
            None,  # one report per trial: nothing for ASHA to stop
            c.lstm.epochs,
            c.lstm.workers,
            c.cpus_per_worker,
            c.use_gpu,
        ),
        prepare=prepare,
    )


# -- the re-ID model ---------------------------------------------------------------------


def reid_trial(
    params: dict,
    *,
    cfg: Config,
    data: str,
    train_ids: list,
    val_ids: list,
    n_identities: int,
    storage: str,
) -> None:
    """One re-ID trial: ``reid.embed_model`` with ``params``, validated every epoch."""
    from usv_ray.reid.pairs import clamp_p
    from usv_ray.reid.training import fit_reid

    r = clamp_p(apply_params(cfg, params).reid, n_identities)  # as run_reid clamps it
    fit_reid(r, r.embed_model, Path(data), train_ids, val_ids, Path(storage), run_name("reid"))


def reid_target(cfg: Config, data: Path, out: Path) -> Target:
    """Learning rate and P (nodules per P x K batch) of the re-ID model."""
    from ray import tune

    from usv_ray.layout import IngestFolder, LayoutError
    from usv_ray.reid.pairs import clamp_p, split_tracklets, training_nodules

    r = cfg.reid
    try:
        table = IngestFolder(data).read_tracklets().to_pandas()
    except LayoutError as exc:
        raise TuneError(str(exc)) from exc
    try:
        splits = split_tracklets(table, r)
        n_identities = training_nodules(splits)
        p_values = sorted(
            {clamp_p(dataclasses.replace(r, p=p), n_identities).p for p in cfg.tune.reid_p}
        )
    except ValueError as exc:
        raise TuneError(f"re-ID split: {exc}") from exc
    train_ids = splits.loc[splits["split"] == "train", "tracklet_id"].tolist()
    val_ids = splits.loc[splits["split"] == "val", "tracklet_id"].tolist()
    trainable = tune.with_parameters(
        reid_trial,
        cfg=cfg,
        data=str(data.resolve()),
        train_ids=train_ids,
        val_ids=val_ids,
        n_identities=n_identities,
        storage=str((out / "runs").resolve()),
    )
    return Target(
        "reid",
        {"reid.lr": _log_uniform(cfg.tune.reid_lr, "reid_lr"), "reid.p": _choice(p_values, "p")},
        "best_val_acc",
        "max",
        REID_COLUMNS,
        *_settings(cfg, data, "reid", train_ids=train_ids, val_ids=val_ids),
        TuneTrials.of(trainable, "epoch", r.epochs, r.workers, r.cpus_per_worker, r.use_gpu),
    )


# -- the registry and the entry point ------------------------------------------------------

TARGETS: dict[str, Callable[[Config, Path, Path], Target]] = {
    "cnn": cnn_target,
    "lstm": lambda cfg, data, out: _lstm_target(cfg, data, out, "lstm"),
    "equal_frames": lambda cfg, data, out: _lstm_target(cfg, data, out, "equal_frames"),
    "variable_max": lambda cfg, data, out: _lstm_target(cfg, data, out, "variable_max"),
    "reid": reid_target,
    "tau": tau_target,
}


def run_tune(
    cfg: Config,
    target: str,
    data: str | Path,
    out: str | Path,
    callbacks: Sequence[Any] = (),
) -> TuneSummary:
    """Sweep ``target`` on ``data`` into ``out``; ``callbacks`` are extra Tune callbacks.

    ``data`` is the ingest folder for ``cnn`` and ``reid``, a classify folder for
    ``lstm``, ``equal_frames`` and ``variable_max``, a re-ID folder for ``tau``.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown tune target {target!r} (known: {', '.join(TARGETS)})")
    return run_target(cfg, TARGETS[target](cfg, Path(data), Path(out)), out, callbacks)
