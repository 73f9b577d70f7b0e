"""Self-supervised pretraining: does the trunk an archive teaches itself, without a label,
see more of the diagnosis than the random trunk the frame CNN starts from today, when few
patients are labelled? A linear probe, measured in one run.

1. An archive: ``synth`` (the demo's settings, ``--patients`` patients) ingested as the
   demo ingests it, or with ``--pocus`` the 112 real lung videos of ../shared/real_pocus
   (pathological against regular lung: a check on real ultrasound, never a breast result).
2. ``usv-ray pretrain`` on every video of it (``--epochs``; no label read).
3. Every stored frame embedded by the random-init trunk (the frame CNN's start) and by the
   pretrained one, frozen; a video's feature is the mean of its frames'.
4. For each label budget (``--budgets`` labelled patients, drawn ``--draws`` times, with
   both classes): a logistic regression on the labelled patients' videos, ROC AUC on
   every other patient's videos. Printed per budget: each trunk's mean AUC with the 2.5-97.5
   percentiles over draws, and the paired difference with its interval and the share of
   draws where the pretrained trunk wins.

A linear probe measures what the frozen trunk's features hold; the frame CNN fine-tunes
its trunk, so the gain it sees may be smaller or larger. Run:
``.venv/bin/python benchmarks/pretrain.py`` (synthetic: about 15 minutes on 2 cores),
``--pocus`` for the real videos.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
POCUS = ROOT.parent / "shared" / "real_pocus"
DEMO = ROOT / "usv_ray" / "configs" / "demo.yaml"


def embed(trunk: torch.nn.Module, data, video_ids: list[str]) -> np.ndarray:
    """Each video's mean 512-d trunk feature over its stored frames: ``(V, 512)``."""
    from usv_ray.imaging import normalise

    trunk.eval()
    features = []
    with torch.no_grad():
        for shard in data.frame_shards(video_ids):
            table = pq.read_table(shard, columns=["image", "height", "width"]).to_pydict()
            h, w = table["height"][0], table["width"][0]
            pixels = np.frombuffer(b"".join(table["image"]), np.uint8).reshape(-1, 1, h, w)
            features.append(trunk(normalise(torch.from_numpy(pixels.copy()))).mean(0).numpy())
    return np.stack(features)


def probe(
    features: dict[str, np.ndarray],
    videos: pd.DataFrame,
    budget: int,
    draws: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """AUC of a logistic regression per trunk, trained on ``budget`` labelled patients and
    tested on the rest, for ``draws`` draws of those patients (both classes in each)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    patients = videos.groupby("patient_key")["label"].max()
    aucs = {name: [] for name in features}
    while len(aucs[next(iter(aucs))]) < draws:
        chosen = set(rng.choice(patients.index, size=budget, replace=False))
        train = videos["patient_key"].isin(chosen).to_numpy()
        labels = videos["label"].to_numpy()
        if len(set(labels[train])) < 2 or len(set(labels[~train])) < 2:
            continue
        for name, x in features.items():
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            model.fit(x[train], labels[train])
            aucs[name].append(roc_auc_score(labels[~train], model.predict_proba(x[~train])[:, 1]))
    return {name: np.asarray(values) for name, values in aucs.items()}


def archive(args: argparse.Namespace, root: Path):
    """The ingest folder of the synthetic archive or of real_pocus."""
    from usv_ray.config import load_config
    from usv_ray.ingest.pipeline import run_ingest
    from usv_ray.layout import IngestFolder
    from usv_ray.synth import write_archive

    common = ["ingest.workers=0", "ray.progress=false", "privacy.dev_key=true"]
    if args.pocus:
        cfg = load_config(DEMO, [*common, "ingest.crop_box=[0.0, 0.0, 1.0, 1.0]"])
        manifest = POCUS / "manifest.csv"
    else:
        cfg = load_config(DEMO, [*common, f"synth.patients={args.patients}"])
        write_archive(cfg.synth, root / "archive")
        manifest = root / "archive" / "manifest.csv"
    print(run_ingest(cfg, manifest, root / "data").text(), flush=True)
    return IngestFolder(root / "data")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pocus", action="store_true", help="the real lung videos instead")
    parser.add_argument("--patients", type=int, default=100, help="synthetic patients")
    parser.add_argument("--epochs", type=int, default=40, help="pretraining epochs")
    parser.add_argument("--budgets", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--draws", type=int, default=200, help="draws of labelled patients")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from usv_ray.bundle.trunk import starting_trunk
    from usv_ray.config import load_config
    from usv_ray.models.frame_cnn import gray_resnet18
    from usv_ray.pretrain.pipeline import run_pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = archive(args, root)
        started = time.perf_counter()
        pre = load_config(
            DEMO,
            [
                f"pretrain.epochs={args.epochs}",
                "pretrain.workers=0",
                f"pretrain.seed={args.seed}",
                "ray.progress=false",
            ],
        )
        summary = run_pretrain(pre, data.root, root / "pre")
        pretrain_s = time.perf_counter() - started
        print(summary.text(), flush=True)
        videos = data.read_videos(["video_id", "patient_key", "label", "status"])
        videos = videos[(videos["status"] == "ok") & (videos["label"] >= 0)]
        videos = videos.sort_values("video_id").reset_index(drop=True)
        ids = videos["video_id"].tolist()
        torch.manual_seed(args.seed)  # the frame CNN's start: the runner seeds, then builds
        random_trunk = gray_resnet18()
        trained = gray_resnet18()
        trained.load_state_dict(starting_trunk(str(root / "pre" / "bundle")))
        features = {
            "random init": embed(random_trunk, data, ids),
            "pretrained": embed(trained, data, ids),
        }

    name = "real_pocus (lung, not breast)" if args.pocus else f"synthetic, {args.patients} patients"
    print(
        f"\n## Linear probe of the frozen trunk: {name}; {len(videos)} labelled videos of "
        f"{videos['patient_key'].nunique()} patients; pretraining {args.epochs} epochs in "
        f"{pretrain_s:.0f} s\n"
    )
    print(
        "| labelled patients | draws | random init AUC | pretrained AUC | difference "
        "| pretrained wins |"
    )
    print("|---:|---:|---|---|---|---:|")
    for budget in args.budgets:
        aucs = probe(features, videos, budget, args.draws, args.seed)
        diff = aucs["pretrained"] - aucs["random init"]

        def text(values: np.ndarray) -> str:
            low, high = np.percentile(values, [2.5, 97.5])
            return f"{100 * values.mean():.1f} ({100 * low:.1f}-{100 * high:.1f})"

        print(
            f"| {budget} | {len(diff)} | {text(aucs['random init'])} | {text(aucs['pretrained'])} "
            f"| {text(diff)} | {100 * (diff > 0).mean():.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
