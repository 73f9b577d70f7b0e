"""How well the nightly index links nodules, on an archive big enough to tell.

A synthetic archive of ``--patients`` patients (default 200) with the demo's settings (a
fifth of its videos without annotations), tonight half of them back for a follow-up and
``--new`` new patients, every exam of the night unannotated. It runs the night's own
commands with the demo's settings:

    ingest -> reid (CM, the model the index embeds with) -> tune tau -> detect
    -> ingest again with the detector (the archive's unannotated videos)
    -> index -> night ingest with the detector -> night index

and holds the index against the hidden truth over every tracklet
(:mod:`usv_ray.score.linking`, the figures ``usv-ray score`` reports): pairwise
precision, recall and F for all, annotated and automatic tracklets, the share of patients
with the right nodule count, the share of returning patients' nodules that tonight joined
their earlier ``nodule_uid``, and tonight's nodules wrongly merged, each with its interval
from a bootstrap over patients. Beside them: the re-ID test split (pairs, CM's AUC) and the
swept tau with its interval.

``--seed`` seeds the archive and every training (synth, reid, detect, index); three seeds
say whether tau and the F move by less than their intervals. ``--out`` keeps the run's
folder: a rerun there redoes nothing that finished (each stage skips its done work).
``--link cosine`` links within tau instead of by the link model; ``--against DIR`` (a
finished run of the same seed, e.g. with the other ``--link``) prints this run's pairwise F
minus that run's, with its interval from one resample of patients for both.

Run: ``.venv/bin/python benchmarks/index_quality.py --seed 0`` (about 30 minutes on 2
cores for 200 patients; ``--patients 40 --new 4`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "usv_ray" / "configs" / "demo.yaml"


def settings(args: argparse.Namespace) -> list[str]:
    """The demo's settings, scaled to the benchmark's archive and seeded."""
    return [
        "ray.progress=false",
        "privacy.dev_key=true",
        f"synth.patients={args.patients}",
        f"synth.night_new_patients={args.new}",
        f"synth.seed={args.seed}",
        "reid.models=[CM]",
        f"reid.seed={args.seed}",
        f"detect.seed={args.seed}",
        f"index.seed={args.seed}",
        f"index.link={args.link}",
    ]


def night(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Run the night's commands into ``out``; each stage's seconds."""
    from dataclasses import replace

    from usv_ray.config import load_config
    from usv_ray.detect.pipeline import run_detect
    from usv_ray.index.pipeline import run_index
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.layout import RunFolder
    from usv_ray.reid.pipeline import run_reid
    from usv_ray.synth import write_archive
    from usv_ray.synth.archive import NIGHT_DIR
    from usv_ray.tune import run_tune

    cfg = load_config(DEMO, settings(args))
    run = RunFolder(out)
    data, archive = run.data.root, run.archive
    detected = replace(cfg, ingest=replace(cfg.ingest, detector=str(run.detect.bundle)))
    manifest, tonight = archive / "manifest.csv", archive / NIGHT_DIR / "manifest.csv"
    steps = [
        ("synth", lambda: f"{write_archive(cfg.synth, archive)}" if not manifest.exists() else ""),
        ("ingest", lambda: run_ingest(cfg, manifest, data).text()),
        ("reid", lambda: run_reid(cfg, data, run.reid.root).text()),
        ("tau", lambda: run_tune(cfg, "tau", run.reid.root, run.tune("tau").root).text()),
        ("detect", lambda: run_detect(cfg, data, run.detect.root).text()),
        ("tracklets", lambda: run_ingest(detected, manifest, data).text()),
        ("index", lambda: run_index(cfg, data, run.reid.bundle, run.index.root).text()),
        ("night ingest", lambda: run_ingest(detected, tonight, data).text()),
        ("night index", lambda: run_index(cfg, data, run.reid.bundle, run.index.root).text()),
    ]  # fmt: skip
    seconds = {}
    for name, step in steps:
        began = time.perf_counter()
        print(f"--- {name}", flush=True)
        print(step(), flush=True)
        seconds[name] = time.perf_counter() - began
    return seconds


def figures(args: argparse.Namespace, out: Path) -> None:
    """Print the index against the truth, the re-ID test split and the swept tau."""
    import pyarrow.parquet as pq

    from usv_ray import bundle
    from usv_ray.config import load_config
    from usv_ray.evaluate.tables import to_markdown
    from usv_ray.layout import RunFolder
    from usv_ray.privacy import load_key
    from usv_ray.score.keyed import keyed_truth
    from usv_ray.score.linking import f_difference, linking_quality
    from usv_ray.score.tracks import tracklet_nodules
    from usv_ray.synth.truth import load_truth

    nan = float("nan")
    cfg = load_config(DEMO, settings(args))
    run = RunFolder(out)
    truth = keyed_truth(load_truth(run.archive), load_key(cfg.privacy))
    videos = run.data.read_videos()
    videos = videos[videos["status"] == "ok"]
    tonight = set(truth.videos.loc[truth.videos["batch"] == "night", "video_id"])

    def held(folder: RunFolder):
        """A run's tracklets, their true nodules, and its index against the truth."""
        columns = ["tracklet_id", "video_id", "patient_key", "source", "nodule_id"]
        tracks = folder.data.read_tracklets([*columns, "box_frames", "boxes"]).to_pandas()
        nodules = tracklet_nodules(tracks, truth)
        index = pq.read_table(folder.index.nodules).to_pandas()
        found = linking_quality(
            index, tracks, truth, videos=videos, tonight=tonight, nodule_of=nodules
        )
        return tracks, nodules, found

    tracklets, nodule_of, linking = held(run)
    patients = truth.videos["patient_key"].nunique()
    print(
        f"\nthe index against the truth ({patients} patients, {len(videos)} videos, "
        f"{len(tracklets)} tracklets; 95% intervals over 1,000 patient resamples):"
    )
    print(to_markdown(linking.pairs, float_format="{:.1f}"))
    print(to_markdown(linking.nodules, float_format="{:.1f}"))
    if args.against:
        # the same videos and tracks (an automatic tracklet's id names its run's inputs)
        theirs, _, before = held(RunFolder(args.against))
        shape = ["video_id", "source"]
        if not theirs.groupby(shape).size().equals(tracklets.groupby(shape).size()):
            raise SystemExit(f"{args.against} holds other tracklets: not a run of this seed")
        d = f_difference(before.counts, linking.counts)
        print(
            f"pairwise F over every tracklet, this run minus {args.against}: "
            f"{d['f_difference']:+.1f} points ({d['f_difference_low']:+.1f} to "
            f"{d['f_difference_high']:+.1f}, one resample of patients for both)"
        )
    table3 = pd.read_csv(run.reid.tables / "table3.csv")
    print("\nre-ID test split (CM):")
    print(to_markdown(table3, float_format="{:.1f}"))
    record = bundle.read(run.reid.bundle, "reid", verify=False).record
    for model, entry in record.get("tau", {}).items():
        interval = {"tau_low": nan, "tau_high": nan, "f_low": nan, "f_high": nan}
        interval.update(entry.get("interval", {}))
        validation = entry.get("validation", {})
        print(
            f"tau {entry['tau']:g} (validation F {entry['f_score']:.3f} on "
            f"{validation.get('tracklets')} tracklets of {validation.get('patients')} patients; "
            f"over {interval.get('resamples')} patient resamples tau "
            f"{interval['tau_low']:g}-{interval['tau_high']:g}, "
            f"F {interval['f_low']:.3f}-{interval['f_high']:.3f}) for model {model}"
        )
        if link := entry.get("link", {}).get("validation"):
            print(
                f"link model: at P(same) >= {link['threshold']:g}, cross-fitted over "
                f"{link['folds']} folds of {link['patients']} validation patients, F "
                f"{link['f_score']:.3f} ({link['f_low']:.3f}-{link['f_high']:.3f}) on "
                f"{link['pairs']} pairs ({link['same_pairs']} of one nodule)"
            )
    oracle = tau_curve(cfg, run, nodule_of)
    best = oracle.loc[oracle["f"].idxmax()]
    swept = next(iter(record.get("tau", {}).values()), {}).get("tau")
    at_swept = oracle.loc[(oracle["tau"] - (swept or 0)).abs().idxmin(), "f"]
    print(
        f"every tracklet clustered afresh at each tau: best F {best['f']:.1f} at tau "
        f"{best['tau']:g}; at the swept tau {swept}: F {at_swept:.1f}"
    )
    print(to_markdown(oracle, float_format="{:.3g}"))
    print(json.dumps({"seed": args.seed, "patients": patients}))


def tau_curve(cfg, run, nodule_of: pd.DataFrame) -> pd.DataFrame:
    """Pairwise precision, recall and F (%) over every tracklet on a true nodule
    (``nodule_of``: tracklet_id, nodule_id), each patient clustered afresh from the index's
    embeddings at each tau of ``tune.tau``."""
    import numpy as np
    import pyarrow.parquet as pq

    from usv_ray.tune.tau import score_tau

    stored = pd.concat(
        [pq.read_table(part).to_pandas() for part in run.index.embedding_runs()],
        ignore_index=True,
    )
    shown = nodule_of.dropna(subset=["nodule_id"])
    rows = stored.merge(shown, on="tracklet_id").sort_values("tracklet_id")
    embeddings = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
    patients, nodules = rows["patient_key"].to_numpy(), rows["nodule_id"].to_numpy()
    curve = []
    for tau in sorted(set(cfg.tune.tau)):
        scores = score_tau(tau, embeddings, patients, nodules, method="closure", seed=0)
        curve.append(
            {
                "tau": tau,
                "precision": 100 * scores["precision"],
                "recall": 100 * scores["recall"],
                "f": 100 * scores["f_score"],
            }
        )
    return pd.DataFrame(curve)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200, help="the archive's patients")
    parser.add_argument("--new", type=int, default=20, help="tonight's new patients")
    parser.add_argument("--seed", type=int, default=0, help="archive and training seed")
    parser.add_argument("--out", type=Path, help="keep the run here (default: a temporary one)")
    parser.add_argument(
        "--link",
        choices=["calibrated", "cosine"],
        default="calibrated",
        help="index.link: the link model's P(same nodule), or cosine distance within tau",
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="another run's --out of the same seed: the paired F difference against its index",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="usv-ray-index-quality-") as tmp:
        out = args.out or Path(tmp)
        seconds = night(args, out)
        print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
        figures(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
