"""The clustering threshold tau, swept on the re-ID stage's cached validation embeddings.

No training: every trial clusters the validation patients' embeddings at one tau
(:func:`usv_ray.cluster.threshold.cluster_patients`, ``index.method``) and scores the
clusters against the annotated nodules with the pairwise F-score
(:func:`usv_ray.cluster.metrics.pairwise_scores`). The trials are a Tune grid over
``tune.tau`` on reused actors (the embeddings travel once, through the object store), so
a sweep of ten values takes seconds; the best tau goes to ``index.tau`` in best.yaml.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.cluster.compare import best_on_grid
from usv_ray.config import Config
from usv_ray.tune.sweep import (
    EXPERIMENT,
    TuneError,
    TuneSummary,
    best_row,
    check_finished,
    claim,
    write_best_config,
    write_results,
)

log = logging.getLogger(__name__)

KEY = "index.tau"


def validation_embeddings(reid: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The validation tracklets with a known nodule in a re-ID folder:
    (embeddings (N, D) float32, patient_key (N,), nodule_id (N,)), by tracklet_id."""
    splits_path, folder = reid / "splits.parquet", reid / "embeddings"
    if not splits_path.exists() or not folder.exists():
        raise TuneError(
            f"{reid} holds no splits.parquet and embeddings/: the tau target needs a re-ID "
            "folder (usv-ray reid --out) as --data"
        )
    splits = pq.read_table(splits_path, columns=["tracklet_id", "nodule_id", "split"])
    val = splits.filter(pc.and_(pc.equal(splits["split"], "val"), pc.is_valid(splits["nodule_id"])))
    nodule_of = dict(zip(val["tracklet_id"].to_pylist(), val["nodule_id"].to_pylist(), strict=True))
    table = pq.read_table(folder, columns=["tracklet_id", "patient_key", "embedding"])
    table = table.filter(pc.is_in(table["tracklet_id"], value_set=val["tracklet_id"]))
    table = table.sort_by("tracklet_id")
    if table.num_rows == 0:
        raise TuneError(f"no validation tracklet with a nodule has an embedding in {folder}")
    flat = np.asarray(table["embedding"].combine_chunks().flatten(), dtype=np.float32)
    embeddings = flat.reshape(table.num_rows, -1)  # (N, D)
    patients = np.asarray(table["patient_key"].to_pylist(), dtype=object)  # (N,)
    nodules = np.asarray([nodule_of[t] for t in table["tracklet_id"].to_pylist()], dtype=object)
    return embeddings, patients, nodules


def tau_trial(
    params: dict,
    *,
    embeddings: np.ndarray,
    patients: np.ndarray,
    nodules: np.ndarray,
    method: str,
    seed: int,
) -> None:
    """One tau: cluster every validation patient, report the pairwise scores."""
    from ray import tune

    from usv_ray.cluster.metrics import pairwise_scores
    from usv_ray.cluster.threshold import cluster_patients
    from usv_ray.evaluate.metrics import MetricWarning

    labels = cluster_patients(embeddings, patients, params[KEY], method=method, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # no pairs at all: NaN, not a crash
        scores = pairwise_scores(nodules, labels, patients)
    clusters = len(set(zip(patients.tolist(), labels.tolist(), strict=True)))
    tune.report(
        {
            "f_score": scores.f_score,
            "precision": scores.precision,
            "recall": scores.recall,
            "clusters": clusters,
        }
    )


def run_tau_sweep(cfg: Config, reid: str | Path, out: str | Path) -> TuneSummary:
    """Sweep ``tune.tau`` on the validation embeddings of the re-ID folder ``reid``.

    Writes ``out/results.{csv,md}`` (one row per tau) and ``out/best.yaml`` (``index.tau``
    set to the tau of the best pairwise F-score; on a tie, the middle of the tied values:
    :func:`usv_ray.cluster.compare.best_on_grid`). A rerun on the same ``out`` restores the
    Tune experiment and evaluates only what is missing.
    """
    from ray import tune

    from usv_ray.runtime import ensure_ray

    started = time.perf_counter()
    reid, out = Path(reid), Path(out)
    grid = sorted(set(cfg.tune.tau))
    if not grid or min(grid) < 0 or not all(map(math.isfinite, grid)):
        raise TuneError(f"tune.tau must hold finite values >= 0, got {cfg.tune.tau}")
    embeddings, patients, nodules = validation_embeddings(reid)
    index = cfg.index
    settings = {
        "data": str(reid.resolve()),
        "tau": grid,
        "method": index.method,
        "seed": index.seed,
        "tracklets": len(patients),
    }
    if claim(out, "tau", settings):
        log.info("tune tau: resuming in %s", out)
    ensure_ray(cfg.ray)
    trainable = tune.with_resources(
        tune.with_parameters(
            tau_trial,
            embeddings=embeddings,
            patients=patients,
            nodules=nodules,
            method=index.method,
            seed=index.seed,
        ),
        {"CPU": 1},
    )
    path = (out / EXPERIMENT).resolve()
    log.info(
        "tune tau: %d values on %d validation tracklets of %d patients (%s)",
        len(grid),
        len(patients),
        len(set(patients.tolist())),
        index.method,
    )
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={KEY: tune.grid_search(grid)},
            # one actor evaluates tau after tau: starting a process per value costs seconds
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(path.parent), verbose=0),
        )
    results = tuner.fit()
    check_finished(results, len(grid), out)
    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append(
            {
                "tau": result.config[KEY],
                **{k: metrics.get(k, math.nan) for k in ("precision", "recall", "f_score")},
                "clusters": metrics.get("clusters", math.nan),
                "status": "done" if result.error is None else f"error: {result.error!r}",
            }
        )
    table = pd.DataFrame(rows).sort_values("tau", kind="stable").reset_index(drop=True)
    write_results(table, out)
    best_row(table, "f_score", "max")  # raises when no tau has a finite F-score
    row = table.loc[best_on_grid(table["f_score"])]
    best = {KEY: float(row["tau"])}
    path = write_best_config(cfg, best, out / "best.yaml")
    return TuneSummary(
        out,
        "tau",
        "f_score",
        "max",
        best,
        float(row["f_score"]),
        table,
        path,
        time.perf_counter() - started,
    )
