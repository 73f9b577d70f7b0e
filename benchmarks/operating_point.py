"""Does the diagnosis bundle's operating point hold tonight? Its calibrator and threshold are
fitted on single fold models' out-of-fold P, and the night reads the mean of its members:
measured against a calibration share of patients that no member trained on.

1. A bundle: ``--bundle`` (for example the demo's ``runs/demo/classify/bundle``), or one
   trained here with the demo's settings on the demo's archive (``classify``, ~10 minutes).
2. A night of new patients: ``synth`` with the demo's settings and another seed
   (``--patients``, every video labelled), ingested as the demo ingests, read by ``predict``.
3. Three readings of the same night videos, each at the bundle's target sensitivity:
   - **bundle**: as deployed, the calibrated mean of the members at the bundle's threshold;
   - **one member**: each member's own P through the same calibrator and threshold (what
     they were fitted on: one model's P of a patient it never saw), averaged over members;
   - **calibration share**: a calibrator and threshold (same method, same target) fitted
     on the members' mean P of ``--share`` patients drawn from the night, no member having
     trained on them, read on the night's other patients (the share sizes: one a training
     archive could spare, and a generous one).
   Each is read on the same held-out patients, over ``--draws`` draws of the share; printed:
   sensitivity, specificity and the share read malignant, mean with the 2.5-97.5 percentiles
   over draws, beside the bundle's own cross-fitted expectation and its interval.

Run: ``.venv/bin/python benchmarks/operating_point.py --bundle runs/demo/classify/bundle``
(about 8 minutes on 2 cores for 150 patients).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "usv_ray" / "configs" / "demo.yaml"
COMMON = ["ray.progress=false", "privacy.dev_key=true"]


def train_bundle(root: Path) -> Path:
    """A diagnosis bundle trained as the demo trains it, on the demo's archive."""
    from usv_ray.classify.pipeline import run_classify
    from usv_ray.config import load_config
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.synth import write_archive

    cfg = load_config(DEMO, COMMON)
    manifest = write_archive(cfg.synth, root / "train_archive")
    print(run_ingest(cfg, manifest, root / "train_data").text(), flush=True)
    print(run_classify(cfg, root / "train_data", root / "classify").text(), flush=True)
    return root / "classify" / "bundle"


def night(root: Path, bundle: Path, patients: int, seed: int) -> pd.DataFrame:
    """The night's videos read by ``predict``: video_id, patient_key, label, prob_raw,
    member_probs (M,) and the bundle's reading (1 malignant)."""
    from usv_ray.config import load_config
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.layout import IngestFolder, PredictFolder
    from usv_ray.predict.pipeline import run_predict
    from usv_ray.synth import write_archive

    cfg = load_config(
        DEMO,
        [
            *COMMON,
            f"synth.patients={patients}",
            f"synth.seed={seed}",
            "synth.night_followups=0",
            "synth.night_new_patients=0",
        ],
    )
    manifest = root / "night_archive" / "manifest.csv"
    if not manifest.exists():
        write_archive(cfg.synth, root / "night_archive")
    print(run_ingest(cfg, manifest, root / "night_data").text(), flush=True)
    print(run_predict(cfg, bundle, root / "night_data", root / "predict").text(), flush=True)
    videos = IngestFolder(root / "night_data").read_videos(["video_id", "label"])
    table = pd.read_parquet(PredictFolder(root / "predict").diagnoses)
    table = table[table["status"] == "ok"].merge(videos, on="video_id")
    table = table[table["label"] >= 0].reset_index(drop=True)
    table["read"] = (table["reading"] == "malignant").astype(int)
    return table


def _measures(labels: np.ndarray, reading: np.ndarray) -> dict[str, float]:
    positive, negative = labels == 1, labels == 0
    return {
        "sensitivity": float(reading[positive].mean()) if positive.any() else np.nan,
        "specificity": float(1 - reading[negative].mean()) if negative.any() else np.nan,
        "positive_share": float(reading.mean()),
    }


def readings(table: pd.DataFrame, record: dict, share: int, draws: int, seed: int) -> dict:
    """Per reading, per draw: the measures on the night's patients outside the drawn share."""
    from usv_ray.evaluate.calibration import Calibrator, fit_calibrator
    from usv_ray.evaluate.calibration import operating_point as threshold_at

    calibrator = Calibrator.from_dict(record["calibrator"])
    point = record["operating_point"]
    threshold, target = float(point["threshold"]), float(point["target_sensitivity"])
    method = record["calibrator"]["method"]
    labels = table["label"].to_numpy()
    raw = table["prob_raw"].to_numpy(np.float64)
    members = np.stack(table["member_probs"].to_numpy()).astype(np.float64)  # (V, M)
    votes = calibrator.apply(members.ravel()).reshape(members.shape) >= threshold  # (V, M)
    fixed = {  # the readings that need no share: (V,) each
        "bundle": table["read"].to_numpy(np.float64),
        "one member": votes.mean(1),
        "majority of members": (2 * votes.sum(1) > votes.shape[1]).astype(np.float64),
    }
    patients = table["patient_key"].to_numpy()
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in [*fixed, "share"]}
    for _ in range(draws):
        drawn = np.zeros(len(labels), bool)
        while len(np.unique(labels[drawn])) < 2:  # a share needs both classes to fit
            drawn = np.isin(patients, rng.choice(unique, size=share, replace=False))
        rest = ~drawn
        fitted = fit_calibrator(labels[drawn], raw[drawn], method)
        own = threshold_at(labels[drawn], fitted.apply(raw[drawn]), target)
        for name, reading in fixed.items():
            out[name].append(_measures(labels[rest], reading[rest]))
        out["share"].append(_measures(labels[rest], fitted.apply(raw[rest]) >= own))
    return {name: pd.DataFrame(rows) for name, rows in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a diagnosis bundle (default: train one)")
    parser.add_argument("--patients", type=int, default=150, help="the night's new patients")
    parser.add_argument("--shares", type=int, nargs="+", default=[10, 50], help="share sizes")
    parser.add_argument("--draws", type=int, default=500, help="draws of each share")
    parser.add_argument("--seed", type=int, default=1000, help="the night archive's synth seed")
    parser.add_argument(
        "--work", type=Path, help="keep the night here (a rerun reuses it); default: temporary"
    )
    args = parser.parse_args()

    from usv_ray import bundle as bundles

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work.resolve() if args.work else Path(tmp)
        path = args.bundle.resolve() if args.bundle else train_bundle(root)
        diagnosis = bundles.read(path, "diagnosis")
        record = diagnosis.record
        table = night(root, path, args.patients, args.seed)

    point = record["operating_point"]

    def expected(name: str) -> str:
        figure = point[f"{name}_cross_fitted"]
        return f"{100 * figure['value']:.1f} ({100 * figure['low']:.1f}-{100 * figure['high']:.1f})"

    def spread(values: pd.Series) -> str:
        low, high = np.nanpercentile(values, [2.5, 97.5])
        return f"{100 * np.nanmean(values):.1f} ({100 * low:.1f}-{100 * high:.1f})"

    measures = ("sensitivity", "specificity", "positive_share")
    print(
        f"\n## The operating point tonight: {len(table)} videos of "
        f"{table['patient_key'].nunique()} new patients ({int(table['label'].sum())} "
        f"malignant); bundle {diagnosis.version}, "
        f"{len(record['members'])} members, target sensitivity "
        f"{100 * point['target_sensitivity']:.0f}%, threshold {point['threshold']:.3f}\n"
    )
    print("| reading | share patients | draws | sensitivity | specificity | read malignant |")
    print("|---|---:|---:|---|---|---|")
    print("| bundle's expectation (cross-fitted, its own patients) | | | "
          + " | ".join(expected(m) for m in measures) + " |")  # fmt: skip
    for share in args.shares:
        results = readings(table, record, share, args.draws, args.seed)
        for name, rows in results.items():
            print(
                f"| {name} | {share} | {args.draws} | "
                + " | ".join(spread(rows[m]) for m in measures)
                + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
