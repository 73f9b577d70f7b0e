"""``usv-ray demo``: every stage on a synthetic archive, as a hospital runs them.

The training flow on the archive (ingest, classify, re-ID, the tau sweep, the detector),
the detector's tracklets for the archive's unannotated videos, its first night (predict
and the index over it), then one night of new, unlabelled and unannotated exams (ingest
with the detector, predict, index), the night scored against the hidden truth, and the
report. Each step says what it does (``[3/14]``) and what it found; a rerun on the same
folder skips every finished step, as each stage does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from usv_ray.config import Config
from usv_ray.layout import RunFolder

log = logging.getLogger("usv_ray")


def steps(cfg: Config, out: Path) -> list[tuple[str, str, Callable[[], str]]]:
    """The demo's steps: (name, what it does, what runs it and returns its text)."""
    from usv_ray.classify.pipeline import run_classify
    from usv_ray.detect.pipeline import run_detect
    from usv_ray.index.pipeline import run_index
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.predict.pipeline import run_predict
    from usv_ray.reid.pipeline import run_reid
    from usv_ray.report import report_text, write_report
    from usv_ray.score.pipeline import run_score
    from usv_ray.synth import write_archive
    from usv_ray.synth.archive import NIGHT_DIR
    from usv_ray.tune import run_tune

    run = RunFolder(out)
    data, archive = run.data.root, run.archive
    manifest, night = archive / "manifest.csv", archive / NIGHT_DIR / "manifest.csv"
    # once the detector is trained, ingest runs with it, as a hospital's nightly ingest does
    detected = replace(cfg, ingest=replace(cfg.ingest, detector=str(run.detect.bundle)))

    def synth() -> str:
        return f"synthetic archive: {write_archive(cfg.synth, archive)}"

    def index() -> str:
        return run_index(cfg, data, run.reid.bundle, run.index.root, run.predict.root).text()

    def predict() -> str:
        return run_predict(cfg, run.classify.bundle, data, run.predict.root).text()

    return [
        ("synth", f"synthesising an archive of {cfg.synth.patients} patients and a night", synth),
        ("ingest", "ingesting the archive", lambda: run_ingest(cfg, manifest, data).text()),
        ("classify", f"classifying: every method of the paper, {cfg.classify.folds}-fold",
         lambda: run_classify(cfg, data, run.classify.root).text()),
        ("re-ID", f"re-identifying nodules: {' and '.join(cfg.reid.models)}",
         lambda: run_reid(cfg, data, run.reid.root).text()),
        ("tau sweep", "sweeping the clustering threshold tau on the validation patients",
         lambda: run_tune(cfg, "tau", run.reid.root, run.tune("tau").root).text()),
        ("detect", f"training the nodule detector ({cfg.detect.model}) on the annotated videos",
         lambda: run_detect(cfg, data, run.detect.root).text()),
        ("tracklets", "automatic tracklets for the archive's videos without annotations",
         lambda: run_ingest(detected, manifest, data).text()),
        ("predict", "diagnosing every video of the archive with the diagnosis bundle", predict),
        ("index", "indexing every patient's nodules with the re-ID bundle and its tau", index),
        ("night ingest", "the night: ingesting tonight's exams, tracklets by the detector",
         lambda: run_ingest(detected, night, data).text()),
        ("night predict", "the night: diagnosing tonight's videos", predict),
        ("night index", "the night: adding tonight's nodules to the index", index),
        ("score", "the night, and the automatic tracklets, against the hidden truth",
         lambda: run_score(cfg, archive, out).text()),
        ("report", "writing the report", lambda: report_text(*write_report(out))),
    ]  # fmt: skip


def run_demo(cfg: Config, out: Path) -> dict[str, float]:
    """Run every step into ``out``, printing what each found; returns each step's seconds."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    todo = steps(cfg, Path(out))
    for number, (name, what, step) in enumerate(todo, start=1):
        log.info("[%d/%d] %s", number, len(todo), what)
        begin = time.perf_counter()
        print(step())
        seconds[name] = time.perf_counter() - begin
    times = ", ".join(f"{name} {spent:.0f} s" for name, spent in seconds.items())
    print(f"demo finished in {time.perf_counter() - started:.0f} s ({times}): {out}")
    return seconds
