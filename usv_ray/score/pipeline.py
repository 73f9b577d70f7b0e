"""``usv-ray score --archive ARCHIVE --out DIR``: the stages' outputs against the hidden truth.

For a synthetic archive only: its ``truth.json`` holds what no manifest tells (the labels
of tonight's exams, every nodule's malignancy). ``DIR`` is laid out as ``usv-ray demo``
lays it out (``data``, ``classify``, ``predict``, ``index``). Writes ``DIR/score``::

    tables/night_videos.{md,csv}    each of tonight's videos: its diagnosis and the truth
    tables/night_metrics.{md,csv}   accuracy, sensitivity, ... of tonight's readings
    tables/night_nodules.{md,csv}   each nodule seen tonight: P first and now, the truth
    tables/nodule_scoring.{md,csv}  per-nodule AUC of each way to score a nodule
    tables/tracking.{md,csv}        the automatic tracklets against the true boxes
    tables/index_pairs.{md,csv}     the index over every tracklet: pairwise scores by source
    tables/index_nodules.{md,csv}   the index: right nodule counts, uids kept, wrong merges
    tables/index_gap.{md,csv}       the index from automatic tracklets vs from annotated ones
    gap/                            the ingest and the two indexes that comparison made
    summary.json                    the headline figures

The index is held against the truth over every tracklet it holds
(:mod:`usv_ray.score.linking`: an automatic tracklet shows the nodule its boxes match), each
figure with a 95% interval over patients. The gap takes the detector's test patients'
annotated videos: ingested again without their annotations (the detector and tracker make
their tracklets), and their annotated tracklets as they are, each indexed with the re-ID
bundle; the automatic index's F minus the annotated one's, with an interval from one
resample of patients for both.

No raw identifier or exam date reaches ``DIR/score``: rows are named by the first digits
of their keyed ids (:mod:`usv_ray.score.keyed`). The raw ids are read from the archive's
truth and written only into the manifest of that second ingest, in a private temporary
folder that mirrors the archive's paths (so the videos keep their ids) and is removed when
it ends; the archive itself is only read.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from usv_ray.config import Config
from usv_ray.errors import UsvRayError
from usv_ray.layout import IngestFolder, PredictFolder, RunFolder, holds
from usv_ray.score.report import describe

if TYPE_CHECKING:
    from usv_ray.score.keyed import KeyedTruth

log = logging.getLogger(__name__)


class ScoreError(UsvRayError, ValueError):
    """The folder lacks what the score needs (a stage that did not run)."""


@dataclass(frozen=True)
class ScoreSummary:
    out: Path
    night_videos: pd.DataFrame
    night_metrics: pd.DataFrame
    night_nodules: pd.DataFrame
    nodule_scoring: pd.DataFrame
    tracking: pd.DataFrame  # empty without automatic tracklets
    index_pairs: pd.DataFrame  # pairwise scores: all, annotated and automatic tracklets
    index_nodules: pd.DataFrame  # right counts; tonight: uids kept, wrong merges
    index_gap: pd.DataFrame  # empty without a detector
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        from usv_ray.evaluate.tables import to_markdown

        metrics = self.night_metrics.iloc[0]
        night = (
            f"tonight's {int(metrics['videos'])} videos against the truth: accuracy "
            f"{metrics['accuracy']:.1f}, sensitivity {metrics['sensitivity']:.1f}, specificity "
            f"{metrics['specificity']:.1f}, ROC AUC {metrics['roc_auc']:.1f} (%)"
            if metrics["videos"]
            else "no video tonight"
        )
        tracking = (
            f"  automatic tracklets against the true boxes (%):\n"
            f"{to_markdown(self.tracking, float_format='{:.1f}')}\n"
            if len(self.tracking)
            else ""
        )
        gap = (
            f"  the index from automatic vs annotated tracklets, same videos:\n"
            f"{to_markdown(self.index_gap, float_format='{:.1f}')}\n"
            if len(self.index_gap)
            else ""
        )
        return (
            f"score: {night}\n  nodules seen tonight: {len(self.night_nodules)}\n"
            f"  scoring a nodule, per-nodule ROC AUC (%):\n"
            f"{to_markdown(self.nodule_scoring, float_format='{:.3g}')}\n"
            f"  the index against the truth, every tracklet (%, 95% intervals over patients):\n"
            f"{to_markdown(self.index_pairs, float_format='{:.1f}')}\n"
            f"{to_markdown(self.index_nodules, float_format='{:.1f}')}\n"
            f"{tracking}{gap}"
            f"  tables: {self.out / 'tables'}"
        )


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise ScoreError(f"{path} not found: run `usv-ray {stage}` into that folder first")
    return path


def _latest(predict: PredictFolder) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The model version predict ran last, and its video and tracklet diagnoses."""
    _need(predict.summary, "predict")
    version, videos = predict.latest()
    tracklets = pq.read_table(predict.tracklet_diagnoses).to_pandas()
    return version, videos, tracklets[tracklets["model_version"] == version]


def _night_videos(night: pd.DataFrame, diagnoses: pd.DataFrame) -> pd.DataFrame:
    from usv_ray.score.night import short

    rows = night.merge(diagnoses, on=["video_id", "patient_key"], how="left")
    return pd.DataFrame(
        {
            "patient": short(rows["patient_key"]),
            "video": short(rows["video_id"]),
            "prob": 100 * rows["prob"],
            "spread": 100 * rows["spread"],
            "reading": rows["reading"].fillna("not diagnosed"),
            "truth": np.where(rows["label"] == 1, "malignant", "benign"),
        }
    ).sort_values(["patient", "video"], ignore_index=True)


def _night_metrics(night: pd.DataFrame, diagnoses: pd.DataFrame, threshold: float) -> pd.DataFrame:
    from usv_ray.evaluate.metrics import MetricWarning, summarize
    from usv_ray.evaluate.tables import ci_text

    rows = night.merge(diagnoses, on=["video_id", "patient_key"])
    out = {"videos": len(rows), "threshold": threshold}
    if len(rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            summary = summarize(
                rows["label"].to_numpy(),
                rows["prob"].to_numpy(np.float64),
                rows["patient_key"].to_numpy(),
                threshold=threshold,
                n_boot=1000,
                rng=np.random.default_rng(0),
            )
        for name, stats in summary.items():
            out[name] = 100 * stats["value"]
            out[f"{name}_ci"] = ci_text(stats["low"], stats["high"])
    return pd.DataFrame([out])


def _night_nodules(
    nodules: pd.DataFrame, truth: pd.Series, night_ids: set[str], tracklets: pd.DataFrame
) -> pd.DataFrame:
    from usv_ray.score.night import short

    tonight = set(tracklets.loc[tracklets["video_id"].isin(night_ids), "tracklet_id"])
    seen = nodules[nodules["tracklet_ids"].map(lambda ids: not tonight.isdisjoint(ids))]
    truth_of = seen["nodule_uid"].map(truth)
    return pd.DataFrame(
        {
            "patient": short(seen["patient_key"]),
            "nodule": short(seen["nodule_uid"]),
            "exams": seen["n_studies"],
            "videos": seen["n_videos"],
            "tracklets": seen["n_tracklets"],
            "prob_first": 100 * seen["malignancy_first"],
            "prob_latest": 100 * seen["malignancy_latest"],
            "turned_suspicious": seen["turned_suspicious"],
            "truth": truth_of.map({1.0: "malignant", 0.0: "benign"}).fillna("unmatched"),
        }
    ).sort_values(["patient", "nodule"], ignore_index=True)


def _scoring_sets(
    nodules: pd.DataFrame,
    tracklets: pd.DataFrame,
    truth: pd.Series,
    scored: dict[str, pd.DataFrame],
    groups: dict[str, tuple[set[str], set[str]]],
) -> dict[str, pd.DataFrame]:
    """Per nodule: its truth and its P by each way of scoring, for each group of nodules:
    ``groups`` maps a name to (its patients, the videos its P is pooled from)."""
    from usv_ray.index.malignancy import score_nodules

    sets = {}
    for name, (patients, videos) in groups.items():
        shown = tracklets[tracklets["video_id"].isin(videos)]
        frame = nodules.loc[nodules["patient_key"].isin(patients), ["patient_key", "nodule_uid"]]
        frame = frame.assign(truth=frame["nodule_uid"].map(truth))
        for way, probs in scored.items():
            pooled = score_nodules(nodules, shown, probs, way, 0.5, None)
            frame[way] = frame["nodule_uid"].map(pooled.set_index("nodule_uid")["malignancy"])
        sets[name] = frame
    return sets


def _tracking(out: RunFolder, truth: KeyedTruth, automatic: pd.DataFrame) -> pd.DataFrame:
    """Tracking quality over every video the tracker ran on (the ingested videos without
    annotations), and over those of the patients the detector neither trained nor chose
    its epoch on; empty before there is a detector."""
    from usv_ray.score.tracks import tracking_quality

    splits = out.detect.splits
    if not splits.exists():
        return pd.DataFrame()
    videos = out.data.read_videos()
    ran = videos[(videos["status"] == "ok") & ~videos["annotated"]]
    seen = pq.read_table(splits).to_pandas()
    seen = set(seen.loc[seen["split"] != "test", "patient_key"])
    rows = []
    for patients, chosen in (
        ("held out from the detector", ran[~ran["patient_key"].isin(seen)]),
        ("all", ran),
    ):
        if len(chosen):
            row = tracking_quality(truth, automatic, set(chosen["video_id"]))[0]
            rows.append({"patients": patients, **row})
    return pd.DataFrame(rows)


def _mirror(archive: Path, videos: pd.Series, into: Path) -> None:
    """Link the top folders of ``videos`` (paths relative to ``archive``) into ``into``, so a
    manifest there names them by the same relative paths (and keyed ids) as the archive's."""
    for top in sorted({Path(video).parts[0] for video in videos}):
        (into / top).symlink_to((archive / top).resolve(), target_is_directory=True)


def _index_gap(cfg: Config, archive: Path, out: RunFolder, truth, raw) -> pd.DataFrame:
    """The index from automatic tracklets against the index from annotated ones, on the
    same videos: the detector's test patients' annotated archive videos."""
    import csv
    import shutil
    import tempfile
    from dataclasses import replace

    from usv_ray.index.pipeline import run_index
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.score.linking import f_difference, linking_quality

    splits = pq.read_table(out.detect.splits).to_pandas()
    test = set(splits.loc[splits["split"] == "test", "video_id"])
    rows = raw.videos.assign(video_id=truth.videos["video_id"].to_numpy())
    rows = rows[(rows["batch"] == "archive") & rows["video_id"].isin(test)]
    gap = out.score.gap
    shutil.rmtree(gap, ignore_errors=True)  # made afresh: the detector or its split may change
    annotated = IngestFolder(gap / "annotated")
    annotated.tracklets_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(out.data.record, annotated.record)
    for video_id in rows["video_id"]:
        shard = out.data.tracklets(video_id)
        if shard.exists():
            shutil.copy(shard, annotated.tracklets(video_id))
    # a few videos, ingested and indexed in this process (no actor start-up for them)
    ingest = replace(cfg.ingest, detector=str(out.detect.bundle), workers=0)
    cfg = replace(cfg, ingest=ingest, index=replace(cfg.index, workers=0))
    automatic = IngestFolder(gap / "automatic")
    with tempfile.TemporaryDirectory(prefix="usv-ray-score-") as private:
        _mirror(archive, rows["video"], Path(private))
        manifest = Path(private) / "manifest.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["video", "patient_id", "study_id"])
            writer.writerows(rows[["video", "patient_id", "study_id"]].itertuples(index=False))
        run_ingest(cfg, manifest, automatic.root)
    table, counts = [], {}
    columns = [
        "tracklet_id",
        "video_id",
        "patient_key",
        "source",
        "nodule_id",
        "box_frames",
        "boxes",
    ]
    for source, data in (("annotated", annotated), ("automatic", automatic)):
        if not data.tracklet_shards():  # the detector found nothing
            log.warning("score: no %s tracklet in the detector's test videos", source)
            table.append({"tracklets_from": source, "tracklets": 0})
            continue
        index = gap / f"index_{source}"
        run_index(cfg, data.root, out.reid.bundle, index)
        nodules = pq.read_table(index / "nodules.parquet").to_pandas()
        tracklets = data.read_tracklets(columns).to_pandas()
        linking = linking_quality(nodules, tracklets, truth)
        right = linking.nodules.iloc[0]
        table.append(
            {
                "tracklets_from": source,
                **linking.pairs.iloc[0].drop("tracklets").to_dict(),
                "right_count": right["share"],
                "right_count_ci": right["share_ci"],
            }
        )
        counts[source] = linking.counts
    if len(counts) == 2:  # the automatic index's F against the annotated one's, paired
        table[-1].update(f_difference(counts["annotated"], counts["automatic"]))
    return pd.DataFrame(table)


@holds("score", "score")
def run_score(cfg: Config, archive: str | Path, out: str | Path) -> ScoreSummary:
    """Score the night (and the ways to score a nodule) in ``out`` against ``archive``'s truth.

    One run at a time in ``out/score`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray import bundle
    from usv_ray.evaluate.tables import write_table
    from usv_ray.io import write_json
    from usv_ray.privacy import check_keying, load_key
    from usv_ray.score.keyed import keyed_truth
    from usv_ray.score.linking import linking_quality
    from usv_ray.score.night import nodule_truth, oof_probs, scoring_comparison
    from usv_ray.score.tracks import tracklet_nodules
    from usv_ray.synth.truth import load_truth

    started = time.perf_counter()
    archive, out = Path(archive), RunFolder(out)
    key = load_key(cfg.privacy)
    check_keying(out.data.root, cfg.privacy, key)
    raw = load_truth(archive)
    truth = keyed_truth(raw, key)
    record = bundle.read(_need(out.classify.root, "classify"), "diagnosis", verify=False).record
    folds = pq.read_table(out.classify.folds).to_pandas()
    version, diagnoses, tracklet_diagnoses = _latest(out.predict)
    if version != record["version"]:
        raise ScoreError(f"predict last ran {version}, the classify bundle is {record['version']}")
    columns = [
        "tracklet_id",
        "video_id",
        "patient_key",
        "study_key",
        "nodule_id",
        "source",
        "box_frames",
        "boxes",
    ]
    tracklets = out.data.read_tracklets(columns).to_pandas()
    nodules = pq.read_table(_need(out.index.nodules, "index")).to_pandas()
    nodule_of = tracklet_nodules(tracklets, truth)
    nodules_truth = nodule_truth(nodules, nodule_of, truth.nodules)
    automatic = tracklets[tracklets["source"] == "automatic"]
    tracking = _tracking(out, truth, automatic)
    gap = (
        _index_gap(cfg, archive, out, truth, raw) if out.detect.bundle.is_dir() else pd.DataFrame()
    )

    night = truth.videos[truth.videos["batch"] == "night"]
    videos = out.data.read_videos()
    linking = linking_quality(
        nodules,
        tracklets,
        truth,
        videos=videos[videos["status"] == "ok"],
        tonight=set(night["video_id"]),
        nodule_of=nodule_of,
    )
    threshold = float(record["operating_point"]["threshold"])
    night_videos = _night_videos(night, diagnoses)
    night_metrics = _night_metrics(night, diagnoses, threshold)
    night_nodules = _night_nodules(nodules, nodules_truth, set(night["video_id"]), tracklets)

    # the ways to score a nodule: on the archive, each from predictions made without the
    # nodule's patient; tonight, from tonight's videos alone
    archived = truth.videos[truth.videos["batch"] == "archive"]
    archive_patients = set(archived["patient_key"])
    new = set(night["patient_key"]) - archive_patients
    scored = {
        "tracklets": tracklet_diagnoses.assign(prob=oof_probs(tracklet_diagnoses, record, folds))[
            ["tracklet_id", "prob"]
        ],
        "videos": diagnoses.assign(prob=oof_probs(diagnoses, record, folds))[["video_id", "prob"]],
    }
    tonight = set(night["video_id"])
    groups = {
        "the archive, out-of-fold": (archive_patients, set(archived["video_id"])),
        "tonight's new patients": (new, tonight),
        "tonight's follow-ups, out-of-fold": (
            set(night["patient_key"]) - new,
            tonight,
        ),
    }
    sets = _scoring_sets(nodules, tracklets, nodules_truth, scored, groups)
    comparison = scoring_comparison(sets)

    tables = out.score.tables
    write_table(night_videos, tables / "night_videos", float_format="{:.1f}")
    write_table(night_metrics, tables / "night_metrics", float_format="{:.1f}")
    write_table(night_nodules, tables / "night_nodules", float_format="{:.1f}")
    write_table(comparison, tables / "nodule_scoring", float_format="{:.3g}")
    write_table(linking.pairs, tables / "index_pairs", float_format="{:.1f}")
    write_table(linking.nodules, tables / "index_nodules", float_format="{:.1f}")
    for name, table in (("tracking", tracking), ("index_gap", gap)):
        if len(table):
            write_table(table, tables / name, float_format="{:.1f}")
    summary = {
        "model_version": version,
        "night_videos": len(night_videos),
        "night": night_metrics.iloc[0].to_dict(),
        "nodule_scoring": comparison.to_dict("records"),
        "tracking": tracking.to_dict("records"),
        "index_pairs": linking.pairs.to_dict("records"),
        "index_nodules": linking.nodules.to_dict("records"),
        "index_gap": gap.to_dict("records"),
    }
    write_json(json.loads(pd.Series(summary).to_json()), out.score.summary)
    describe(out.score.root, out.data.root)
    return ScoreSummary(
        out.score.root,
        night_videos,
        night_metrics,
        night_nodules,
        comparison,
        tracking,
        linking.pairs,
        linking.nodules,
        gap,
        time.perf_counter() - started,
    )
