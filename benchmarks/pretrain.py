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
its trunk, so the gain it sees may be smaller or larger.

``--ray-vs-bare``: instead, pretraining images/s (anchors, as the runner counts them)
through Ray Train with 1 worker (``usv-ray pretrain``'s steady epochs, Ray's start-up left
out) against a bare PyTorch loop over the same frames held in memory: the same
contrastive trunk and initial weights, AdamW, batch, pairs, B-mode views and thread count;
its epochs run before and after the fit, so their median brackets it (target: at least
0.85).

Run: ``.venv/bin/python benchmarks/pretrain.py`` (synthetic: about 15 minutes on 2 cores),
``--pocus`` for the real videos, ``--ray-vs-bare`` for the speed (about 5 minutes).
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


def bare_epochs(data, p, epochs: int, threads: int) -> list[float]:
    """Images/s of ``epochs`` epochs of a bare contrastive loop on the training frames of
    ``data``, as ``usv-ray pretrain`` with the settings ``p`` trains (the first epoch pays
    the warm-up)."""
    from usv_ray.imaging import bmode_views
    from usv_ray.models.contrastive import ContrastiveTrunk, nt_xent
    from usv_ray.pretrain.pipeline import pretrain_videos
    from usv_ray.pretrain.task import Frames, pair_rows

    videos = pretrain_videos(data, p)
    train = videos.loc[videos["split"] == "train", "video_id"].tolist()
    images, rows, start = [], [], 0
    for shard in data.frame_shards(train):
        table = pq.read_table(shard, columns=["seq_index", "image", "height", "width"])
        table = table.sort_by("seq_index").to_pydict()
        h, w = table["height"][0], table["width"][0]
        images.append(np.frombuffer(b"".join(table["image"]), np.uint8).reshape(-1, h, w))
        rows.append(np.arange(start, start + len(images[-1])))
        start += len(images[-1])
    frames = Frames(np.concatenate(images), rows)
    torch.set_num_threads(threads)
    torch.manual_seed(p.seed)
    model = ContrastiveTrunk(p.projection).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    size = min(p.batch_size, len(rows))
    steps = max(1, -(-len(frames.images) // size))  # as many anchors as frames
    rates = []
    for epoch in range(epochs):
        rng = np.random.default_rng([p.seed, epoch, 0])
        generator = torch.Generator().manual_seed(p.seed + epoch)
        passes = -(-steps * size // len(rows))
        order = np.concatenate([rng.permutation(len(rows)) for _ in range(passes)])
        started, anchors = time.perf_counter(), 0
        for step in range(steps):
            batch = order[step * size : (step + 1) * size]
            first, second = pair_rows(frames, batch, p.max_gap, rng)
            pair = torch.from_numpy(np.concatenate([frames.images[first], frames.images[second]]))
            z = model(bmode_views(pair[:, None], generator))  # (2B, projection)
            loss, _ = nt_xent(*z.chunk(2), p.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the runner reads the loss every step too
            anchors += len(first)
        rates.append(anchors / (time.perf_counter() - started))
    return rates[1:]


def ray_vs_bare(args: argparse.Namespace, root: Path, data) -> int:
    """Print Ray Train's pretraining images/s against the bare loop's; 1 when under 0.85."""
    import ray

    from usv_ray.config import load_config
    from usv_ray.layout import PretrainFolder
    from usv_ray.pretrain.pipeline import run_pretrain
    from usv_ray.runner import load_model

    threads = args.threads
    cfg = load_config(
        DEMO,
        [
            f"pretrain.epochs={args.epochs}",
            "pretrain.workers=1",
            f"pretrain.cpus_per_worker={threads}",
            f"pretrain.val_every={args.epochs}",  # validation is not part of the timed epochs
            f"ray.num_cpus={threads + 2}",  # Ray Data reads beside the worker
            "ray.progress=false",
        ],
    )
    bare = bare_epochs(data, cfg.pretrain, 3, threads)
    out = PretrainFolder(root / "pre")
    run_pretrain(cfg, data.root, out.root)
    ray.shutdown()
    bare += bare_epochs(data, cfg.pretrain, 3, threads)  # after: the two bracket the fit
    _, meta = load_model(out.runs / "trunk" / "models" / "trunk.pt")
    ray_rate = float(meta["samples_per_s"])  # the median of its steady epochs
    bare_rate = float(np.median(bare))
    ratio = ray_rate / bare_rate
    print(
        f"\n## Pretraining speed, {threads} threads: Ray Train 1 worker {ray_rate:.1f} images/s "
        f"(median of its steady epochs), bare loop {bare_rate:.1f} images/s (median of "
        f"{len(bare)} epochs around the fit): ratio {ratio:.2f} (target at least 0.85: "
        f"{'met' if ratio >= 0.85 else 'MISSED'})"
    )
    return 0 if ratio >= 0.85 else 1


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
    parser.add_argument("--ray-vs-bare", action="store_true", help="the speed check instead")
    parser.add_argument("--threads", type=int, default=2, help="--ray-vs-bare: torch threads")
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
        if args.ray_vs_bare:
            return ray_vs_bare(args, root, data)
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
