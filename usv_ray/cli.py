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


def cmd_ingest(args: argparse.Namespace) -> int:
    from usv_ray.ingest.pipeline import run_ingest

    cfg = build_config(args)
    print(run_ingest(cfg, args.manifest, args.out).text())
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from usv_ray.classify.pipeline import run_classify

    cfg = build_config(args)
    print(run_classify(cfg, args.data, args.out).text())
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from usv_ray.pretrain.pipeline import run_pretrain

    cfg = build_config(args)
    print(run_pretrain(cfg, args.data, args.out).text())
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from usv_ray.detect.pipeline import run_detect

    cfg = build_config(args)
    print(run_detect(cfg, args.data, args.out).text())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from usv_ray.predict.pipeline import run_predict

    cfg = build_config(args)
    print(run_predict(cfg, args.model, args.data, args.out).text())
    return 0


def cmd_reid(args: argparse.Namespace) -> int:
    from usv_ray.reid.pipeline import run_reid

    cfg = build_config(args)
    print(run_reid(cfg, args.data, args.out).text())
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from usv_ray.index.pipeline import run_index

    cfg = build_config(args)
    print(run_index(cfg, args.data, args.model, args.out, args.diagnoses).text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from usv_ray.export.pipeline import run_export

    cfg = build_config(args)
    formats = ("sr", "fhir") if args.format == "both" else (args.format,)
    summary = run_export(cfg, args.data, args.predict, args.index, args.manifest, args.out, formats)
    print(summary.text())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from usv_ray.score.pipeline import run_score

    cfg = build_config(args)
    print(run_score(cfg, args.archive, args.out).text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from usv_ray.report import report_text, write_report

    print(report_text(*write_report(Path(args.out))))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from usv_ray.tune import run_tune

    cfg = build_config(args)
    print(run_tune(cfg, args.target, args.data, args.out).text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from usv_ray.demo import run_demo

    run_demo(build_config(args), Path(args.out))
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

    pretrain = stages.add_parser(
        "pretrain", help="pretrain the frame trunk on every ingested frame, no label read"
    )
    _common(pretrain, None)
    pretrain.add_argument("--data", required=True, help="data folder that ingest wrote")
    pretrain.add_argument("--out", required=True, help="folder of the trunk and its bundle")
    pretrain.set_defaults(func=cmd_pretrain)

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

    export = stages.add_parser(
        "export",
        help="the night's results per exam as DICOM SR (TID 1500) and FHIR, for a PACS and EHR",
    )
    _common(export, None)
    export.add_argument("--data", required=True, help="data folder that ingest wrote")
    export.add_argument("--predict", required=True, help="folder of `usv-ray predict`")
    export.add_argument("--index", required=True, help="folder of `usv-ray index`")
    export.add_argument(
        "--manifest",
        required=True,
        action="append",
        help="a manifest the data was ingested from (repeatable): the link back to the "
        "source exams, re-read under the key",
    )
    export.add_argument("--out", required=True, help="folder of the documents")
    export.add_argument("--format", choices=["sr", "fhir", "both"], default="both")
    export.set_defaults(func=cmd_export)

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
