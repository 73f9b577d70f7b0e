"""The re-ID stage: patient-level train / validation / test split, the classification
model (CM) and the verification model (VM) on Ray Train, their pairwise evaluation, and
the embeddings of every tracklet by the chosen model.

Output layout under ``out``::

    reid.json                   settings and data this folder was made from; its summary
    splits.parquet              tracklet_id, patient_key, nodule_id, split
    runs/reid_CM, runs/reid_VM  Ray Train runs: checkpoints, and the best weights of each
                                model (by validation accuracy) in models/
    bundle/                     the re-ID bundle (usv_ray.bundle.reid): the models, the
                                patch settings they read, and the tau the sweep records
    tables/table3.{md,csv}      ACC, SE, SP, AUC with 95% CIs, per model and split
    tables/delong.{md,csv}      paired DeLong test of CM vs VM, per split
    plots/roc_val.png, plots/roc_test.png
    embeddings/                 every tracklet's embedding by ``reid.embed_model``
    tables/table4_clustering.{md,csv}  the re-ID paper's Table 4: clustering methods tuned
                                on the validation patients' embeddings, scored on the test's

A rerun skips the models already trained and the embeddings already written; a folder
made with other settings or data is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usv_ray.config import Config, to_dict
from usv_ray.errors import UsvRayError
from usv_ray.io import remove_stale_tmp, write_table
from usv_ray.layout import IngestFolder, LayoutError, ReidFolder, StageRun, digest_rows, holds
from usv_ray.reid.report import describe

log = logging.getLogger(__name__)


class ReidError(UsvRayError, ValueError):
    """The data cannot be used for re-ID as asked (no annotated nodules, too few patients)."""


@dataclass(frozen=True)
class ReidSummary:
    out: Path
    tracklets: int  # tracklets with a known nodule
    patients: int
    table3: pd.DataFrame  # the paper's Table 3 layout for this data
    delong: pd.DataFrame  # CM vs VM, per split
    clustering: pd.DataFrame  # the paper's Table 4 on the embeddings
    bundle: dict  # the re-ID bundle's record (bundle/bundle.json)
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        from usv_ray.evaluate.tables import to_markdown

        table = self.table3[["model", "split", "pairs", "ACC", "SE", "SP", "AUC", "AUC_ci"]]
        tests = "\n".join(
            f"  DeLong {row.models} on {row.split}: AUC difference {100 * row.difference:.2f} "
            f"points, p = {row.p_value:.3g}"
            for row in self.delong.itertuples()
        )
        clustering = self.clustering[["method", "parameter", "value", "precision", "recall"]]
        return (
            f"re-ID: {self.tracklets} tracklets of {self.patients} patients in "
            f"{self.seconds:.0f} s\n{to_markdown(table)}\n{tests}\n"
            f"  clustering the test patients' tracklets (tuned on validation):\n"
            f"{to_markdown(clustering.assign(f_score=self.clustering['f_score']))}\n"
            f"  tables: {self.out / 'tables'}\n"
            f"  plots: {self.out / 'plots'}\n"
            f"  embeddings: {self.out / 'embeddings'}"
        )


def _annotated(data: Path) -> pd.DataFrame:
    """Tracklets with a known nodule identity (those without one cannot be paired)."""
    folder = IngestFolder(data)
    try:
        table = folder.read_tracklets().to_pandas()
    except LayoutError as exc:
        raise ReidError(str(exc)) from exc
    known = table[table["nodule_id"].notna()].reset_index(drop=True)
    folder.check_shards(known["video_id"].unique(), ("tracklets",))
    if known.empty:
        raise ReidError(f"no tracklet in {data} has a nodule_id: re-ID needs annotated nodules")
    if len(table) > len(known):
        log.warning("re-ID: %d tracklets without a nodule_id are left out", len(table) - len(known))
    return known


def data_fingerprint(tracklets: pd.DataFrame) -> str:
    """The annotated tracklets (and their patients and nodules) a folder was trained on."""
    columns = ["tracklet_id", "patient_key", "nodule_id"]
    return digest_rows(tracklets[columns].itertuples(index=False))


def _bundle(
    cfg: Config,
    data: Path,
    out: ReidFolder,
    tracklets: pd.DataFrame,
    files: dict[str, Path],
    table3: pd.DataFrame,
    run: StageRun,
) -> dict:
    """The re-ID bundle (``out/bundle``): every trained model, what it needs, its metrics;
    the tau an earlier sweep recorded for a model that is still in it is kept."""
    from usv_ray import bundle
    from usv_ray.bundle.reid import KIND, PATCH_SETTINGS, kept_tau, model_file

    r = cfg.reid
    ingest = IngestFolder(data).settings()
    test = table3[table3["split"] == "test"].set_index("model")
    columns = ["pairs", "ACC", "SE", "SP", "AUC", "AUC_ci"]
    metrics = json.loads(test[columns].to_json(orient="index"))  # plain JSON values
    meta = {
        "ingest": {name: ingest[name] for name in PATCH_SETTINGS},
        "embed_model": r.embed_model,
        "config": {"reid": to_dict(r)},
        "fingerprints": {"folder": run.fingerprint, "data": data_fingerprint(tracklets)},
        "trained_on": {
            "tracklets": len(tracklets),
            "patients": int(tracklets["patient_key"].nunique()),
        },
        "metrics": {"test pairs, percent, 95% CI": metrics},
        "tau": kept_tau(out.bundle, files),
    }
    named = {model_file(kind): path for kind, path in files.items()}
    return bundle.write(out.bundle, KIND, named, meta).record


def _train(cfg: Config, data: Path, out: ReidFolder, splits: pd.DataFrame) -> dict[str, Path]:
    """Train every model of ``reid.models`` not trained yet; their files by kind."""
    from usv_ray.reid.pairs import clamp_p, training_nodules
    from usv_ray.reid.training import fit_reid

    train = splits[splits["split"] == "train"]
    val = splits[splits["split"] == "val"]
    n_identities = training_nodules(splits)
    try:
        r = clamp_p(cfg.reid, n_identities)
    except ValueError as exc:
        raise ReidError(str(exc)) from exc
    if r.p < cfg.reid.p:
        log.warning(
            "re-ID: reid.p=%d nodules per batch on %d workers, but only %d training nodules: "
            "using p=%d",
            cfg.reid.p,
            r.workers,
            n_identities,
            r.p,
        )
    files = {}
    for kind in r.models:
        log.info(
            "re-ID: %s on %d tracklets of %d nodules (%d validate) for %d epochs",
            kind,
            len(train),
            n_identities,
            len(val),
            r.epochs,
        )
        started = time.perf_counter()
        trained = fit_reid(
            r, kind, data, train["tracklet_id"], val["tracklet_id"], out.runs, f"reid_{kind}"
        )
        files[kind] = trained.path
        log.info(
            "re-ID: %s trained in %.0f s (best validation %s %.3f, epoch %d)",
            kind,
            time.perf_counter() - started,
            trained.metric,
            trained.best_value,
            trained.best_epoch + 1,
        )
    return files


def _evaluate(
    cfg: Config, data: Path, out: ReidFolder, splits: pd.DataFrame, files: dict[str, Path]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 (per model and split), the DeLong comparisons, and the ROC plots."""
    from usv_ray.evaluate.plots import roc_plot
    from usv_ray.evaluate.tables import write_table as write_md_csv
    from usv_ray.models import load
    from usv_ray.reid.clips import load_tracklets
    from usv_ray.reid.evaluate import (
        best_threshold,
        comparison,
        pair_metrics,
        reid_table,
        score_pairs,
    )

    r = cfg.reid
    models = {kind: load(path)[0] for kind, path in files.items()}
    scored = {}
    for split in ("val", "test"):
        ids = splits.loc[splits["split"] == split, "tracklet_id"]
        tracklets = load_tracklets(data, ids, r)
        scored[split] = {kind: score_pairs(m, tracklets, 16) for kind, m in models.items()}
    rng = np.random.default_rng(r.seed)
    rows, tests = [], []
    for kind in models:
        threshold, _ = best_threshold(scored["val"][kind].same, scored["val"][kind].scores)
        for split in ("val", "test"):
            metrics = pair_metrics(scored[split][kind], threshold, n_boot=r.n_boot, rng=rng)
            rows.append({"model": kind, "split": split, "threshold": threshold, **metrics})
    for split in ("val", "test"):
        if len(models) >= 2:
            tests.append({"split": split, **comparison(scored[split])})
        subtitle = (
            f"{split}: {len(scored[split][next(iter(models))].same)} within-patient pairs from "
            f"{data}; {r.epochs} epochs, clips {r.clip_frames}x{r.clip_height}x{r.clip_width}, "
            f"seed {r.seed}"
        )
        curves = {k: (p.same.astype(np.int64), p.scores) for k, p in scored[split].items()}
        roc_plot(curves, out.plots / f"roc_{split}.png", subtitle)
    table3 = reid_table(rows)
    delong = pd.DataFrame(tests)
    write_md_csv(table3, out.tables / "table3")
    if not delong.empty:
        write_md_csv(delong, out.tables / "delong")
    return table3, delong


def _embeddings(cfg: Config, data: Path, out: ReidFolder) -> Path:
    """Embed every tracklet of the archive with the bundle's ``reid.embed_model`` (a batch
    job, one model per actor) into embeddings/, and record it in the bundle so the index
    takes them rather than embedding the archive again."""
    from usv_ray import bundle
    from usv_ray.bundle.reid import ReidModels, ShardEmbedder
    from usv_ray.io import replace_folder
    from usv_ray.pool import run_batches
    from usv_ray.schemas import EMBEDDINGS

    r = cfg.reid
    models = ReidModels.load(bundle.read(out.bundle, "reid"))
    model_id = models.model_id(r.embed_model)
    target = out.embeddings
    if target.exists():
        done = pq.read_table(target, columns=["model"])["model"].unique().to_pylist()
        if done == [model_id]:
            log.info("re-ID: embeddings by %s already written", model_id)
            return target
    items = [{"shard": shard, "tracklets": ""} for shard in IngestFolder(data).tracklet_shards()]
    kwargs = {"bundle": str(out.bundle.resolve()), "kind": r.embed_model}
    rows = pa.concat_tables(
        run_batches(
            ShardEmbedder,
            kwargs,
            items,
            workers=r.workers,
            ray=cfg.ray,
            batch_size=8,
            cpus=r.cpus_per_worker,
            gpus=1 if r.use_gpu else 0,
        )
    )
    failed = rows.filter(pc.is_valid(rows["error"]))
    for row in failed.to_pylist():
        log.warning("re-ID: tracklet %s not embedded: %s", row["tracklet_id"], row["error"])
    good = rows.filter(pc.is_null(rows["error"])).select(EMBEDDINGS.names).cast(EMBEDDINGS)
    replace_folder(
        target, lambda tmp: write_table(good.sort_by("tracklet_id"), tmp / "part.parquet")
    )
    models.bundle.rewrite(embeddings={model_id: str(target.resolve())})
    return target


def _clustering(out: ReidFolder, embeddings: Path, splits: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The clustering methods on the embeddings: tuned on "val", scored on "test"."""
    from usv_ray.cluster.compare import clustering_table
    from usv_ray.evaluate.tables import write_table as write_md_csv

    rows = pq.read_table(embeddings, columns=["tracklet_id", "embedding"]).to_pandas()
    rows = rows.merge(splits[splits["split"] != "train"], on="tracklet_id")
    log.info("re-ID: comparing clustering methods on %d val / test tracklets", len(rows))
    table = clustering_table(
        np.stack(rows["embedding"]),
        rows["patient_key"].to_numpy(),
        rows["nodule_id"].to_numpy(),
        rows["split"].to_numpy(),
        seed=seed,
    )
    write_md_csv(table, out.tables / "table4_clustering")
    return table


@holds("reid")
def run_reid(cfg: Config, data: str | Path, out: str | Path) -> ReidSummary:
    """Train and evaluate the re-ID models on the tracklets of ``data`` into ``out``.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray.reid.pairs import split_tracklets
    from usv_ray.runtime import ensure_ray

    data, out, r = Path(data), ReidFolder(out), cfg.reid
    if r.embed_model not in r.models:
        raise ReidError(f"reid.embed_model {r.embed_model} is not among reid.models {r.models}")
    tracklets = _annotated(data)
    IngestFolder(data).settings()  # the bundle needs it: fail now, not after the training
    run = StageRun(out.record, {"reid": r}, data=data_fingerprint(tracklets), data_folder=data)
    run.claim()
    remove_stale_tmp(out.root)
    try:
        splits = split_tracklets(tracklets, r)
    except ValueError as exc:
        raise ReidError(str(exc)) from exc
    write_table(pa.Table.from_pandas(splits, preserve_index=False), out.splits)
    for split in ("train", "val", "test"):
        part = splits[splits["split"] == split]
        log.info(
            "re-ID %s: %d tracklets, %d nodules, %d patients",
            split,
            len(part),
            part.groupby(["patient_key", "nodule_id"]).ngroups,
            part["patient_key"].nunique(),
        )
    ensure_ray(cfg.ray)
    files = _train(cfg, data, out, splits)
    table3, delong = _evaluate(cfg, data, out, splits, files)
    bundle = _bundle(cfg, data, out, tracklets, files, table3, run)
    embeddings = _embeddings(cfg, data, out)
    clustering = _clustering(out, embeddings, splits, r.seed)
    patients = int(tracklets["patient_key"].nunique())
    seconds = run.finish(
        {"tracklets": len(tracklets), "patients": patients, "bundle": bundle["version"]}
    )
    describe(out.root, data)
    return ReidSummary(
        out.root, len(tracklets), patients, table3, delong, clustering, bundle, seconds
    )
