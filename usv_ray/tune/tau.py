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

Beside it the bundle records the whole curve (precision, recall and F at every tau) and
how far the choice can be trusted: a bootstrap over the validation patients
(:func:`tau_interval`: the 2.5-97.5 percentiles of the tau each resample would choose, and
of its F). A tau at either end of the grid, or a curve whose best F is no better than
clustering nothing or everything together, means the model's same and different pairs do
not separate on the grid: the sweep warns rather than pass such a tau on silently.

The same validation pairs fit the link model the index links by (``index.link:
calibrated``, :mod:`usv_ray.cluster.link`): a calibrated P(same nodule) from the embeddings
and, within one exam, the boxes. :func:`validation_link` measures it as the index uses it,
each patient clustered at P(same) >= ``index.link_threshold`` by a model fitted without
that patient (cross-fitted over folds of patients), with the F's interval over patient
resamples; the table ``link`` holds the figures, and the bundle the model beside the tau.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.cluster.link import LinkModel
from usv_ray.config import Config
from usv_ray.tune.sweep import GridLoop, Target, TuneError

log = logging.getLogger(__name__)

KEY = "index.tau"
COLUMNS = ("precision", "recall", "f_score", "clusters")


def validation_embeddings(reid: Path, with_ids: bool = False) -> tuple:
    """The validation tracklets with a known nodule in a re-ID folder:
    (embeddings (N, D) float32, patient_key (N,), nodule_id (N,)), by tracklet_id, and with
    ``with_ids`` their tracklet ids (a list) too."""
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
    ids = table["tracklet_id"].to_pylist()
    nodules = np.asarray([nodule_of[t] for t in ids], dtype=object)
    return (embeddings, patients, nodules, ids) if with_ids else (embeddings, patients, nodules)


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


def tau_interval(
    grid: list[float],
    embeddings: np.ndarray,
    patients: np.ndarray,
    nodules: np.ndarray,
    *,
    method: str,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """Resample the validation patients ``n_boot`` times (with replacement; a patient drawn
    twice counts as two) and choose tau on each as the sweep does: the 2.5-97.5 percentiles
    of the chosen tau (``tau_low``, ``tau_high``) and of the F-score there (``f_low``,
    ``f_high``), and how many resamples had a pair to score (``resamples``)."""
    from usv_ray.cluster.compare import best_on_grid

    unique = np.unique(patients)
    rows = {p: np.flatnonzero(patients == p) for p in unique}
    rng = np.random.default_rng(seed)
    taus, scores = [], []
    for _ in range(n_boot):
        drawn = rng.choice(unique, size=len(unique), replace=True)
        take = np.concatenate([rows[p] for p in drawn])
        renamed = np.repeat(np.arange(len(drawn)), [len(rows[p]) for p in drawn]).astype(object)
        curve = [
            score_tau(t, embeddings[take], renamed, nodules[take], method=method, seed=seed)[
                "f_score"
            ]
            for t in grid
        ]
        if np.isnan(curve).all():
            continue  # no pair in this resample
        best = best_on_grid(curve)
        taus.append(grid[best])
        scores.append(curve[best])
    if not taus:
        return {"resamples": 0}
    tau_low, tau_high = np.percentile(taus, [2.5, 97.5])
    f_low, f_high = np.percentile(scores, [2.5, 97.5])
    return {
        "tau_low": float(tau_low),
        "tau_high": float(tau_high),
        "f_low": float(f_low),
        "f_high": float(f_high),
        "resamples": len(taus),
    }


def edge_warning(grid: list[float], curve: list[dict[str, float]], tau: float) -> str | None:
    """The one-line warning when the chosen ``tau`` sits at an end of the ``grid``, or the
    best F of the ``curve`` is no better than that at both ends (no tau separates the
    model's same and different pairs); None otherwise."""
    f = np.asarray([row["f_score"] for row in curve], dtype=np.float64)
    if len(grid) < 2 or np.isnan(f).all():
        return None
    best = float(np.nanmax(f))
    if tau in (grid[0], grid[-1]):
        where = "smallest" if tau == grid[0] else "largest"
        return (
            f"tune tau: the best tau {tau:g} is the {where} of the grid ({grid[0]:g}-"
            f"{grid[-1]:g}): the best may lie beyond it, or the model's same and different "
            "nodules do not separate; widen tune.tau, or train the re-ID model further"
        )
    if best <= max(np.nan_to_num(f[0], nan=-1), np.nan_to_num(f[-1], nan=-1)):
        return (
            f"tune tau: no tau clusters better than the ends of the grid (F {best:.3f}): the "
            "model's same and different nodules do not separate on its validation patients"
        )
    return None


def validation_geometry(reid: Path, tracklet_ids: list[str]) -> pd.DataFrame:
    """``study_key``, ``depth`` and ``height`` (:func:`~usv_ray.cluster.link.box_geometry`)
    of ``tracklet_ids``, in that order, from the ingest folder the re-ID folder trained on.

    Raises:
        TuneError: when that folder cannot be read, or lacks one of the tracklets.
    """
    import json

    from usv_ray.cluster.link import box_geometry
    from usv_ray.layout import IngestFolder, LayoutError, ReidFolder

    record = ReidFolder(reid).record
    try:
        data = json.loads(record.read_text())["data"]
        table = IngestFolder(data).read_tracklets(["tracklet_id", "study_key", "boxes"])
    except (OSError, KeyError, ValueError, LayoutError) as exc:
        raise TuneError(f"the boxes of {reid}'s tracklets cannot be read: {exc}") from exc
    rows = table.to_pandas().set_index("tracklet_id")
    if missing := set(tracklet_ids) - set(rows.index):
        raise TuneError(f"{len(missing)} validation tracklets are not in {data}")
    rows = rows.loc[tracklet_ids]
    try:
        depth, height = np.asarray([box_geometry(b) for b in rows["boxes"]]).reshape(-1, 2).T
    except ValueError as exc:
        raise TuneError(f"a validation tracklet of {data}: {exc}") from exc
    return pd.DataFrame(
        {"study_key": rows["study_key"].to_numpy(), "depth": depth, "height": height},
        index=rows.index,
    )


def validation_link(
    reid: Path, threshold: float, *, method: str, seed: int, n_boot: int, folds: int = 5
) -> tuple[LinkModel, dict[str, Any]]:
    """The link model fitted on every within-patient pair of the validation patients, and
    how it links them as the index would: each patient clustered at P(same) >= ``threshold``
    by a model fitted without its fold of patients (``folds`` folds), then pairwise
    precision, recall and F against the annotated nodules, F with its 95% interval over
    ``n_boot`` patient resamples.

    Raises:
        TuneError: when the boxes cannot be read, or the pairs cannot fit a model.
    """
    from usv_ray.cluster.constraints import constrained_algorithm1, constrained_closure
    from usv_ray.cluster.link import fit_link, pair_features, within_pairs
    from usv_ray.cluster.metrics import pair_counts_by_patient
    from usv_ray.evaluate.metrics import ratio_ci

    embeddings, patients, nodules, ids = validation_embeddings(reid, with_ids=True)
    geometry = validation_geometry(reid, ids)
    studies = geometry["study_key"].tolist()
    blocks = {}  # patient -> (its rows, (n, n, 4) features of its pairs): n^2 per patient
    for patient in np.unique(patients):
        rows = np.flatnonzero(patients == patient)
        blocks[patient] = (
            rows,
            pair_features(
                embeddings[rows],
                [studies[r] for r in rows],
                geometry["depth"].to_numpy()[rows],
                geometry["height"].to_numpy()[rows],
            ),
        )
    first, second = within_pairs(patients)
    position = np.zeros(len(ids), np.int64)  # each row's place among its patient's rows
    for rows, _ in blocks.values():
        position[rows] = np.arange(len(rows))
    pairs = np.asarray(
        [
            blocks[patients[a]][1][position[a], position[b]]
            for a, b in zip(first, second, strict=True)
        ]
    ).reshape(-1, 4)
    same = nodules[first] == nodules[second]
    try:
        model = fit_link(pairs, same)
    except ValueError as exc:
        raise TuneError(f"no link model: {exc}") from exc
    order = np.random.default_rng(seed).permutation(np.unique(patients))
    fold_of = {p: i % folds for i, p in enumerate(order)}
    pair_fold = np.asarray([fold_of[p] for p in patients[first]])
    labels = np.zeros(len(ids), np.int64)
    rng = np.random.default_rng(seed)
    none = np.empty((0, 2), np.int64)
    for fold in range(folds):
        train = pair_fold != fold
        try:
            held_out = fit_link(pairs[train], same[train])
        except ValueError:  # a fold's rest lacks one kind of pair: the whole model
            held_out = model
        for patient in (p for p in blocks if fold_of[p] == fold):
            rows, block = blocks[patient]
            d = 1.0 - held_out.probability(block)
            np.fill_diagonal(d, 0.0)
            if method == "closure":
                labels[rows] = constrained_closure(d, 1.0 - threshold, none) + len(ids) * rows[0]
            else:
                labels[rows] = (
                    constrained_algorithm1(d, 1.0 - threshold, none, rng) + len(ids) * rows[0]
                )
    _, counts = pair_counts_by_patient(nodules, labels, patients)
    tp, fp, fn = counts.sum(axis=0)
    low, high = ratio_ci(
        2 * counts[:, 0],
        2 * counts[:, 0] + counts[:, 1] + counts[:, 2],
        n_boot=n_boot,
        rng=np.random.default_rng(seed),
    )
    lumped = 2 * same.sum() / (same.sum() + len(same)) if len(same) else math.nan
    measured = {
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "f_score": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
        "f_low": low,
        "f_high": high,
        "f_one_per_patient": lumped,  # F with each patient's tracklets all one nodule
        "folds": folds,
        "pairs": len(same),
        "same_pairs": int(same.sum()),
        "patients": len(order),
    }
    return model, measured


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
        """Record the best tau in the re-ID bundle, with the model it was swept for, the
        curve and the tau's interval; warn when the curve does not separate."""
        from usv_ray.bundle import BundleError
        from usv_ray.bundle.reid import record_tau
        from usv_ray.layout import ReidFolder, TuneFolder

        tau = best[KEY]
        stored = ReidFolder(data).embeddings
        models = pq.read_table(stored, columns=["model"])["model"].unique()
        if len(models) != 1:
            raise TuneError(f"{stored} holds the embeddings of {len(models)} models")
        from usv_ray.evaluate.tables import write_table as write_results

        validation = {"tracklets": len(patients), "patients": len(set(patients.tolist()))}
        results = pd.read_csv(out / "results.csv")  # the sweep's, one row per tau
        curve = results[["tau", *COLUMNS]].to_dict("records")
        interval = tau_interval(
            grid,
            embeddings,
            patients,
            nodules,
            method=index.method,
            seed=index.seed,
            n_boot=cfg.tune.tau_n_boot,
        )
        log.info(
            "tune tau: tau %g, F %.3f on %d validation tracklets of %d patients; over %d "
            "patient resamples the chosen tau spans %s and its F %s",
            tau,
            f_score,
            len(patients),
            len(set(patients.tolist())),
            interval["resamples"],
            f"{interval['tau_low']:g}-{interval['tau_high']:g}" if interval["resamples"] else "-",
            f"{interval['f_low']:.3f}-{interval['f_high']:.3f}" if interval["resamples"] else "-",
        )
        if warning := edge_warning(grid, curve, tau):
            log.warning(warning)
        write_results(
            pd.DataFrame([{"tau": tau, "f_score": f_score, **interval, **validation}]),
            TuneFolder(out).tau_interval,
            float_format="{:.4g}",
        )
        extra = {"interval": interval, "curve": curve, "validation": validation}
        try:
            link, measured = validation_link(
                data,
                index.link_threshold,
                method=index.method,
                seed=index.seed,
                n_boot=cfg.tune.tau_n_boot,
            )
        except TuneError as exc:
            log.warning("tune tau: %s; the index links by cosine distance within tau", exc)
        else:
            log.info(
                "tune tau: link model on %d validation pairs (%d of one nodule); at P(same) "
                ">= %g, cross-fitted over %d folds of patients: F %.3f (%.3f-%.3f), against "
                "%.3f at tau %g",
                measured["pairs"],
                measured["same_pairs"],
                measured["threshold"],
                measured["folds"],
                measured["f_score"],
                measured["f_low"],
                measured["f_high"],
                f_score,
                tau,
            )
            if not measured["f_score"] > measured["f_one_per_patient"]:
                log.warning(
                    "tune tau: the link model links no better than one nodule per patient "
                    "(F %.3f against %.3f): the re-ID model's same and different nodules do "
                    "not separate on its validation patients",
                    measured["f_score"],
                    measured["f_one_per_patient"],
                )
            write_results(pd.DataFrame([measured]), TuneFolder(out).link, float_format="{:.4g}")
            extra["link"] = {**link.to_dict(), "validation": measured}
        try:
            folder = record_tau(data, models[0].as_py(), tau, f_score, out, **extra)
        except BundleError as exc:  # a re-ID folder of an older usv_ray: best.yaml has it
            log.warning("tune tau: tau %g is in best.yaml only: %s", tau, exc)
            return
        log.info("tune tau: tau %g recorded for %s in %s", tau, models[0], folder)

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
