"""The tau target: the clustering threshold of the nodule index (``index.tau``), swept on
the re-ID stage's cached validation embeddings.

No training, so no Tune trials (tau is not a training hyperparameter: a loop took 0.08 s
where Tune trials took 25 s): a
:class:`~usv_ray.tune.sweep.GridLoop` clusters the validation patients' embeddings at each
tau of ``tune.tau`` (:func:`usv_ray.cluster.threshold.cluster_patients`, ``index.method``)
and scores the clusters against the annotated nodules with the pairwise F-score
(:func:`usv_ray.cluster.metrics.pairwise_scores`). The best tau (on a tie, the middle of
the tied values: :func:`usv_ray.cluster.compare.best_on_grid`) is recorded in the re-ID
folder's bundle for the model whose embeddings were swept, where ``usv-ray index`` takes
it from, and goes to ``index.tau`` in best.yaml.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.config import Config
from usv_ray.tune.sweep import GridLoop, Target, TuneError

log = logging.getLogger(__name__)

KEY = "index.tau"
COLUMNS = ("precision", "recall", "f_score", "clusters")


def validation_embeddings(reid: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The validation tracklets with a known nodule in a re-ID folder:
    (embeddings (N, D) float32, patient_key (N,), nodule_id (N,)), by tracklet_id."""
    from usv_ray.layout import ReidFolder

    splits_path, folder = ReidFolder(reid).splits, ReidFolder(reid).embeddings
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


def score_tau(
    tau: float,
    embeddings: np.ndarray,
    patients: np.ndarray,
    nodules: np.ndarray,
    *,
    method: str,
    seed: int,
) -> dict[str, float]:
    """Cluster every validation patient at ``tau``: pairwise precision, recall, F-score
    against the annotated nodules, and the clusters found."""
    from usv_ray.cluster.metrics import pairwise_scores
    from usv_ray.cluster.threshold import cluster_patients
    from usv_ray.evaluate.metrics import MetricWarning

    labels = cluster_patients(embeddings, patients, tau, method=method, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # no pairs at all: NaN, not a crash
        scores = pairwise_scores(nodules, labels, patients)
    clusters = len(set(zip(patients.tolist(), labels.tolist(), strict=True)))
    return {
        "precision": scores.precision,
        "recall": scores.recall,
        "f_score": scores.f_score,
        "clusters": clusters,
    }


def tau_target(cfg: Config, data: Path, out: Path) -> Target:
    """``index.tau`` over the grid ``tune.tau``, on the re-ID folder ``data``'s
    validation embeddings; the results table has one row per tau, in increasing order."""
    from usv_ray.cluster.compare import best_on_grid

    grid = sorted(set(cfg.tune.tau))
    if not grid or min(grid) < 0 or not all(map(math.isfinite, grid)):
        raise TuneError(f"tune.tau must hold finite values >= 0, got {cfg.tune.tau}")
    embeddings, patients, nodules = validation_embeddings(data)
    index = cfg.index
    log.info(
        "tune tau: %d values on %d validation tracklets of %d patients (%s)",
        len(grid),
        len(patients),
        len(set(patients.tolist())),
        index.method,
    )

    def evaluate(point: dict[str, Any]) -> dict[str, float]:
        return score_tau(
            point[KEY], embeddings, patients, nodules, method=index.method, seed=index.seed
        )

    def finish(best: dict[str, Any], f_score: float) -> None:
        """Record the best tau in the re-ID bundle, with the model it was swept for."""
        from usv_ray.bundle import BundleError
        from usv_ray.bundle.reid import record_tau
        from usv_ray.layout import ReidFolder

        embeddings = ReidFolder(data).embeddings
        models = pq.read_table(embeddings, columns=["model"])["model"].unique()
        if len(models) != 1:
            raise TuneError(f"{embeddings} holds the embeddings of {len(models)} models")
        try:
            folder = record_tau(data, models[0].as_py(), best[KEY], f_score, out)
        except BundleError as exc:  # a re-ID folder of an older usv_ray: best.yaml has it
            log.warning("tune tau: tau %g is in best.yaml only: %s", best[KEY], exc)
            return
        log.info("tune tau: tau %g recorded for %s in %s", best[KEY], models[0], folder)

    return Target(
        "tau",
        {KEY: {"grid_search": grid}},  # what tune.grid_search(grid) returns
        "f_score",
        "max",
        COLUMNS,
        {"index": index},
        {"tau": grid, "tracklets": len(patients)},
        data.resolve(),
        GridLoop(evaluate, pick=best_on_grid, names={KEY: "tau"}),
        finish=finish,
    )
