"""The re-ID stage: patient-level train / validation / test split, the classification
model (CM) and the verification model (VM) on Ray Train, their pairwise evaluation, and
the embeddings of every tracklet by the chosen model.

Output layout under ``out``::

    reid.json                   settings and data this folder was made from
    splits.parquet              tracklet_id, patient_key, nodule_id, split
    runs/reid_CM, runs/reid_VM  Ray Train runs (checkpoints)
    models/CM.pt, models/VM.pt  the best weights of each model (by validation accuracy)
    bundle/                     the re-ID bundle (usv_ray.reid.bundle): the models, the
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

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.config import Config, to_dict
from usv_ray.errors import UsvRayError
from usv_ray.io import claim_folder, remove_stale_tmp, write_table

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


def _annotated(data: Path) -> pd.DataFrame:
    """Tracklets with a known nodule identity (those without one cannot be paired)."""
    from usv_ray.reid.clips import read_tracklet_table

    try:
        table = read_tracklet_table(data).to_pandas()
    except FileNotFoundError as exc:
        raise ReidError(str(exc)) from exc
    known = table[table["nodule_id"].notna()].reset_index(drop=True)
    if known.empty:
        raise ReidError(f"no tracklet in {data} has a nodule_id: re-ID needs annotated nodules")
    if len(table) > len(known):
        log.warning("re-ID: %d tracklets without a nodule_id are left out", len(table) - len(known))
    return known


def _data_fingerprint(tracklets: pd.DataFrame) -> str:
    """The annotated tracklets (and their patients and nodules) a folder was trained on."""
    digest = hashlib.sha256()
    for row in tracklets.itertuples(index=False):
        digest.update(f"{row.tracklet_id},{row.patient_key},{row.nodule_id};".encode())
    return digest.hexdigest()


def _config_fingerprint(cfg: Config) -> str:
    """The re-ID settings a folder's models and results depend on."""
    return hashlib.sha256(json.dumps(to_dict(cfg.reid), sort_keys=True).encode()).hexdigest()


def _fingerprint(cfg: Config, tracklets: pd.DataFrame) -> str:
    """What the folder's results depend on: the re-ID settings and the annotated tracklets."""
    combined = f"{_config_fingerprint(cfg)}/{_data_fingerprint(tracklets)}"
    return hashlib.sha256(combined.encode()).hexdigest()


def _bundle(
    cfg: Config,
    data: Path,
    out: Path,
    tracklets: pd.DataFrame,
    files: dict[str, Path],
    table3: pd.DataFrame,
) -> dict:
    """The re-ID bundle (``out/bundle``): every trained model, what it needs, its metrics."""
    from usv_ray.bundle import read_ingest_record
    from usv_ray.reid.bundle import PATCH_SETTINGS, write_reid_bundle
    from usv_ray.reid.embed import CLIP_SETTINGS

    r = cfg.reid
    ingest = read_ingest_record(data)
    test = table3[table3["split"] == "test"].set_index("model")
    columns = ["pairs", "ACC", "SE", "SP", "AUC", "AUC_ci"]
    metrics = json.loads(test[columns].to_json(orient="index"))  # plain JSON values
    meta = {
        "ingest": {name: ingest[name] for name in PATCH_SETTINGS},
        "clip": {name: getattr(r, name) for name in CLIP_SETTINGS},
        "embed_model": r.embed_model,
        "config": {"reid": to_dict(r)},
        "config_fingerprint": _config_fingerprint(cfg),
        "data_fingerprint": _data_fingerprint(tracklets),
        "trained_on": {
            "tracklets": len(tracklets),
            "patients": int(tracklets["patient_key"].nunique()),
        },
        "metrics": {"test pairs, percent, 95% CI": metrics},
    }
    return write_reid_bundle(out, files, meta)


def _train(cfg: Config, data: Path, out: Path, splits: pd.DataFrame) -> dict[str, Path]:
    """Train every model of ``reid.models`` not trained yet; their files by kind."""
    from usv_ray.reid.embed import save_reid_model
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
        files[kind] = out / "models" / f"{kind}.pt"
        if files[kind].exists():
            log.info("re-ID: %s already trained (%s)", kind, files[kind])
            continue
        log.info(
            "re-ID: training %s on %d tracklets of %d nodules (%d validate) for %d epochs",
            kind,
            len(train),
            n_identities,
            len(val),
            r.epochs,
        )
        started = time.perf_counter()
        weights, trained = fit_reid(
            r, kind, data, train["tracklet_id"], val["tracklet_id"], out / "runs", f"reid_{kind}"
        )
        save_reid_model(files[kind], kind, n_identities, weights, r)
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
    cfg: Config, data: Path, out: Path, splits: pd.DataFrame, files: dict[str, Path]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 (per model and split), the DeLong comparisons, and the ROC plots."""
    from usv_ray.evaluate.plots import roc_plot
    from usv_ray.evaluate.tables import write_table as write_md_csv
    from usv_ray.reid.clips import load_tracklets
    from usv_ray.reid.embed import load_reid_model
    from usv_ray.reid.evaluate import (
        best_threshold,
        comparison,
        pair_metrics,
        reid_table,
        score_pairs,
    )

    r = cfg.reid
    models = {kind: load_reid_model(path).model for kind, path in files.items()}
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
        roc_plot(curves, out / "plots" / f"roc_{split}.png", subtitle)
    table3 = reid_table(rows)
    delong = pd.DataFrame(tests)
    write_md_csv(table3, out / "tables" / "table3")
    if not delong.empty:
        write_md_csv(delong, out / "tables" / "delong")
    return table3, delong


def _embeddings(cfg: Config, data: Path, out: Path, model_file: Path) -> Path:
    """Embed every tracklet of the archive (Ray Data, one model per actor) into embeddings/."""
    import pyarrow.fs
    import ray.data

    from usv_ray.io import write_dataset
    from usv_ray.reid.clips import tracklet_shards
    from usv_ray.reid.embed import EMBED_COLUMNS, embed_dataset, load_reid_model

    r = cfg.reid
    target = out / "embeddings"
    model_id = load_reid_model(model_file).model_id
    if target.exists():
        done = pq.read_table(target, columns=["model"])["model"].unique().to_pylist()
        if done == [model_id]:
            log.info("re-ID: embeddings by %s already written", model_id)
            return target
    tracklets = ray.data.read_parquet(
        tracklet_shards(data), filesystem=pyarrow.fs.LocalFileSystem()
    ).select_columns(EMBED_COLUMNS)
    embedded = embed_dataset(tracklets, model_file, r, r.workers, r.cpus_per_worker, r.use_gpu)
    return write_dataset(embedded, target)


def _clustering(out: Path, embeddings: Path, splits: pd.DataFrame, seed: int) -> pd.DataFrame:
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
    write_md_csv(table, out / "tables" / "table4_clustering")
    return table


def run_reid(cfg: Config, data: str | Path, out: str | Path) -> ReidSummary:
    """Train and evaluate the re-ID models on the tracklets of ``data`` into ``out``."""
    from usv_ray.bundle import read_ingest_record
    from usv_ray.reid.pairs import split_tracklets
    from usv_ray.runtime import ensure_ray

    started = time.perf_counter()
    data, out, r = Path(data), Path(out), cfg.reid
    if r.embed_model not in r.models:
        raise ReidError(f"reid.embed_model {r.embed_model} is not among reid.models {r.models}")
    tracklets = _annotated(data)
    read_ingest_record(data)  # the bundle needs it: fail now, not after the training
    if claim_folder(out / "reid.json", _fingerprint(cfg, tracklets), {"reid": to_dict(r)}):
        log.info("resuming the re-ID run in %s", out)
    remove_stale_tmp(out)
    try:
        splits = split_tracklets(tracklets, r)
    except ValueError as exc:
        raise ReidError(str(exc)) from exc
    write_table(pa.Table.from_pandas(splits, preserve_index=False), out / "splits.parquet")
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
    bundle = _bundle(cfg, data, out, tracklets, files, table3)
    embeddings = _embeddings(cfg, data, out, files[r.embed_model])
    clustering = _clustering(out, embeddings, splits, r.seed)
    return ReidSummary(
        out,
        len(tracklets),
        int(tracklets["patient_key"].nunique()),
        table3,
        delong,
        clustering,
        bundle,
        time.perf_counter() - started,
    )
