"""The ``usv-ray`` command: ``usv-ray [-v] STAGE --config FILE [--set key=value ...] ...``.

This module imports only the standard library and :mod:`usv_ray.errors` at the top: each
command imports its stage when it runs, so ``usv-ray --help`` and the light commands do not
pay for PyTorch, numba, pandas or Ray (seconds on a laptop). A user's error from any stage
is a :class:`~usv_ray.errors.UsvRayError`, caught once in :func:`main`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from usv_ray.errors import UsvRayError

if TYPE_CHECKING:
    from usv_ray.config import Config

log = logging.getLogger("usv_ray")

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(name: str | None) -> Path | None:
    """``demo`` / ``paper`` name the packaged configs; anything else is a file path."""
    if name is None:
        return None
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    return packaged if packaged.is_file() and not Path(name).exists() else Path(name)


def build_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    """The config of a command: file, then command-line flags, then ``--set`` overrides."""
    from usv_ray.config import load_config

    overrides = list(extra)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    return load_config(resolve_config_path(args.config), [*overrides, *args.set])


def _common(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    parser.add_argument(
        "--config",
        default=default_config,
        help="YAML config file, or 'demo' / 'paper' for the packaged ones"
        + (f" (default: {default_config})" if default_config else " (default: built-in)"),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set ingest.n_frames=12 (repeatable)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")


def cmd_synth(args: argparse.Namespace) -> int:
    from usv_ray.synth import write_archive

    extra = []
    if args.patients is not None:
        extra.append(f"synth.patients={args.patients}")
    if args.seed is not None:
        extra.append(f"synth.seed={args.seed}")
    cfg = build_config(args, extra)
    started = time.perf_counter()
    manifest = write_archive(cfg.synth, Path(args.out))
    print(
        f"synthetic archive of {cfg.synth.patients} patients in {time.perf_counter() - started:.1f}"
        f" s: {manifest}"
    )
    return 0


def _print_ingest(summary) -> None:
    print(
        f"ingest: {summary.ok} videos ok, {summary.failed} failed, {summary.errors} error rows "
        f"({summary.ingested_now} decoded now) in {summary.seconds:.1f} s\n"
        f"  videos: {summary.out / 'videos.parquet'}\n"
        f"  errors: {summary.out / 'errors.parquet'}\n"
        f"  frames: {summary.out / 'frames'}\n"
        f"  tracklets: {summary.out / 'tracklets'}"
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    from usv_ray.ingest.pipeline import run_ingest

    cfg = build_config(args)
    _print_ingest(run_ingest(cfg, args.manifest, args.out))
    return 0


def _print_classify(summary) -> None:
    from usv_ray.evaluate.tables import to_markdown

    table = summary.table4[
        ["method", "n_videos", "accuracy", "sensitivity", "specificity", "roc_auc"]
    ]
    print(
        f"classify: {summary.videos} videos of {summary.patients} patients cross-validated in "
        f"{summary.seconds:.0f} s\n{to_markdown(table)}\n"
        f"  tables: {summary.out / 'tables'}\n"
        f"  plots: {summary.out / 'plots'}\n"
        f"  predictions: {summary.out / 'predictions'}\n"
        f"  bundle: {summary.out / 'bundle'} ({summary.bundle['version']}: "
        f"{len(summary.bundle['members'])} members, {summary.bundle['calibrator']['method']} "
        f"calibration, threshold {summary.bundle['operating_point']['threshold']:.3f} at "
        f"sensitivity {summary.bundle['operating_point']['target_sensitivity']:g})"
    )


def cmd_classify(args: argparse.Namespace) -> int:
    from usv_ray.classify.pipeline import run_classify

    cfg = build_config(args)
    _print_classify(run_classify(cfg, args.data, args.out))
    return 0


def _print_detect(summary) -> None:
    from usv_ray.evaluate.tables import to_markdown

    print(
        f"detect: a {summary.bundle['model']} detector on {summary.videos} annotated videos of "
        f"{summary.patients} patients in {summary.seconds:.0f} s (AP in %, COCO's evaluation)\n"
        f"{to_markdown(summary.table, float_format='{:.1f}')}\n"
        f"  tables: {summary.out / 'tables'}\n"
        f"  plots: {summary.out / 'plots'}\n"
        f"  bundle: {summary.out / 'bundle'} ({summary.bundle['version']}): ingest with "
        f"--set ingest.detector={summary.out / 'bundle'} for automatic tracklets"
    )


def cmd_detect(args: argparse.Namespace) -> int:
    from usv_ray.detect.pipeline import run_detect

    cfg = build_config(args)
    _print_detect(run_detect(cfg, args.data, args.out))
    return 0


def _print_predict(summary) -> None:
    what = (
        f"{summary.diagnosed_now} videos diagnosed now"
        if summary.written
        else "nothing new, the tables are unchanged"
    )
    print(
        f"predict: {summary.videos} videos by {summary.model_version} ({what}; "
        f"{summary.malignant} read malignant, {summary.errors} not diagnosed) in "
        f"{summary.seconds:.0f} s\n"
        f"  diagnoses: {summary.out / 'diagnoses.parquet'}\n"
        f"  tracklets: {summary.out / 'tracklet_diagnoses.parquet'} ({summary.tracklets} rows)"
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from usv_ray.predict.pipeline import run_predict

    cfg = build_config(args)
    _print_predict(run_predict(cfg, args.model, args.data, args.out))
    return 0


def _print_reid(summary) -> None:
    from usv_ray.evaluate.tables import to_markdown

    table = summary.table3[["model", "split", "pairs", "ACC", "SE", "SP", "AUC", "AUC_ci"]]
    tests = "\n".join(
        f"  DeLong {row.models} on {row.split}: AUC difference {100 * row.difference:.2f} "
        f"points, p = {row.p_value:.3g}"
        for row in summary.delong.itertuples()
    )
    clustering = summary.clustering[["method", "parameter", "value", "precision", "recall"]]
    print(
        f"re-ID: {summary.tracklets} tracklets of {summary.patients} patients in "
        f"{summary.seconds:.0f} s\n{to_markdown(table)}\n{tests}\n"
        f"  clustering the test patients' tracklets (tuned on validation):\n"
        f"{to_markdown(clustering.assign(f_score=summary.clustering['f_score']))}\n"
        f"  tables: {summary.out / 'tables'}\n"
        f"  plots: {summary.out / 'plots'}\n"
        f"  embeddings: {summary.out / 'embeddings'}"
    )


def cmd_reid(args: argparse.Namespace) -> int:
    from usv_ray.reid.pipeline import run_reid

    cfg = build_config(args)
    _print_reid(run_reid(cfg, args.data, args.out))
    return 0


def _print_index(summary) -> None:
    scores = summary.scores
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
        f"\n  malignancy of {summary.scored} nodules from the diagnoses; "
        f"{summary.turned_suspicious} turned suspicious since their first exam"
        if summary.scored
        else ""
    )
    print(
        f"index: {summary.nodules} nodules of {summary.patients} patients from "
        f"{summary.tracklets} tracklets ({summary.embedded_now} embedded now"
        f"{f', {summary.reused} of them by the re-ID run' if summary.reused else ''}"
        f"{', rebuilt' if summary.rebuilt else ''}, {summary.errors} error rows) in "
        f"{summary.seconds:.0f} s{agreement}{malignancy}\n"
        f"  version: {summary.index_version}\n"
        f"  index: {summary.out / 'nodules.parquet'}\n"
        f"  errors: {summary.out / 'errors.parquet'}"
    )


def cmd_index(args: argparse.Namespace) -> int:
    from usv_ray.index.pipeline import run_index

    cfg = build_config(args)
    _print_index(run_index(cfg, args.data, args.model, args.out, args.diagnoses))
    return 0


def _print_score(summary) -> None:
    from usv_ray.evaluate.tables import to_markdown

    metrics = summary.night_metrics.iloc[0]
    night = (
        f"tonight's {int(metrics['videos'])} videos against the truth: accuracy "
        f"{metrics['accuracy']:.1f}, sensitivity {metrics['sensitivity']:.1f}, specificity "
        f"{metrics['specificity']:.1f}, ROC AUC {metrics['roc_auc']:.1f} (%)"
        if metrics["videos"]
        else "no video tonight"
    )
    tracking = (
        f"  automatic tracklets against the true boxes (%):\n"
        f"{to_markdown(summary.tracking, float_format='{:.1f}')}\n"
        if len(summary.tracking)
        else ""
    )
    gap = (
        f"  the index from automatic vs annotated tracklets, same videos:\n"
        f"{to_markdown(summary.index_gap, float_format='{:.1f}')}\n"
        if len(summary.index_gap)
        else ""
    )
    print(
        f"score: {night}\n  nodules seen tonight: {len(summary.night_nodules)}\n"
        f"  scoring a nodule, per-nodule ROC AUC (%):\n"
        f"{to_markdown(summary.nodule_scoring, float_format='{:.3g}')}\n"
        f"{tracking}{gap}"
        f"  tables: {summary.out / 'tables'}"
    )


def cmd_score(args: argparse.Namespace) -> int:
    from usv_ray.score.pipeline import run_score

    cfg = build_config(args)
    _print_score(run_score(cfg, args.archive, args.out))
    return 0


def _print_report(out: Path) -> None:
    from usv_ray.report import RESULTS_NAME, write_report

    html_path, md_path = write_report(out)
    print(
        f"report: {html_path} (self-contained; Markdown: {md_path}; the tables alone: "
        f"{html_path.parent / RESULTS_NAME})"
    )


def cmd_report(args: argparse.Namespace) -> int:
    _print_report(Path(args.out))
    return 0


def _print_tune(summary) -> None:
    from usv_ray.evaluate.tables import to_markdown

    best = ", ".join(f"{key}={value:.4g}" for key, value in summary.best.items())
    print(
        f"tune {summary.target}: {len(summary.table)} trials in {summary.seconds:.0f} s; best "
        f"{best} ({summary.metric} {summary.best_value:.4g})\n"
        f"{to_markdown(summary.table, float_format='{:.4g}')}\n"
        f"  results: {summary.out / 'results.md'} (and .csv)\n"
        f"  best config: {summary.best_config} (use it as --config)"
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from usv_ray.tune import run_tune

    cfg = build_config(args)
    _print_tune(run_tune(cfg, args.target, args.data, args.out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Every stage on a synthetic archive, as a hospital runs them: the training flow on the
    archive (ingest, classify, re-ID, the tau sweep, the detector), the detector's
    tracklets for the archive's unannotated videos, its first night (predict and the index
    over it), then one night of new, unlabelled and unannotated exams (ingest with the
    detector, predict, index), the night scored against the hidden truth, and the report."""
    from dataclasses import replace

    from usv_ray.classify.pipeline import run_classify
    from usv_ray.detect.pipeline import run_detect
    from usv_ray.index.pipeline import run_index
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.predict.pipeline import run_predict
    from usv_ray.reid.pipeline import run_reid
    from usv_ray.score.pipeline import run_score
    from usv_ray.synth import write_archive
    from usv_ray.synth.archive import NIGHT_DIR
    from usv_ray.tune import run_tune

    cfg = build_config(args)
    out = Path(args.out)
    data, archive = out / "data", out / "archive"
    night = archive / NIGHT_DIR / "manifest.csv"
    # once the detector is trained, ingest runs with it, as a hospital's nightly ingest does
    detected = replace(cfg, ingest=replace(cfg.ingest, detector=str(out / "detect" / "bundle")))

    def index() -> None:
        _print_index(run_index(cfg, data, out / "reid", out / "index", out / "predict"))

    def predict() -> None:
        _print_predict(run_predict(cfg, out / "classify", data, out / "predict"))

    steps = [
        ("synth", f"synthesising an archive of {cfg.synth.patients} patients and a night",
         lambda: write_archive(cfg.synth, archive)),
        ("ingest", "ingesting the archive",
         lambda: _print_ingest(run_ingest(cfg, archive / "manifest.csv", data))),
        ("classify", f"classifying: every method of the paper, {cfg.classify.folds}-fold",
         lambda: _print_classify(run_classify(cfg, data, out / "classify"))),
        ("re-ID", f"re-identifying nodules: {' and '.join(cfg.reid.models)}",
         lambda: _print_reid(run_reid(cfg, data, out / "reid"))),
        ("tau sweep", "sweeping the clustering threshold tau on the validation patients",
         lambda: _print_tune(run_tune(cfg, "tau", out / "reid", out / "tune" / "tau"))),
        ("detect", f"training the nodule detector ({cfg.detect.model}) on the annotated videos",
         lambda: _print_detect(run_detect(cfg, data, out / "detect"))),
        ("tracklets", "automatic tracklets for the archive's videos without annotations",
         lambda: _print_ingest(run_ingest(detected, archive / "manifest.csv", data))),
        ("predict", "diagnosing every video of the archive with the diagnosis bundle", predict),
        ("index", "indexing every patient's nodules with the re-ID bundle and its tau", index),
        ("night ingest", "the night: ingesting tonight's exams, tracklets by the detector",
         lambda: _print_ingest(run_ingest(detected, night, data))),
        ("night predict", "the night: diagnosing tonight's videos", predict),
        ("night index", "the night: adding tonight's nodules to the index", index),
        ("score", "the night, and the automatic tracklets, against the hidden truth",
         lambda: _print_score(run_score(cfg, archive, out))),
        ("report", "writing the report", lambda: _print_report(out)),
    ]  # fmt: skip
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    for number, (name, what, run) in enumerate(steps, start=1):
        log.info("[%d/%d] %s", number, len(steps), what)
        begin = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - begin
    times = ", ".join(f"{name} {spent:.0f} s" for name, spent in seconds.items())
    print(f"demo finished in {time.perf_counter() - started:.0f} s ({times}): {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usv-ray",
        description="Breast ultrasound video AI at archive scale on Ray.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and Ray's own logs (execution plans, training reports, hints) "
        "that are silenced by default",
    )
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    synth = stages.add_parser("synth", help="write a synthetic B-mode archive")
    _common(synth, None)
    synth.add_argument("--out", required=True, help="folder of the archive (manifest.csv)")
    synth.add_argument("--patients", type=int, help="number of patients")
    synth.add_argument("--seed", type=int, help="random seed")
    synth.set_defaults(func=cmd_synth)

    ingest = stages.add_parser("ingest", help="decode and de-identify an archive into shards")
    _common(ingest, None)
    ingest.add_argument("--manifest", required=True, help="manifest.csv of the archive")
    ingest.add_argument("--out", required=True, help="data folder (tables and shards)")
    ingest.set_defaults(func=cmd_ingest)

    classify = stages.add_parser(
        "classify", help="cross-validate the variable-frame CNN-LSTM and its baselines"
    )
    _common(classify, None)
    classify.add_argument("--data", required=True, help="data folder that ingest wrote")
    classify.add_argument("--out", required=True, help="folder of models, tables and plots")
    classify.set_defaults(func=cmd_classify)

    detect = stages.add_parser(
        "detect", help="train the nodule detector on the annotated videos (automatic tracklets)"
    )
    _common(detect, None)
    detect.add_argument("--data", required=True, help="data folder that ingest wrote")
    detect.add_argument("--out", required=True, help="folder of the detector and its bundle")
    detect.set_defaults(func=cmd_detect)

    predict = stages.add_parser(
        "predict", help="diagnose every ingested video with a diagnosis bundle (nightly)"
    )
    _common(predict, None)
    predict.add_argument(
        "--model", required=True, help="diagnosis bundle, or the classify folder holding one"
    )
    predict.add_argument("--data", required=True, help="data folder that ingest wrote")
    predict.add_argument("--out", required=True, help="folder of diagnoses.parquet")
    predict.set_defaults(func=cmd_predict)

    reid = stages.add_parser("reid", help="train and evaluate the nodule re-ID models")
    _common(reid, None)
    reid.add_argument("--data", required=True, help="data folder that ingest wrote")
    reid.add_argument("--out", required=True, help="folder of models, tables and embeddings")
    reid.set_defaults(func=cmd_reid)

    index = stages.add_parser(
        "index", help="embed new tracklets and update the nodule index (the nightly job)"
    )
    _common(index, None)
    index.add_argument("--data", required=True, help="data folder that ingest wrote")
    index.add_argument(
        "--model",
        required=True,
        help="re-ID bundle, or the re-ID folder holding one (or a bare model file) to embed with",
    )
    index.add_argument(
        "--diagnoses",
        help="folder of `usv-ray predict`: score every nodule's malignancy from its diagnoses",
    )
    index.add_argument("--out", required=True, help="folder of the index (nodules.parquet)")
    index.set_defaults(func=cmd_index)

    score = stages.add_parser(
        "score",
        help="score a folder of stage outputs against a synthetic archive's hidden truth",
    )
    _common(score, None)
    score.add_argument("--archive", required=True, help="the synthetic archive (truth.json)")
    score.add_argument(
        "--out", required=True, help="the folder of stage outputs (as demo lays it out)"
    )
    score.set_defaults(func=cmd_score)

    report = stages.add_parser(
        "report",
        help="write report.html, report.md and results.md (the tables alone) from an output "
        "folder: a demo's, or one holding a real archive's data/, classify/, reid/, ...",
    )
    report.add_argument("--out", required=True, help="the output folder (as demo lays it out)")
    report.set_defaults(func=cmd_report)

    tune = stages.add_parser("tune", help="Ray Tune sweep of one target's hyperparameters")
    _common(tune, None)
    tune.add_argument(
        "--target",
        required=True,
        choices=["cnn", "lstm", "equal_frames", "variable_max", "reid", "tau"],
        help="cnn, reid: learning rate and batch size; lstm: the same on cached features; "
        "equal_frames: N of the equal-frame LSTM; variable_max: the variable-frame cap; "
        "tau: the clustering threshold",
    )
    tune.add_argument(
        "--data",
        required=True,
        help="ingest folder (cnn, reid), classify folder (lstm, equal_frames, variable_max) "
        "or re-ID folder (tau)",
    )
    tune.add_argument("--out", required=True, help="sweep folder (rerun it to resume)")
    tune.set_defaults(func=cmd_tune)

    demo = stages.add_parser("demo", help="every stage on a synthetic archive, on a local Ray")
    _common(demo, "demo")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``usv-ray`` console command and of ``jobs/*.py``.

    A user's error (:class:`~usv_ray.errors.UsvRayError`: a bad setting, a missing input, an
    unreachable cluster) is one line on stderr and exit code 2; a bug keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s usv-ray %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.verbose:
        from usv_ray.runtime import set_verbose

        set_verbose(True)  # Ray's own logs, plans and hints come back (see usv_ray.runtime)
    try:
        return args.func(args)
    except UsvRayError as exc:
        print(f"usv-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
