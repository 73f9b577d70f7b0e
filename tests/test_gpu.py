"""The GPU paths, on one CUDA device: Ray Train fits with ``use_gpu``, GPU inference actors,
and bf16 against fp32. Skipped without CUDA; tools/gpu_check.sh runs them on a GPU machine.

That machine has no PyAV and only the wheels of ``make gpu-bundle``: the inputs are the toy
archives of the CPU tests (no ingest), and nothing here needs more than the bundle. Each test
prints its figures as ``gpu figure: ...`` lines, which the check's report collects.
"""

import contextlib
import dataclasses
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from classify.toy_features import toy_videos, write_feature_cache
from classify.toy_frames import SIZE, write_toy_frames
from toy_boxes import write_boxed_frames
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ClassifyConfig, LstmConfig, ReidConfig, TrainConfig, VideoConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# one worker of one GPU, and half a CPU as in the CPU tests: the session has 2, and Ray Data
# needs the rest to feed the worker
ON_GPU = {"use_gpu": True, "workers": 1, "cpus_per_worker": 0.5}


def figure(text: str) -> None:
    print(f"gpu figure: {text}", flush=True)


@pytest.fixture(scope="module")
def gpu_ray(ray_session):
    """The session's Ray, once it is known to hold a GPU: a Train run asking for one on a Ray
    that has none would wait for it until the check's time limit."""
    gpus = ray_session.cluster_resources().get("GPU", 0)
    assert gpus >= 1, f"Ray sees {gpus} GPUs on a machine where torch sees CUDA"
    return ray_session


@contextlib.contextmanager
def exact_fp32():
    """fp32 without TF32 (cuDNN convolutions use TF32 by default): the reference for bf16."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _frames_batch(data, columns):
    """Every frame of the toy archive as one numpy batch, as Ray Data hands it over."""
    table = pq.read_table(data / "frames", columns=columns).to_pandas()
    table = table.sort_values(["video_id", "seq_index"]).reset_index(drop=True)
    return {name: table[name].to_numpy() for name in columns}


def _frame_probs(weights, batch) -> np.ndarray:
    """P(label 1) of each frame of ``batch`` by the FrameCNN at ``weights``, on the CPU."""
    from usv_ray.classify.features import FrameEmbedder

    return FrameEmbedder(str(weights), fold=0)(batch)["frame_prob"].to_numpy()


# -----------------------------------------------------------------------------
# Ray Train, one GPU: every model


@pytest.mark.ray
@pytest.mark.slow
def test_frame_cnn_fits_on_one_gpu_in_fp32_and_bf16(gpu_ray, tmp_path):
    from usv_ray.classify.cnn import CnnFold, fit_cnns

    data, runs = tmp_path / "data", tmp_path / "runs"
    ids = write_toy_frames(data)  # 8 videos x 4 frames of 32 x 32; the label shows
    cfg = ClassifyConfig(**ON_GPU, cnn=TrainConfig(epochs=4, batch_size=8, lr=1e-3))
    folds = [CnnFold(0, tuple(ids[:6]), tuple(ids[6:]))]
    fp32 = fit_cnns(cfg, data, folds, runs, "cnn_fp32")[0]
    in_bf16 = dataclasses.replace(cfg, cnn=dataclasses.replace(cfg.cnn, precision="bf16"))
    bf16 = fit_cnns(in_bf16, data, folds, runs, "cnn_bf16")[0]
    figure(
        f"frame CNN on 1 GPU, 32 x 32 toy frames: {fp32.samples_per_s:.0f} images/s fp32, "
        f"{bf16.samples_per_s:.0f} bf16; best validation loss {fp32.best_value:.3f} fp32, "
        f"{bf16.best_value:.3f} bf16"
    )
    batch = _frames_batch(data, ["video_id", "seq_index", "frame_index", "image", "height",
                                 "width", "label"])  # fmt: skip
    val = np.isin(batch["video_id"], ids[6:])
    labels = batch["label"][val]
    probs = {}
    for name, run in (("fp32", fp32), ("bf16", bf16)):
        assert run.path.exists() and math.isfinite(run.samples_per_s) and run.samples_per_s > 0
        assert run.best_value < 0.69, name  # below chance (ln 2): it learnt the toy labels
        probs[name] = _frame_probs(run.path, batch)[val]
        assert ((probs[name] >= 0.5) == labels).mean() >= 0.75, name
    # trained apart, in two precisions: the same calls on the validation frames
    gap = float(np.abs(probs["fp32"] - probs["bf16"]).mean())
    figure(f"frame CNN fits, mean |P(fp32) - P(bf16)| on the validation frames: {gap:.3f}")
    assert gap < 0.25


@pytest.mark.ray
@pytest.mark.slow
def test_lstms_fit_on_one_gpu(gpu_ray, tmp_path):
    from usv_ray.classify.lstm import LstmJob, fit_lstms, job_sequences, predict

    videos = toy_videos(96, seed=1)  # as the CPU test: 48 test videos per fold
    folds = {v.video_id: (i // 2) % 2 for i, v in enumerate(videos)}  # both labels per fold
    features = tmp_path / "features"
    write_feature_cache(features, videos, folds=range(2))
    table = {v.video_id: (v.label, folds[v.video_id]) for v in videos}
    cfg = ClassifyConfig(
        **ON_GPU, lstm=LstmConfig(workers=1, epochs=4, batch_size=8, hidden=32, lr=5e-3)
    )
    jobs = [LstmJob(0), LstmJob(1, 12)]
    paths = fit_lstms(cfg, features, table, jobs, tmp_path, "lstm")
    for job in jobs:
        test = job_sequences(features, table, job, train=False)
        accuracy = ((predict(paths[job], test) >= 0.5) == [v.label for v in test]).mean()
        figure(f"LSTM {job.key} on 1 GPU: test accuracy {accuracy:.2f} on {len(test)} videos")
        assert accuracy > 0.7  # it learnt (chance: 0.5)


@pytest.mark.ray
@pytest.mark.slow
def test_every_3d_cnn_fits_on_one_gpu(gpu_ray, tmp_path):
    pytest.importorskip("cv2", reason="the clips are made with OpenCV (not in the GPU bundle)")
    from usv_ray.classify.video import fit_video_models

    data = tmp_path / "data"
    ids = write_toy_frames(data, n_videos=4, frames=4)
    folds = {video: (i // 2) % 2 for i, video in enumerate(ids)}  # both labels in each fold
    cfg = ClassifyConfig(
        **ON_GPU, folds=2, video=VideoConfig(clip_frames=4, clip_size=SIZE, epochs=1, batch_size=2)
    )
    models = fit_video_models(cfg, data, folds, tmp_path / "runs", "video")
    assert set(models) == set(cfg.video.models) == {"C3D_BN", "R3D", "R(2+1)D"}
    for method, by_fold in models.items():
        assert set(by_fold) == {0, 1}, method
        for weights in by_fold.values():
            assert all(v.device.type == "cpu" for v in weights.values())
            assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["CM", "VM"])
def test_reid_models_fit_on_one_gpu(gpu_ray, tmp_path, kind):
    pytest.importorskip("cv2", reason="the clips are read with OpenCV (not in the GPU bundle)")
    from usv_ray.reid.training import fit_reid
    from usv_ray.runner import load_model

    ids = write_toy_tracklets(tmp_path, patients=6, nodules=2, per_nodule=3, frames=4)
    train = [t for t in ids if int(t[1:3]) < 4]  # patients 0-3; 4 and 5 validate
    val = [t for t in ids if int(t[1:3]) >= 4]
    cfg = ReidConfig(
        **ON_GPU, clip_frames=4, clip_height=32, clip_width=16, epochs=2, p=2, k=2,
        batch_size=8, lr=1e-3,
    )  # fmt: skip
    trained = fit_reid(cfg, kind, tmp_path, train, val, tmp_path / "runs", kind)
    weights = load_model(trained.path)[0]
    rates = ", ".join(f"{rate:.0f}" for rate in trained.rates)
    figure(f"re-ID {kind} on 1 GPU: {rates} clips/s; best val accuracy {trained.best_value}")
    assert trained.start_epoch == 0 and len(trained.rates) == 2
    assert math.isfinite(trained.best_value)
    assert weights and all(v.device.type == "cpu" for v in weights.values())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# -----------------------------------------------------------------------------
# inference actors of one GPU


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_inference_actors_match_the_cpu(gpu_ray, tmp_path):
    import pandas as pd
    from toy_bundle import write_toy_reid_bundle

    from usv_ray.bundle.reid import EMBED_COLUMNS, ShardEmbedder, TrackletEmbedder
    from usv_ray.classify.features import FrameEmbedder, cache_features
    from usv_ray.config import RayConfig
    from usv_ray.layout import IngestFolder
    from usv_ray.models.frame_cnn import FrameCNN, frame_cnn_meta
    from usv_ray.pool import run_batches
    from usv_ray.runner import save_model

    # an actor of 1 GPU sees one, and both embedders put their model on it
    data = tmp_path / "data"
    ids = write_toy_frames(data, n_videos=4, frames=3)
    torch.manual_seed(3)
    weights = tmp_path / "cnn.pt"
    save_model(weights.parent, weights.stem, FrameCNN().state_dict(), frame_cnn_meta())
    model = write_toy_reid_bundle(tmp_path / "reid", seed=4, clip=(4, 32, 16))

    @gpu_ray.remote(num_gpus=1, num_cpus=1)
    def devices() -> tuple[str, str]:
        frame = FrameEmbedder(str(weights), fold=0, use_gpu=True)
        tracklet = TrackletEmbedder(str(model), "CM")
        return frame.device.type, tracklet.models.device.type

    assert gpu_ray.get(devices.remote()) == ("cuda", "cuda")

    # the feature cache through Ray Data (map_batches, num_gpus=1) against the CPU embedder
    cfg = ClassifyConfig(**ON_GPU)
    folder = cache_features(cfg, data, ids, weights, 0, tmp_path / "features")
    cached = pq.read_table(folder).to_pandas().sort_values(["video_id", "seq_index"])
    columns = ["video_id", "seq_index", "frame_index", "image", "height", "width", "label"]
    expected = FrameEmbedder(str(weights), fold=0)(_frames_batch(data, columns))
    assert cached["video_id"].tolist() == expected["video_id"].to_pylist()
    gpu_features = np.stack(cached["feature"].to_numpy())
    cpu_features = np.stack(expected["feature"].to_numpy(zero_copy_only=False))
    gap = float(np.abs(gpu_features - cpu_features).max() / np.abs(cpu_features).max())
    figure(f"frame features, GPU actor vs CPU: max relative difference {gap:.2e}")
    assert gap < 2e-2  # TF32 convolutions on the GPU (10-bit mantissas)

    # tracklet embeddings through the index's embedding job (1 actor of 1 GPU)
    pytest.importorskip("cv2", reason="the clips are read with OpenCV (not in the GPU bundle)")
    write_toy_tracklets(data, patients=2, nodules=2, per_nodule=2, frames=4)
    items = [{"shard": s, "tracklets": ""} for s in IngestFolder(data).tracklet_shards()]
    tables = run_batches(
        ShardEmbedder,
        {"bundle": str(model), "kind": "CM", "batch_size": 4},
        items,
        workers=1,
        ray=RayConfig(progress=False),
        gpus=1,
    )
    embedded = pd.concat(t.to_pandas() for t in tables)
    rows = pq.read_table(data / "tracklets", columns=EMBED_COLUMNS).to_pandas()
    reference = TrackletEmbedder(str(model), "CM", device="cpu")(
        {name: rows[name].to_numpy() for name in EMBED_COLUMNS}
    ).to_pandas()
    on_gpu = embedded.set_index("tracklet_id").loc[reference["tracklet_id"]]
    gpu_vectors, cpu_vectors = np.stack(on_gpu["embedding"]), np.stack(reference["embedding"])
    cosine = float((gpu_vectors * cpu_vectors).sum(1).min())  # unit vectors
    figure(f"tracklet embeddings, GPU actor vs CPU: least cosine similarity {cosine:.6f}")
    assert len(embedded) == len(reference) == 8 and cosine > 0.999


@pytest.mark.ray
@pytest.mark.slow
def test_predict_on_a_gpu_actor_matches_the_cpu(gpu_ray, tmp_path):
    import pandas as pd
    from toy_bundle import write_toy_bundle, write_toy_data

    from usv_ray.config import Config, PredictConfig, RayConfig
    from usv_ray.layout import IngestFolder
    from usv_ray.predict.pipeline import _diagnose

    ids = write_toy_data(tmp_path / "data", n_videos=6, frames=5, tracklets=2)
    bundle = write_toy_bundle(tmp_path / "cls", members=3)
    videos = pd.DataFrame({"video_id": ids, "patient_key": "p", "study_key": "s"})

    def diagnose(predict):
        cfg = Config(ray=RayConfig(progress=False), predict=predict)
        data = IngestFolder(tmp_path / "data")
        rows = pd.concat(t.to_pandas() for t in _diagnose(cfg, bundle, data, videos))
        return rows.set_index("video_id").loc[ids]

    cpu = diagnose(PredictConfig(cpus_per_worker=0.5))
    gpu = diagnose(PredictConfig(cpus_per_worker=0.5, use_gpu=True, precision="bf16"))
    assert (gpu["status"] == "ok").all()
    gap = float((gpu["prob_raw"] - cpu["prob_raw"]).abs().max())
    figure(f"predict, 1 GPU actor in bf16 vs the CPU: max P(malignant) difference {gap:.2e}")
    assert gap < 0.05


@pytest.mark.ray
@pytest.mark.slow
def test_the_detector_trains_on_one_gpu_and_detects_in_bf16(gpu_ray, tmp_path):
    from usv_ray.bundle.detector import DetectorModel
    from usv_ray.bundle.record import Bundle
    from usv_ray.config import DetectConfig
    from usv_ray.detect.training import DetectorTask, frames_dataset
    from usv_ray.models import load
    from usv_ray.runner import RunSettings, train_models

    ids = write_boxed_frames(tmp_path, n_videos=4, frames=8, size=SIZE)
    cfg = DetectConfig(epochs=2, **ON_GPU)
    sets = {"train": frames_dataset(tmp_path, ids[:3]), "val": frames_dataset(tmp_path, ids[3:])}
    settings = RunSettings.of(cfg, cfg, cfg.seed)
    run = train_models([DetectorTask(cfg, SIZE)], settings, tmp_path / "runs", "det",
                       lambda _: sets, lambda _: ["train"])["detector"]  # fmt: skip
    model, _ = load(run.path, "cuda")
    frames = np.random.default_rng(1).integers(0, 255, (16, SIZE, SIZE), dtype=np.uint8)
    empty = Bundle(tmp_path, {})
    with exact_fp32():
        fp32 = DetectorModel(empty, model, torch.device("cuda"))(frames)
    bf16 = DetectorModel(empty, model, torch.device("cuda"), bf16=True)(frames)

    def top(found) -> np.ndarray:  # each frame's best score (0 without a detection)
        return np.array([float(scores.max()) if len(scores) else 0.0 for _, scores in found])

    gap = float(np.abs(top(fp32) - top(bf16)).max())
    figure(f"detector trained on 1 GPU at {run.samples_per_s:.0f} frames/s; bf16 vs fp32 "
           f"detection: max top-score difference {gap:.2e}")  # fmt: skip
    assert len(bf16) == 16 and gap < 0.05


@pytest.mark.ray
@pytest.mark.slow
def test_the_trunk_pretrains_on_one_gpu_in_bf16_channels_last(gpu_ray, tmp_path):
    from usv_ray.config import PretrainConfig
    from usv_ray.models.contrastive import trunk_weights
    from usv_ray.pretrain.task import FRAME_COLUMNS, PretrainTask
    from usv_ray.runner import RunSettings, frames_dataset, load_model, train_models

    ids = write_toy_frames(tmp_path / "data", n_videos=8, frames=6)
    shards = sorted(str(p) for p in (tmp_path / "data" / "frames").iterdir())
    cfg = PretrainConfig(
        epochs=2, batch_size=4, precision="bf16", channels_last=True, projection=16, **ON_GPU
    )
    sets = {"train": frames_dataset(shards[:6], FRAME_COLUMNS),
            "val": frames_dataset(shards[6:], FRAME_COLUMNS)}  # fmt: skip
    settings = RunSettings.of(cfg, cfg, cfg.seed)
    task = PretrainTask(cfg, train_frames=(len(ids) - 2) * 6)
    run = train_models([task], settings, tmp_path / "runs", "trunk",
                       lambda _: sets, lambda _: ["train"])["trunk"]  # fmt: skip
    weights, meta = load_model(run.path)
    figure(f"trunk pretrained on 1 GPU in bf16, channels-last at {run.samples_per_s:.0f} "
           f"pairs/s; best validation loss {run.best_value:.3f}")  # fmt: skip
    assert meta["model"] == "ContrastiveTrunk" and math.isfinite(run.best_value)
    assert all(torch.isfinite(v.float()).all() for v in trunk_weights(weights).values())


# -----------------------------------------------------------------------------
# bf16 against fp32, forward


def _frame_cnn():
    from usv_ray.imaging import normalise
    from usv_ray.models.frame_cnn import FrameCNN

    frames = torch.randint(0, 256, (16, 1, 224, 224), dtype=torch.uint8)
    return FrameCNN(), normalise(frames)


def _r2plus1d():
    from usv_ray.models.video import build_video_model

    return build_video_model("R(2+1)D"), torch.rand(4, 1, 12, 112, 112) * 2 - 1


@pytest.mark.parametrize(
    ("name", "build"), [("frame CNN", _frame_cnn), ("R(2+1)D", _r2plus1d)], ids=["cnn", "r2plus1d"]
)
def test_bf16_autocast_forward_matches_fp32(name, build):
    torch.manual_seed(0)
    model, inputs = build()
    model, inputs = model.cuda().eval(), inputs.cuda()
    with torch.no_grad(), exact_fp32():
        reference = model(inputs).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(inputs)
    assert low.dtype == torch.bfloat16  # autocast did run the model in bf16
    low = low.float()
    logits = float((low - reference).abs().max() / reference.abs().max())
    probs = float((low.softmax(1) - reference.softmax(1)).abs().max())
    figure(f"{name} forward, bf16 autocast vs fp32: max relative logit difference {logits:.2e}, "
           f"max probability difference {probs:.2e}")  # fmt: skip
    assert logits < 0.05 and probs < 0.02
