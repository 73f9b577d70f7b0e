"""Configuration: frozen dataclasses loaded from YAML, with ``key=value`` overrides.

Every setting of every stage, with a comment each: one file past 500 lines on purpose, the
one place a user reads what can be set.

Every stage reads one :class:`Config`. Unknown keys are rejected with the dotted path of
the offending key, so a typo in a YAML file or a ``--set`` never passes silently. A Ray
worker gets the (picklable) config object it needs passed in; nothing reads module state.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from usv_ray.errors import UsvRayError

log = logging.getLogger(__name__)


class ConfigError(UsvRayError, ValueError):
    """A configuration file or override that does not fit the schema."""


RUNTIME = "runtime"  # field metadata: how a stage runs, not what it writes
LATER = "later"  # field metadata: applied after the stage's resumable work, or by a later stage
ADDED = "added"  # field metadata: added after folders existed; counts only away from its default


def runtime(default: Any) -> Any:
    """A setting of how a stage runs (workers' CPUs, GPUs, threads, checkpoint cadence, batch
    sizes of inference), not of what it writes: a folder's fingerprint leaves it out, so a
    rerun with another value resumes the folder instead of refusing it."""
    return field(default=default, metadata={RUNTIME: True})


def later(default: Any = None, *, default_factory: Any = None) -> Any:
    """A setting applied after a stage's resumable work and redone on every run (its tables'
    intervals, the bundle's calibration and operating point), or read by a later stage (the
    tracker that ingest runs with a detector): a folder's fingerprint leaves it out."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={LATER: True})
    return field(default=default, metadata={LATER: True})


def added(default: Any) -> Any:
    """A setting that changes what a stage writes, added after folders were made without it:
    a folder's fingerprint counts it only when set away from ``default`` (what the folders
    made before it did), so those folders resume rather than refuse after an upgrade."""
    return field(default=default, metadata={ADDED: True})


def added_defaults(section_type: type) -> dict[str, Any]:
    """The :func:`added` settings of a config section type, at their defaults: what a folder
    made before them was made with."""
    return {f.name: f.default for f in dataclasses.fields(section_type) if f.metadata.get(ADDED)}


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start or join a local Ray; "auto" or "ray://host:10001"
    num_cpus: int | None = None  # logical CPUs of a local Ray started here (None: all cores)
    object_store_mb: int | None = None  # object store of a local Ray started here
    progress: bool = True  # Ray Data progress bars on long work


@dataclass(frozen=True)
class LockConfig:
    """One run per folder: a stage holds its ``--out`` (ingest its data folder) while it
    runs. A second run there refuses at once, or waits for the first to end."""

    busy: Literal["refuse", "wait"] = runtime("refuse")
    wait_s: float = runtime(3600.0)  # how long a run waits with busy: wait, at most


@dataclass(frozen=True)
class PrivacyConfig:
    key_file: str | None = None  # file holding the HMAC key; USV_RAY_SECRET wins when set
    dev_key: bool = False  # demo only: fall back to a fixed, public development key


@dataclass(frozen=True)
class SynthConfig:
    patients: int = 24  # patients in the archive
    seed: int = 0  # everything below is a pure function of this seed
    width: int = 320  # scanner frame size in pixels (the text band and FOV scale with it)
    height: int = 240
    fps: float = 15.0
    min_frames: int = 4  # video length range, drawn log-uniformly
    max_frames: int = 180
    max_nodules: int = 3  # 1..max_nodules per patient
    max_studies: int = 2  # 1..max_studies exams per patient (follow-ups on later dates)
    max_videos_per_study: int = 2
    malignant_fraction: float = 0.5  # share of nodules that are malignant
    dicom_fraction: float = 0.15  # share of videos written as DICOM multi-frame cine
    keyframe_interval: int = 15  # H.264 GOP length in frames
    workers: int = 2  # processes that render patients in parallel
    # share of the archive's videos whose manifest row gives an annotations file (a seeded
    # draw); the others keep their label, and their nodules only in out/truth.json
    annotated_fraction: float = 1.0
    # share of the archive's patients who come back tonight (out/night/): a follow-up exam
    # 3 to 14 months after their last one, 1..max_videos_per_study videos, no label or boxes
    night_followups: float = 0.0
    night_new_patients: int = 0  # new patients tonight, one exam each (out/night/)


SamplingMode = Literal["all", "equal", "variable"]


@dataclass(frozen=True)
class IngestConfig:
    sampling: SamplingMode = "variable"  # all frames | exactly n_frames | at most n_frames
    n_frames: int = 30  # equal: videos with fewer frames are rejected; variable: the cap
    frame_size: int = 224  # frames are stored frame_size x frame_size, gray
    # Kept region (x0, y0, x1, y1) as fractions of the frame: everything outside, such as
    # the scanner's burned-in patient name and ID, is cut before anything is stored.
    crop_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    # DICOM: keep the bounding box of the header's 2D ultrasound regions instead, where it
    # has them (SequenceOfUltrasoundRegions); other files, and DICOM without them, crop_box
    crop_from_header: bool = added(False)
    trim_fov: bool = True  # then trim to the bounding box of the ultrasound field of view
    fov_threshold: int = 12  # gray level above which a pixel belongs to the field of view
    tracklet_frames: int = 8  # T: frames sampled uniformly along each annotated tracklet
    patch_height: int = 256  # tracklet patches are patch_height x patch_width
    patch_width: int = 128
    max_frame_pixels: int = 50_000_000  # larger frames are an error row, not an OOM
    # FFmpeg threads per video (Ray already runs videos in parallel)
    decode_threads: int = runtime(1)
    num_cpus_per_video: float = runtime(1.0)  # Ray CPUs each ingest worker reserves
    # ingest actors (None: the cluster's CPUs / num_cpus_per_video); 0: in this process,
    # one video after another, without Ray (a laptop's small night)
    workers: int | None = runtime(None)
    rows_per_row_group: int = runtime(64)  # frames per Parquet row group (bounds memory)
    # a detector bundle (usv-ray detect): videos without annotations get automatic
    # tracklets from it (detect.track sets the tracker); None: only annotated videos have
    # any. Its version, not its path, is what a video's tracklets depend on.
    detector: str | None = runtime(None)
    detector_gpu: bool = runtime(False)  # each ingest actor detects on a GPU, in bf16


VideoModel = Literal["C3D_BN", "R3D", "R(2+1)D"]
DetectorModel = Literal["centernet", "fcos"]
# the training runner's settings (usv_ray.runner): numeric precision of the training steps,
# the validation metric whose best epoch a model keeps (loss: lowest; acc, auc, ap: highest),
# the optimizer and the learning-rate schedule
Precision = Literal["fp32", "bf16", "fp16"]
BestMetric = Literal["val_loss", "val_acc", "val_auc", "val_ap"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TrainConfig:
    """How the training runner (:mod:`usv_ray.runner`) trains one model: the section of
    each model (``classify.cnn``, ``classify.lstm``, ``classify.video``, ``reid``,
    ``detect``), its field names the runner's own."""

    epochs: int = 2
    lr: float = 1e-4  # the optimizer's learning rate (its peak, with a schedule)
    batch_size: int = 32  # per worker
    best: BestMetric = "val_loss"  # what picks the best epoch
    weight_decay: float = 0.0
    optimizer: Optimizer = "adam"  # adam, adamw, or sgd (momentum 0.9, Nesterov)
    # constant, or cosine: from lr down to lr / 100 at the last epoch
    schedule: Schedule = "constant"
    warmup_epochs: int = 0  # a linear ramp from lr / 10 to lr over these first epochs
    # fp32 | bf16 | fp16 (with a gradient scaler): autocast of the training steps; fp32 on a
    # CPU (bf16 there is slower than fp32 on most CPUs), bf16 on GPUs that have it
    precision: Precision = "fp32"


@dataclass(frozen=True)
class LstmConfig(TrainConfig):
    """The LSTMs on cached frame features (the variable- and equal-frame sets)."""

    epochs: int = 20  # paper: 300
    lr: float = 1e-3  # paper: 1e-5
    batch_size: int = 32  # videos per batch, per worker
    hidden: int = 256
    # Ray Train workers of the LSTM runs; 0 trains in the calling process without Ray Train
    # (on its CPU): no worker start-up, which on a laptop is most of a small LSTM run
    workers: int = runtime(1)


@dataclass(frozen=True)
class VideoConfig(TrainConfig):
    """The 3D-CNN baselines, on clip_frames uniformly sampled frames of clip_size square."""

    models: tuple[VideoModel, ...] = ("C3D_BN", "R3D", "R(2+1)D")
    clip_frames: int = 12
    clip_size: int = 112  # frames are resized from the ingest size
    batch_size: int = 8  # clips per batch, per worker


@dataclass(frozen=True)
class ClassifyConfig:
    folds: int = 5  # patient-level cross-validation folds
    seed: int = 0  # folds, initialisation, shuffling and augmentation
    # Ray Train workers (DDP) per training run, one GPU each: the global batch is workers x
    # batch_size; how it runs, not what it trains (a folder resumes on another count)
    workers: int = runtime(1)
    cpus_per_worker: float = runtime(1.0)  # leave CPUs free for Ray Data to feed the workers
    use_gpu: bool = runtime(False)  # one GPU per worker when the cluster has them
    # the frame CNN's starting trunk: a trunk bundle of `usv-ray pretrain` (its folder), or
    # imagenet (torchvision's cached weights, never fetched); None: random initialisation
    pretrained: str | None = None
    cnn: TrainConfig = field(default_factory=TrainConfig)  # the frame CNN; paper: 300
    # epochs, batch 256, lr 1e-5
    lstm: LstmConfig = field(default_factory=LstmConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    # every model (frame CNN, LSTMs, 3D CNNs) validates every N epochs and at its last, on
    # its fold's validation patients, and keeps its best epoch by its section's best; paper: 20
    val_every: int = 1
    channels_last: bool = runtime(False)  # the frame CNN in NHWC layout (faster on GPUs)
    # checkpoint a model's last epoch, and between at most every this many seconds (0: every
    # epoch): a checkpoint of a few hundred MB after each few-second epoch slows training
    checkpoint_every_s: float = runtime(60.0)
    val_fraction: float = 0.15  # share of the training patients that validate the CNN
    equal_frames: int = 12  # N of the equal-frame CNN-LSTM (the paper's best of 10..20)
    frame_counts: tuple[int, ...] = (10, 12, 14, 16, 18, 20)  # the frame-count experiment
    threshold: float = later(0.5)  # P(malignant) at or above it reads malignant (the tables')
    n_boot: int = later(1000)  # bootstrap resamples over patients for the 95% CIs
    # The diagnosis bundle (bundle/): the k fold models as an ensemble, and with final_model
    # one more CNN + LSTM trained on every labelled patient for the epochs the folds chose
    final_model: bool = later(False)
    # share of the labelled patients (label-stratified) that no member trains on: the
    # calibrator and the operating point are fitted on the members' mean P of their videos,
    # which is what the bundle deploys. 0: fitted on the out-of-fold P of single fold models
    # instead, which reads more videos malignant than it promises (benchmarks/RESULTS.md:
    # worth it from about 50 share patients; fewer make the threshold swing)
    calibration_share: float = 0.0
    calibration: Literal["platt", "isotonic"] = later("platt")
    calibration_bins: int = later(10)  # bins of the reliability diagrams and calibration errors
    # the operating point: the threshold of calibrated P(malignant) that reaches this
    # sensitivity on the out-of-fold predictions; the bundle reads videos at it
    target_sensitivity: float = later(0.95)
    # classify warns when the target sensitivity leaves the cross-fitted specificity below
    # this: most benign videos would then read malignant
    min_specificity: float = later(0.5)


ReidModel = Literal["CM", "VM"]


@dataclass(frozen=True)
class ReidConfig(TrainConfig):
    epochs: int = 10  # not given in the paper
    lr: float = 1e-4  # Adam, as in the paper
    batch_size: int = 16  # VM batches: tracklet pairs per worker (CM's are p x k)
    best: BestMetric = "val_acc"  # the best epoch: validation pair accuracy (the paper's)
    weight_decay: float = 5e-4
    seed: int = 0  # split, initialisation, P x K batches, partner pairs
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test patients
    workers: int = runtime(1)  # Ray Train workers (DDP) per training run (as classify.workers)
    cpus_per_worker: float = runtime(1.0)
    use_gpu: bool = runtime(False)  # one GPU per worker when the cluster has them
    models: tuple[ReidModel, ...] = ("CM", "VM")  # CM: classification, VM: verification
    embed_model: ReidModel = "CM"  # the model that writes embeddings/
    clip_frames: int = 8  # T frames sampled uniformly along each tracklet clip
    clip_height: int = 256  # clips are resized from the ingest patch size to this
    clip_width: int = 128
    val_every: int = 1  # validate every N epochs (and at the last) on the validation patients
    checkpoint_every_s: float = runtime(60.0)  # as classify.checkpoint_every_s
    p: int = 8  # CM batches: P nodules x K tracklets each, per worker
    k: int = 4
    triplet_margin: float = 0.3  # batch-hard triplet loss (CM)
    contrastive_margin: float = 1.0  # contrastive loss on L2-normalised embeddings (VM)
    n_boot: int = later(1000)  # bootstrap resamples over patients for the 95% CIs


ClusterMethod = Literal["closure", "algorithm1"]


@dataclass(frozen=True)
class IndexConfig:
    model: ReidModel = "CM"  # which of the re-ID bundle's models embeds the archive
    # cosine distance within which two tracklets show the same nodule; None: the tau the
    # sweep (usv-ray tune --target tau) recorded in the re-ID bundle for this model
    tau: float | None = None
    # how two tracklets link: "calibrated", where a P(same nodule) from their embeddings
    # and, within one exam, their boxes' depth and height (the link model the tau sweep
    # fits on the validation patients and records in the re-ID bundle) is at least
    # link_threshold; "cosine", where their embeddings' cosine distance is within tau
    link: Literal["calibrated", "cosine"] = later("calibrated")
    link_threshold: float = later(0.5)
    method: ClusterMethod = "closure"  # closure: order-independent; algorithm1: the paper's
    seed: int = 0  # algorithm1's choice of seed elements
    # embedding actors (one model each); 0: embed in this process, on its CPU, without Ray
    # Data (no actor start-up, which on a laptop is most of a small night's work)
    workers: int = runtime(1)
    cpus_per_worker: float = runtime(1.0)
    use_gpu: bool = runtime(False)  # one GPU per embedding actor when the cluster has them
    batch_size: int = runtime(16)  # tracklets per inference batch
    # how a nodule's P(malignant) is pooled from the diagnoses (usv-ray predict):
    # tracklets: the mean over its tracklets, each read by the CNN-LSTM on the frames it
    # spans; videos: the mean over the videos that show it
    nodule_scoring: Literal["tracklets", "videos"] = "tracklets"


@dataclass(frozen=True)
class PredictConfig:
    """``usv-ray predict``: Ray Data batch inference of a diagnosis bundle."""

    workers: int = runtime(1)  # inference actors, each holding the whole bundle; 0: here
    cpus_per_worker: float = runtime(1.0)  # CPUs (and torch threads) per actor
    use_gpu: bool = runtime(False)  # one GPU per actor when the cluster has them
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on a GPU; fp32 on a CPU
    batch_size: int = runtime(8)  # videos per inference batch
    # commit the rows in parts of this many videos, or after this many seconds, whichever
    # comes first: a run stopped midway keeps what it committed
    commit_every: int = runtime(256)
    commit_every_s: float = runtime(120.0)


@dataclass(frozen=True)
class TrackConfig:
    """The tracker ingest runs with a detector (ByteTrack's two passes: confident boxes
    start and extend tracks, faint ones only extend them), and which tracks become
    tracklets."""

    every: int = 1  # detect every N-th frame (in batches of detect.batch_size frames)
    high: float = 0.5  # boxes at least this confident match in the first pass
    low: float = 0.1  # boxes at least this confident extend tracks in the second pass
    iou: float = 0.3  # least IoU of a box with a track's predicted box to extend it
    new_score: float = 0.6  # least score of a box that starts a track
    max_lost: int = 10  # frames a track may go unmatched before it ends
    min_frames: int = 5  # a track matched in fewer frames is no tracklet
    min_score: float = 0.5  # nor one whose mean detection score is lower


@dataclass(frozen=True)
class DetectConfig(TrainConfig):
    """The nodule detector (``usv-ray detect``) and the tracker that ingest runs with it."""

    epochs: int = 20
    lr: float = 1e-3  # Adam
    batch_size: int = 32  # frames per batch, per worker
    best: Literal["val_ap"] = "val_ap"  # the best epoch: validation AP at IoU 0.5
    weight_decay: float = 1e-4
    model: DetectorModel = "centernet"  # centernet: a light head on ResNet-18; fcos: torchvision
    seed: int = 0  # split, initialisation, batch order and augmentation
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / validation / test patients
    workers: int = runtime(1)  # Ray Train workers (DDP) per training run (as classify.workers)
    cpus_per_worker: float = runtime(1.0)
    use_gpu: bool = runtime(False)  # one GPU per worker when the cluster has them
    val_every: int = 1  # validate every N epochs (and at the last) on the validation patients
    checkpoint_every_s: float = runtime(60.0)  # as classify.checkpoint_every_s
    score_threshold: float = 0.05  # detections below are never kept (the tracker's low pass)
    pretrained: str | None = None  # the detector's starting trunk, as classify.pretrained
    track: TrackConfig = later(default_factory=TrackConfig)  # noqa: RUF009 (a field)


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """Self-supervised pretraining of the 2D trunk (``usv-ray pretrain``): contrastive, two
    nearby frames of one video a positive pair, the other videos of the batch negatives."""

    epochs: int = 20
    lr: float = 1e-3  # AdamW
    batch_size: int = 64  # videos per batch, per worker: 2 x this many views
    optimizer: Optimizer = "adamw"
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    seed: int = 0  # validation split, initialisation, pairs and augmentation
    # at most this many stored frames apart: the two frames of a positive pair
    max_gap: int = 3
    temperature: float = 0.2  # of the contrastive loss (NT-Xent)
    projection: int = 128  # the projection head's output; dropped from the trunk bundle
    # share of the patients held out: their videos' contrastive loss picks the best epoch
    val_fraction: float = 0.1
    # which videos teach it: all of them, or (to measure what unlabelled ones add) only
    # those without a label
    videos: Literal["all", "unlabelled"] = "all"
    workers: int = runtime(1)  # Ray Train workers (DDP); 0: in this process
    cpus_per_worker: float = runtime(1.0)
    use_gpu: bool = runtime(False)
    channels_last: bool = runtime(False)
    val_every: int = 1
    checkpoint_every_s: float = runtime(60.0)


TuneTarget = Literal["cnn", "lstm", "equal_frames", "variable_max", "reid", "tau"]


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps (``usv-ray tune``): search spaces and how trials are run."""

    num_samples: int = 4  # lr/batch-size targets: random trials; grid targets: repeats of the grid
    seed: int = 0  # the random search's draws
    # trials at once; None: as many whole Train runs as the cluster fits with one CPU left
    # for Ray Data and the drivers (1 on a 2-CPU laptop)
    max_concurrent: int | None = runtime(None)
    grace_period: int = 1  # ASHA: epoch index (from 0) at which trials are first compared
    reduction_factor: int = 2  # ASHA: each rung lets the best 1/reduction_factor go on
    driver_memory_mb: int = runtime(256)  # what a trial's driver reserves: it only launches Train
    # custom resource drivers also take 0.01 of (safe nodes)
    driver_resource: str | None = runtime(None)
    fold: int = 0  # cnn/lstm targets: tune on this classify fold's training patients
    cnn_lr: tuple[float, float] = (1e-5, 1e-3)  # log-uniform range of classify.cnn.lr
    cnn_batch_size: tuple[int, ...] = (16, 32, 64)  # choices of classify.cnn.batch_size
    lstm_lr: tuple[float, float] = (1e-5, 1e-2)  # log-uniform range of classify.lstm.lr
    lstm_batch_size: tuple[int, ...] = (16, 32, 64)  # choices of classify.lstm.batch_size
    reid_lr: tuple[float, float] = (1e-5, 1e-3)  # log-uniform range of reid.lr
    reid_p: tuple[int, ...] = (4, 8, 16)  # choices of reid.p (CM batch: p nodules x k clips)
    frame_counts: tuple[int, ...] = (10, 12, 14, 16, 18, 20)  # grid of classify.equal_frames
    variable_max: tuple[int, ...] = (10, 15, 20, 25, 30)  # grid of ingest.n_frames (the cap)
    # grid of index.tau, also the clustering table's (usv_ray.cluster.compare.TAU_GRID):
    # cosine distances 0.001 to 0.81, each 1.25 x the last (two significant digits). A
    # trained re-ID model puts one nodule's tracklets within a few hundredths and another
    # nodule's a few hundredths further (a briefly trained one, thousandths): an even grid
    # of 0.01 steps there merged nodules.
    tau: tuple[float, ...] = tuple(float(f"{0.001 * 1.25**i:.2g}") for i in range(31))
    tau_n_boot: int = 200  # patient resamples behind the chosen tau's interval


@dataclass(frozen=True)
class Config:
    ray: RayConfig = field(default_factory=RayConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    reid: ReidConfig = field(default_factory=ReidConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# Keys renamed when the models got one training section each: an old key still works for
# one release (its value moves to the new keys, with a warning naming them).
RENAMED: dict[str, tuple[str, ...]] = {
    **{
        f"classify.{model}_{name}": (f"classify.{model}.{name}",)
        for model in ("cnn", "lstm", "video")
        for name in ("epochs", "batch_size", "lr", "best")
    },
    "classify.lstm_hidden": ("classify.lstm.hidden",),
    "classify.lstm_workers": ("classify.lstm.workers",),
    "classify.video_models": ("classify.video.models",),
    "classify.clip_frames": ("classify.video.clip_frames",),
    "classify.clip_size": ("classify.video.clip_size",),
    "classify.precision": tuple(f"classify.{m}.precision" for m in ("cnn", "lstm", "video")),
    "reid.pair_batch_size": ("reid.batch_size",),
    "detect.every": ("detect.track.every",),
    "detect.track_high": ("detect.track.high",),
    "detect.track_low": ("detect.track.low",),
    "detect.track_iou": ("detect.track.iou",),
    "detect.new_track_score": ("detect.track.new_score",),
    "detect.max_lost": ("detect.track.max_lost",),
    "detect.min_track_frames": ("detect.track.min_frames",),
    "detect.min_track_score": ("detect.track.min_score",),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits no option")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]} (known keys: {', '.join(sorted(names))})"
        )
    values = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**values)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (``12``, ``true``, ``[0, 0.1]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. ingest.n_frames=12")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _get_path(tree: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _pop_path(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    del node[last]


def _renamed(key: str, where: str) -> tuple[str, ...]:
    """The keys an old key's value goes to (itself when it is not renamed), warning once."""
    if key not in RENAMED:
        return (key,)
    log.warning(
        "%s: %s is renamed %s; the old key stops working in the next release",
        where,
        key,
        " and ".join(RENAMED[key]),
    )
    return RENAMED[key]


def _rename_tree(tree: dict, where: str) -> None:
    """Move the values of renamed keys in a config file's tree to their new keys (a new
    key that the file sets itself wins)."""
    for old in RENAMED:
        found, value = _get_path(tree, old)
        if not found:
            continue
        _pop_path(tree, old)
        for new in _renamed(old, where):
            if not _get_path(tree, new)[0]:
                _set_path(tree, new, value)


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a :class:`Config` from an optional YAML file and ``key=value`` overrides.

    A renamed key (:data:`RENAMED`) still works, with a warning naming its new key.
    """
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded or {}
        _rename_tree(tree, str(path))
    for text in overrides:
        key, value = parse_override(text)
        for new in _renamed(key, "--set"):
            _set_path(tree, new, value)
    return _from_dict(Config, tree, "")


def output_settings(section: Any) -> dict[str, Any]:
    """The settings of a config section (a dataclass) that change what its stage writes,
    as plain JSON values: every field but the :func:`runtime` and :func:`later` ones, and the
    :func:`added` ones at their default, nested sections included. The one rule every stage's
    folder fingerprint follows."""
    values = {}
    for f in dataclasses.fields(section):
        if f.metadata.get(RUNTIME) or f.metadata.get(LATER):
            continue
        value = getattr(section, f.name)
        if f.metadata.get(ADDED) and value == f.default:
            continue
        values[f.name] = output_settings(value) if dataclasses.is_dataclass(value) else value
    return to_dict_value(values)


def to_dict_value(value: Any) -> Any:
    """``value`` as plain YAML-able data (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [to_dict_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict_value(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict:
    """The config (or a section) as plain YAML-able data (tuples become lists)."""
    return to_dict_value(dataclasses.asdict(cfg))
