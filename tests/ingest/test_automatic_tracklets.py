"""Ingest with a detector: a video without annotations gets automatic tracklets in the
same decode pass, annotated videos keep theirs, and the frames of annotated videos carry
the boxes a detector trains on."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_inputs import clip_frames, write_mp4

from usv_ray.config import Config, DetectConfig, IngestConfig, TrackConfig
from usv_ray.ingest.annotations import load_tracklets
from usv_ray.ingest.automatic import tracker_settings
from usv_ray.ingest.manifest import VideoTask
from usv_ray.ingest.pipeline import _detected, _same
from usv_ray.ingest.video import ingest_video
from usv_ray.layout import IngestFolder

WIDTH, HEIGHT, FRAMES = 160, 120, 24
CFG = IngestConfig(
    crop_box=(0.0, 0.11, 1.0, 1.0),
    frame_size=32,
    n_frames=6,
    tracklet_frames=4,
    patch_height=16,
    patch_width=8,
)
DETECT = DetectConfig(batch_size=5, track=TrackConfig(min_frames=5))


def square(t: int) -> list[int]:
    """The nodule of frame ``t``: a bright 20 px square drifting right 2 px a frame (the
    stand-in detector below looks for the brightest pixels)."""
    return [40 + 2 * t, 50, 60 + 2 * t, 70]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = clip_frames(FRAMES, WIDTH, HEIGHT)
    for t in range(FRAMES):
        x0, y0, x1, y1 = square(t)
        frames[t, y0:y1, x0:x1] = 250
    return write_mp4(tmp_path_factory.mktemp("auto") / "nodule.mp4", frames)


def brightest_blob(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """A stand-in detector: the box of the pixels brighter than 200, scored 0.9."""
    found = []
    for frame in frames:
        ys, xs = np.nonzero(frame > 200)
        if len(xs):
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
            found.append((box, np.array([0.9])))
        else:
            found.append((np.zeros((0, 4)), np.zeros(0)))
    return found


def task(video, annotations=None) -> VideoTask:
    return VideoTask("vid", "nodule.mp4", str(video), "pk", "sk", None, -1, annotations, "fp")


def test_a_video_without_annotations_gets_automatic_tracklets(video, tmp_path):
    entry = ingest_video(task(video), CFG, b"k" * 16, tmp_path, brightest_blob, DETECT)
    assert entry["video"]["status"] == "ok" and entry["video"]["annotated"] is False
    _, y0, x1, y1 = entry["video"]["view"]
    assert y0 >= int(0.11 * HEIGHT) and (x1, y1) <= (WIDTH, HEIGHT)  # crop, then the view
    (row,) = pq.read_table(tmp_path / "tracklets" / "vid.parquet").to_pylist()
    assert row["source"] == "automatic" and row["nodule_id"] is None
    assert row["score"] == pytest.approx(0.9) and row["box_frames"] == list(range(FRAMES))
    for frame, box in zip(row["box_frames"], row["boxes"], strict=True):
        # boxes in source pixels, within a stored pixel (5 source px) of the true square
        np.testing.assert_allclose(box, square(frame), atol=6)
    clip = np.frombuffer(row["clip"], np.uint8).reshape(4, 16, 8)
    assert clip.mean() > 200  # the patches show the nodule
    assert row["frame_index"] == [0, 8, 14, 22]  # past 4 T = 16 patches it keeps every other
    frames = pq.read_table(tmp_path / "frames" / "vid.parquet")
    assert frames["boxes"].null_count == frames.num_rows  # no annotations: boxes unknown


def test_an_annotated_video_keeps_its_tracklets_and_its_frames_carry_the_boxes(video, tmp_path):
    keyframes = [{"frame": t, "box": square(t)} for t in (2, 12, 20)]
    annotations = tmp_path / "ann.json"
    annotations.write_text(
        json.dumps({"tracklets": [{"tracklet_id": "a", "nodule_id": "n1", "keyframes": keyframes}]})
    )

    def never(frames):
        raise AssertionError("the detector must not run on an annotated video")

    entry = ingest_video(task(video, str(annotations)), CFG, b"k" * 16, tmp_path, never, DETECT)
    assert entry["video"]["annotated"] is True
    (row,) = pq.read_table(tmp_path / "tracklets" / "vid.parquet").to_pylist()
    assert row["source"] == "annotated" and row["score"] is None
    assert row["box_frames"] == list(range(2, 21)) and row["boxes"][10] == square(12)
    frames = pq.read_table(tmp_path / "frames" / "vid.parquet").to_pylist()
    x0, y0, x1, y1 = entry["video"]["view"]
    scale = np.array([32 / (x1 - x0), 32 / (y1 - y0)] * 2)
    (annotated,) = load_tracklets(annotations)
    for frame in frames:
        t = frame["frame_index"]
        if annotated.covers(t):  # its box (key frames' union between), in stored pixels
            expected = (np.array(annotated.box_at(t)) - [x0, y0, x0, y0]) * scale
            np.testing.assert_allclose(frame["boxes"], [expected], atol=1e-4)
        else:
            assert frame["boxes"] == []  # annotated, and no nodule there


def test_a_detector_leaves_the_stored_frames_as_they_were(video, tmp_path):
    without = ingest_video(task(video), CFG, b"k" * 16, tmp_path / "a")
    with_it = ingest_video(task(video), CFG, b"k" * 16, tmp_path / "b", brightest_blob, DETECT)
    assert without["video"]["view"] == with_it["video"]["view"]
    frames = [
        pq.read_table(root / "frames" / "vid.parquet") for root in (tmp_path / "a", tmp_path / "b")
    ]
    assert frames[0].equals(frames[1])  # predict and classify read the same pixels either way
    assert not (tmp_path / "a" / "tracklets" / "vid.parquet").exists()


def test_another_detector_makes_other_tracklets_never_the_old_ones_ids(video, tmp_path):
    ids = []
    for fingerprint in ("detector-a", "detector-b"):
        run = dataclasses.replace(task(video), fingerprint=fingerprint)
        ingest_video(run, CFG, b"k" * 16, tmp_path / fingerprint, brightest_blob, DETECT)
        table = pq.read_table(tmp_path / fingerprint / "tracklets" / "vid.parquet")
        ids.append(table.column("tracklet_id").to_pylist())
    assert len(ids[0]) == 1 and ids[0] != ids[1]  # the index embeds the new ones afresh


def test_the_journal_rules_of_a_detector():
    """Another detector or tracker setting redoes the unannotated videos only; a training
    setting redoes nothing; an ingest without a detector keeps what one made."""
    plain = task("video.mp4")
    annotated = task("video.mp4", "ann.json")
    assert _detected(annotated, "detect-1", Config()) is annotated
    detected = _detected(plain, "detect-1", Config())
    assert detected.plain_fingerprint == plain.fingerprint != detected.fingerprint
    other = [
        _detected(plain, "detect-2", Config()),
        _detected(plain, "detect-1", Config(detect=DetectConfig(track=TrackConfig(iou=0.5)))),
    ]
    assert all(t.fingerprint != detected.fingerprint for t in other)
    trained = _detected(plain, "detect-1", Config(detect=DetectConfig(epochs=3, workers=4)))
    assert trained.fingerprint == detected.fingerprint

    made_plain = {"fingerprint": "fp", "plain": "fp", "video": {"status": "ok"}}
    made_detected = {**made_plain, "fingerprint": detected.fingerprint}
    assert _same(made_plain, plain) and not _same(made_plain, detected)
    assert _same(made_detected, detected) and _same(made_detected, plain)
    assert not _same(made_detected, other[0])


def test_tracker_settings_out_of_range_are_refused_before_any_video():
    with pytest.raises(ValueError, match=r"every must be from 1 to max_lost \+ 1 \(3\), got 4"):
        tracker_settings(DetectConfig(track=TrackConfig(every=4, max_lost=2)))
    with pytest.raises(ValueError, match="low_score <= high_score"):
        tracker_settings(DetectConfig(track=TrackConfig(low=0.9)))


def test_a_detector_trained_on_other_frames_is_refused_naming_the_setting(tmp_path):
    from usv_ray.bundle import BundleError
    from usv_ray.bundle import write as write_bundle
    from usv_ray.bundle.detector import FILE, FRAME_SETTINGS, KIND
    from usv_ray.ingest.pipeline import _with_detector

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"a detector")
    frames = {name: getattr(CFG, name) for name in FRAME_SETTINGS}
    trained = {**frames, "crop_box": list(frames["crop_box"]), "frame_size": 64}
    write_bundle(tmp_path / "bundle", KIND, {FILE: weights}, {"ingest": trained})
    IngestFolder(tmp_path / "data").claim(CFG)
    cfg = Config(ingest=dataclasses.replace(CFG, detector=str(tmp_path / "bundle")))
    with pytest.raises(BundleError, match=r"ingest\.frame_size: 32 there, 64 for the model"):
        _with_detector(cfg, tmp_path / "data")
    write_bundle(
        tmp_path / "bundle", KIND, {FILE: weights}, {"ingest": {**trained, "frame_size": 32}}
    )
    checked, version = _with_detector(cfg, tmp_path / "data")
    assert version.startswith("detector-") and checked.ingest.detector == str(tmp_path / "bundle")
