"""The nightly nodule index: ``usv-ray index --data DIR --model DIR --out DIR``.

Every run embeds the tracklets of the archive that the index has not seen (a batch job,
one model per actor), then updates the nodules of the patients they belong to
(:mod:`usv_ray.index.nodules`). The tracklets that the re-ID run embedded with the same
model (its bundle names them) are taken from there, not embedded again.
Layout of ``--out``::

    nodules.parquet     the index (schemas.NODULES), one row per nodule of a patient
    embeddings/NNNNN/   the embeddings each run added (schemas.EMBEDDINGS), by its model
    errors.parquet      tracklets that could not be embedded, patients that failed
    summary.json        what the index holds, and its agreement with annotated nodules

A rerun with nothing new embeds nothing and writes nothing. The index records its
``index_version`` (the model's id, its clip shape, tau and the method): a run with another
model rebuilds the index from new embeddings, one with another tau or method re-clusters
the stored embeddings; versions never mix. Tables are written atomically, so a killed run
leaves the previous index intact and its rerun does the work again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from usv_ray.cluster.constraints import cannot_links
from usv_ray.cluster.link import LinkModel, box_geometry
from usv_ray.config import Config, IndexConfig
from usv_ray.errors import UsvRayError
from usv_ray.index.errors import BAD, DAMAGED, error_frame, errors_table
from usv_ray.index.nodules import Links, Nodule, centroid, update_patient
from usv_ray.index.report import describe
from usv_ray.index.store import embed_new, read_store, reid_embeddings
from usv_ray.io import remove_stale_tmp, write_json, write_table
from usv_ray.layout import TRACKLET_META, IndexFolder, IngestFolder, LayoutError, holds
from usv_ray.schemas import EMBEDDINGS, NODULES

log = logging.getLogger(__name__)
# the index's own columns; the evidence and malignancy columns are added from them
BASE_NODULES = pa.schema(
    [NODULES.field(n) for n in NODULES.names[: NODULES.names.index("index_version") + 1]]
)


class IndexBuildError(UsvRayError, RuntimeError):
    """The index cannot be built from these inputs (no model, no tracklets)."""


@dataclass(frozen=True)
class IndexSummary:
    out: Path
    index_version: str
    patients: int
    tracklets: int  # indexed, in all
    nodules: int
    embedded_now: int  # tracklets this run added to the index's embeddings
    reused: int  # of those, taken from the re-ID run's embeddings by the same model
    errors: int  # error rows in errors.parquet
    damaged: int  # of those, tracklets or videos of a missing or damaged shard (retried)
    rebuilt: bool  # the index was rebuilt (another model, tau or method)
    scores: dict | None  # pairwise precision / recall / F vs the annotated nodules
    scored: int  # nodules with a malignancy (scored from the diagnoses)
    turned_suspicious: int  # below the diagnosis threshold at their first exam, above at the latest
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        scores = self.scores
        agreement = (
            f"\n  vs annotated nodules ({scores['tracklets']} tracklets, {scores['true_nodules']} "
            f"nodules): pairwise precision {100 * scores['precision']:.1f}, recall "
            f"{100 * scores['recall']:.1f}, F {100 * scores['f_score']:.1f}; nodule count right "
            f"for {scores['patients_right_count']} of {scores['patients']} patients (mean error "
            f"{scores['count_error']:.2f})"
            if scores
            else ""
        )
        malignancy = (
            f"\n  malignancy of {self.scored} nodules from the diagnoses; "
            f"{self.turned_suspicious} turned suspicious since their first exam"
            if self.scored
            else ""
        )
        damaged = (
            f"\n  {self.damaged} error rows are of damaged or missing shards: run `usv-ray "
            "ingest` again with the night's manifest, then index again"
            if self.damaged
            else ""
        )
        return (
            f"index: {self.nodules} nodules of {self.patients} patients from "
            f"{self.tracklets} tracklets ({self.embedded_now} embedded now"
            f"{f', {self.reused} of them by the re-ID run' if self.reused else ''}"
            f"{', rebuilt' if self.rebuilt else ''}, {self.errors} error rows) in "
            f"{self.seconds:.0f} s{agreement}{malignancy}{damaged}\n"
            f"  version: {self.index_version}\n"
            f"  index: {self.out / 'nodules.parquet'}\n"
            f"  errors: {self.out / 'errors.parquet'}"
        )


def index_version(
    model_id: str, clip: tuple[int, int, int], cfg: IndexConfig, link: LinkModel | None = None
) -> str:
    """What the index was built with; indexes of different versions are never mixed."""
    shape = "x".join(map(str, clip))
    method = cfg.method if cfg.method == "closure" else f"{cfg.method} seed {cfg.seed}"
    if link is None:
        return f"{model_id} clip {shape} tau {cfg.tau:g} {method}"
    return f"{model_id} clip {shape} link {link.digest()} P >= {cfg.link_threshold:g} {method}"


def _read_nodules(out: IndexFolder) -> pd.DataFrame | None:
    return pq.read_table(out.nodules).to_pandas() if out.nodules.exists() else None


def _nodules_of(rows: pd.DataFrame) -> dict[str, list[Nodule]]:
    """The index's rows as :class:`Nodule` lists by patient."""
    by_patient: dict[str, list[Nodule]] = {}
    for row in rows.itertuples(index=False):
        by_patient.setdefault(row.patient_key, []).append(
            Nodule(
                row.nodule_uid,
                tuple(row.tracklet_ids),
                row.first_study,
                row.last_study,
                row.updated_at.to_pydatetime(),
            )
        )
    return by_patient


@dataclass(frozen=True)
class Diagnoses:
    """The diagnoses a nodule is scored from: one model version's, as predict wrote them."""

    scored: pd.DataFrame  # tracklet_id or video_id, prob (calibrated)
    threshold: float  # the bundle's operating point
    version: str | None  # its model version; None: no diagnoses given


NO_DIAGNOSES = Diagnoses(pd.DataFrame({"tracklet_id": [], "video_id": [], "prob": []}), 0.5, None)


def read_diagnoses(folder: Path, scoring: str) -> Diagnoses:
    """The diagnoses of the model version ``usv-ray predict`` last ran in ``folder``.

    Raises:
        IndexBuildError: when ``folder`` holds no diagnoses.
    """
    from usv_ray.layout import PredictFolder
    from usv_ray.schemas import TRACKLET_DIAGNOSES

    predict = PredictFolder(folder)
    if not predict.summary.is_file():
        raise IndexBuildError(
            f"{folder} holds no diagnoses (no summary.json): run `usv-ray predict --out "
            f"{folder}` first, or leave --diagnoses out"
        )
    version, videos = predict.latest()
    threshold = float(videos["threshold"].iloc[0]) if len(videos) else 0.5
    if scoring == "videos":
        return Diagnoses(videos[["video_id", "prob"]], threshold, version)
    table = pq.read_table(predict.tracklet_diagnoses, schema=TRACKLET_DIAGNOSES)
    tracklets = table.to_pandas()
    tracklets = tracklets[tracklets["model_version"] == version]
    return Diagnoses(tracklets[["tracklet_id", "prob"]], threshold, version)


def _scored(
    nodules: pd.DataFrame, tracklets: pd.DataFrame, diagnoses: Diagnoses, scoring: str
) -> pa.Table:
    """The index's rows with their evidence and malignancy (see usv_ray.index.malignancy)."""
    from usv_ray.index.malignancy import evidence, score_nodules

    rows = evidence(nodules, tracklets)
    rows = score_nodules(
        rows, tracklets, diagnoses.scored, scoring, diagnoses.threshold, diagnoses.version
    )
    return pa.Table.from_pandas(rows[NODULES.names], schema=NODULES, preserve_index=False)


def _index_table(
    by_patient: dict[str, list[Nodule]],
    embedding_of: dict[str, np.ndarray],
    study_of: dict[str, str | None],
    version: str,
) -> pd.DataFrame:
    rows = []
    for patient_key in sorted(by_patient):
        for nodule in sorted(by_patient[patient_key], key=lambda n: n.nodule_uid):
            studies = {study_of[t] for t in nodule.tracklet_ids} - {None}
            rows.append(
                {
                    "patient_key": patient_key,
                    "nodule_uid": nodule.nodule_uid,
                    "tracklet_ids": list(nodule.tracklet_ids),
                    "study_keys": sorted(studies),
                    "centroid": centroid(nodule, embedding_of),
                    "n_tracklets": len(nodule.tracklet_ids),
                    "first_study": nodule.first_study,
                    "last_study": nodule.last_study,
                    "updated_at": nodule.updated_at,
                    "index_version": version,
                }
            )
    return pa.Table.from_pylist(rows, schema=BASE_NODULES).to_pandas()


def _scores(table: pa.Table, tracklets: pd.DataFrame) -> dict | None:
    """Pairwise precision / recall / F of the index vs the annotated nodule ids, and how
    often it lists the right number of nodules for a patient."""
    from usv_ray.cluster.metrics import count_agreement, pairwise_scores

    members = table.select(["patient_key", "nodule_uid", "tracklet_ids"]).to_pandas()
    members = members.explode("tracklet_ids").rename(columns={"tracklet_ids": "tracklet_id"})
    truth = tracklets.dropna(subset=["nodule_id"])[["tracklet_id", "nodule_id"]]
    both = members.merge(truth, on="tracklet_id")
    if both.empty:
        return None
    # truth, prediction, patient
    columns = [both[c].to_numpy() for c in ("nodule_id", "nodule_uid", "patient_key")]
    s = pairwise_scores(*columns)
    counts = count_agreement(*columns)
    return {
        "precision": s.precision,
        "recall": s.recall,
        "f_score": s.f_score,
        "tracklets": len(both),
        "true_nodules": counts.nodules,
        "patients": counts.patients,
        "patients_right_count": counts.exact,  # as many nodules listed as annotated
        "count_error": counts.mean_error,  # mean |listed - annotated| per patient
    }


def _choose(
    cfg: Config, data: IngestFolder, model: str | Path
) -> tuple[Any, IndexConfig, LinkModel | None]:
    """The re-ID bundle to embed with, checked against ``data``; the index settings with
    the tau to cluster at (``index.tau`` when set, else the tau the sweep recorded in the
    re-ID bundle for this model); and the link model the sweep recorded with it, or None
    where the index links by cosine distance."""
    models, c = _choose_tau(cfg, data, model)
    if c.link == "cosine":
        return models, c, None
    if not 0.0 < c.link_threshold < 1.0:
        raise IndexBuildError(f"index.link_threshold must lie in (0, 1), got {c.link_threshold}")
    link = models.link(c.model)
    if link is None:
        log.warning(
            "index: the re-ID bundle %s records no link model for its %s model: linking by "
            "cosine distance within tau %g. Run `usv-ray tune --target tau` on its re-ID "
            "folder again to record one, or set index.link=cosine",
            models.bundle.folder,
            c.model,
            c.tau,
        )
        return models, replace(c, link="cosine"), None
    log.info(
        "index: linking at P(same nodule) >= %g (a link model fitted on %d validation pairs)",
        c.link_threshold,
        link.pairs,
    )
    return models, c, link


def _choose_tau(cfg: Config, data: IngestFolder, model: str | Path) -> tuple[Any, IndexConfig]:
    """The re-ID bundle and the index settings with their tau (see :func:`_choose`)."""
    from usv_ray import bundle

    c = cfg.index
    models = bundle.load(model, "reid")
    models.bundle.check_data(data)
    model_id = models.model_id(c.model)
    source = f"the re-ID bundle {models.bundle.folder} ({models.version})"
    recorded = models.tau(c.model)
    if c.tau is not None:
        if recorded is not None and recorded != c.tau:
            log.info(
                "index: tau %g from the config (the sweep recorded %g for this model)",
                c.tau,
                recorded,
            )
        return models, c
    if recorded is None:
        raise IndexBuildError(
            f"no tau for {model_id} of {source}: the tau sweep has not recorded one for its "
            f"{c.model} model. Run `usv-ray tune --target tau --data REID --out TUNE` on its "
            "re-ID folder (it records the tau in the bundle), or set index.tau"
        )
    log.info("index: tau %g, recorded by the tau sweep in %s", recorded, source)
    return models, replace(c, tau=recorded)


def _links(
    tracklets: pd.DataFrame,
    embedding_of: dict[str, np.ndarray],
    study_of: dict[str, str | None],
    c: IndexConfig,
    link: LinkModel | None,
) -> Links:
    """How tonight's patients' tracklets (``tracklets``, with their boxes where ``link``)
    link: within tau, or at P(same) >= ``index.link_threshold`` by ``link``."""
    if link is None:
        return Links(embedding_of, study_of, c.tau)
    boxed = tracklets[tracklets["boxes"].map(len) > 0]
    geometry_of = dict(zip(boxed["tracklet_id"], map(box_geometry, boxed["boxes"]), strict=True))
    return Links(embedding_of, study_of, 1.0 - c.link_threshold, link, geometry_of)


@holds("index")
def run_index(
    cfg: Config,
    data: str | Path,
    model: str | Path,
    out: str | Path,
    diagnoses: str | Path | None = None,
) -> IndexSummary:
    """Bring the nodule index in ``out`` up to date with the tracklets of ``data``, each
    nodule scored from the diagnoses in ``diagnoses`` (a ``usv-ray predict`` folder).

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    started = time.perf_counter()
    data, out = IngestFolder(data), IndexFolder(out)
    models, c, link = _choose(cfg, data, model)
    cfg = replace(cfg, index=c)
    model_id = models.model_id(c.model)
    version = index_version(model_id, models.clip_shape(c.model), c, link)
    scores_from = NO_DIAGNOSES if diagnoses is None else read_diagnoses(diagnoses, c.nodule_scoring)
    unreadable: dict[str, str] = {}  # video_id -> why its tracklets shard cannot be read
    try:
        # box_frames: the frames each covers, for the cannot-links; boxes for the link model
        columns = [*TRACKLET_META, "box_frames", *(["boxes"] if link is not None else [])]
        tracklets = data.read_tracklets(columns, unreadable=unreadable).to_pandas()
    except LayoutError as exc:
        raise IndexBuildError(str(exc)) from exc
    for video_id, why in sorted(unreadable.items()):
        log.warning("index: video %s: %s; the rest of the night goes on", video_id, why)
    out.root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out.root)
    remove_stale_tmp(out.embeddings)

    store = read_store(out)
    stale_model = sorted(set(store["model"]) - {model_id})
    if stale_model:  # another model's embeddings: start a new store
        log.info("index: built with %s before; rebuilding with %s", stale_model, model_id)
        shutil.rmtree(out.embeddings)
        store = store.iloc[:0]
    previous = _read_nodules(out)
    if diagnoses is None and previous is not None and previous["diagnosis_version"].notna().any():
        log.warning(
            "index: no --diagnoses, so the nodules' malignancy from %s is cleared; pass the "
            "predict folder to keep it",
            previous["diagnosis_version"].dropna().iloc[0],
        )
    rebuilt = previous is not None and set(previous["index_version"]) != {version}
    if rebuilt:
        log.info(
            "index: version %s before; re-clustering as %s", previous["index_version"][0], version
        )
        previous = None
    old_errors = pq.read_table(out.errors).to_pandas() if out.errors.exists() else None
    bad_before = (
        set(old_errors.loc[old_errors["kind"] == "bad_tracklet", "source"])
        if old_errors is not None
        else set()
    )
    archive, stored = set(tracklets["tracklet_id"]), set(store["tracklet_id"])
    new = archive - stored - bad_before
    indexed_before = (
        {t for ids in previous["tracklet_ids"] for t in ids} if previous is not None else set()
    )
    waiting = (archive & stored) - indexed_before  # a failed patient's
    if not new and not waiting and not rebuilt and previous is not None:
        table = _scored(previous, tracklets, scores_from, c.nodule_scoring)
        changed = not table.equals(pq.read_table(out.nodules))
        if changed:  # the same nodules, scored from newer diagnoses
            write_table(table, out.nodules)
        errors = error_frame(pd.DataFrame(columns=BAD), {}, unreadable, old_errors)
        if old_errors is None or not errors_table(errors).equals(errors_table(old_errors)):
            write_table(errors_table(errors), out.errors)
            changed = True
        else:
            errors = old_errors
        log.info(
            "index: nothing new since the last run (%s)%s",
            version,
            "; nodules rescored from the diagnoses" if changed else "",
        )
        return _summary(
            out,
            data,
            version,
            table.to_pandas(),
            tracklets,
            errors,
            0,
            0,
            False,
            started,
            changed,
        )

    bad = pd.DataFrame(columns=BAD)
    reused = (
        reid_embeddings(models.embeddings(c.model), model_id, new)
        if new
        else EMBEDDINGS.empty_table()
    )
    run = 1 + max((int(p.name) for p in out.embedding_runs()), default=-1)
    if reused.num_rows:
        log.info("index: %d new tracklets embedded by the re-ID run already", reused.num_rows)
        write_table(reused, out.embedding_run(run) / "reid.parquet")
        run += 1
    rest = new - set(reused["tracklet_id"].to_pylist())
    if rest:
        log.info("index: embedding %d new tracklets with %s", len(rest), model_id)
        todo_rows = tracklets[tracklets["tracklet_id"].isin(rest)]
        bad = embed_new(cfg, data, out, models.bundle.folder.resolve(), todo_rows, run)
        for row in bad.itertuples(index=False):
            log.warning("index: tracklet %s not embedded: %s", row.tracklet_id, row.error)
    if new:
        store = read_store(out)
    embedding_of = dict(zip(store["tracklet_id"], store["embedding"], strict=True))
    study_of = dict(zip(tracklets["tracklet_id"], tracklets["study_key"], strict=True))
    patient_of = dict(zip(tracklets["tracklet_id"], tracklets["patient_key"], strict=True))

    by_patient = _nodules_of(previous) if previous is not None else {}
    indexed = {t for nodules in by_patient.values() for n in nodules for t in n.tracklet_ids}
    todo: dict[str, list[str]] = {}
    for tracklet_id in sorted(set(embedding_of) - indexed):
        if tracklet_id in patient_of:  # still in the archive
            todo.setdefault(patient_of[tracklet_id], []).append(tracklet_id)
    # tonight's videos' tracklets seen side by side: never one nodule
    cannot: dict[str, set[frozenset[str]]] = {}  # patient -> its pairs: each sees only its own
    for pair in cannot_links(tracklets[tracklets["patient_key"].isin(todo)]):
        cannot.setdefault(patient_of[next(iter(pair))], set()).add(pair)
    links = _links(tracklets[tracklets["patient_key"].isin(todo)], embedding_of, study_of, c, link)
    now = datetime.now(UTC).replace(microsecond=0)
    failed = {}
    for patient_key, new_ids in todo.items():
        try:
            by_patient[patient_key] = update_patient(
                patient_key,
                by_patient.get(patient_key, []),
                new_ids,
                links,
                c.method,
                now,
                c.seed,
                cannot.get(patient_key, set()),
            )
        except Exception as exc:  # one patient's failure is an error row, not a failed run
            log.warning("index: patient %s failed: %s", patient_key, exc)
            failed[patient_key] = f"{type(exc).__name__}: {exc}"
    nodules = _index_table(by_patient, embedding_of, study_of, version)
    table = _scored(nodules, tracklets, scores_from, c.nodule_scoring)
    write_table(table, out.nodules)
    errors = error_frame(bad, failed, unreadable, old_errors)
    write_table(errors_table(errors), out.errors)
    embedded_now = len(new) - len(bad)
    return _summary(
        out,
        data,
        version,
        table.to_pandas(),
        tracklets,
        errors,
        embedded_now,
        reused.num_rows,
        rebuilt,
        started,
        True,
    )


def _summary(
    out: IndexFolder,
    data: IngestFolder,
    version: str,
    nodules: pd.DataFrame,
    tracklets: pd.DataFrame,
    errors: pd.DataFrame | None,
    embedded_now: int,
    reused: int,
    rebuilt: bool,
    started: float,
    changed: bool,
) -> IndexSummary:
    """The summary of the index in ``out``; written to summary.json when it ``changed``."""
    summary = IndexSummary(
        out.root,
        version,
        int(nodules["patient_key"].nunique()),
        int(nodules["n_tracklets"].sum()),
        len(nodules),
        embedded_now,
        reused,
        0 if errors is None else len(errors),
        0 if errors is None else int((errors["kind"] == DAMAGED).sum()),
        rebuilt,
        _scores(pa.Table.from_pandas(nodules, schema=NODULES, preserve_index=False), tracklets),
        int(nodules["malignancy"].notna().sum()),
        int(nodules["turned_suspicious"].fillna(False).astype(bool).sum()),
        time.perf_counter() - started,
    )
    if changed:
        record = {k: v for k, v in summary.__dict__.items() if k not in ("out", "seconds")}
        write_json(record, out.summary)
    if changed or not out.report.exists():  # an older usv_ray's folder: its section now
        describe(out.root, data.root)
    return summary
