"""Automatic tracklets: boxes mapped between source and stored pixels, detections linked
along a video, patches cut while each frame is at hand, and short or unsure tracks left out."""

import numpy as np
import pytest

from usv_ray.config import DetectConfig, TrackConfig
from usv_ray.ingest.automatic import AutoTracklets, View, _Patches

SIZE = 32
VIEW = View((20, 10, 120, 60), SIZE)  # a 100 x 50 source region stored at 32 x 32


def test_boxes_map_to_stored_pixels_and_back():
    source = np.array([[20, 10, 120, 60], [70, 35, 95, 47.5]])
    stored = VIEW.to_stored(source)
    np.testing.assert_allclose(stored, [[0, 0, 32, 32], [16, 16, 24, 24]])
    np.testing.assert_allclose(VIEW.to_source(stored), source)
    assert VIEW.to_stored(np.array([[0, 0, 200, 200]])).tolist() == [[0, 0, 32, 32]]  # clipped


def fake_detector(truth: dict[int, list]):
    """A detector that finds, in a frame, the boxes ``truth`` lists for its mean gray level
    (each test frame is filled with its own index)."""

    def detect(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for frame in frames:
            found = truth.get(int(frame.mean() + 0.5), [])
            boxes = np.array([b for b, _ in found], np.float64).reshape(-1, 4)
            out.append((boxes, np.array([s for _, s in found])))
        return out

    return detect


def run(truth: dict[int, list], frames: int, cfg: DetectConfig, tracklet_frames: int = 4):
    cuts = []

    def cut(cropped: np.ndarray, box: np.ndarray) -> np.ndarray:
        cuts.append((int(cropped[0, 0]), box.tolist()))
        return np.full((8, 4), cropped[0, 0], np.uint8)  # the patch remembers its frame

    auto = AutoTracklets(fake_detector(truth), cfg, tracklet_frames, cut)
    for index in range(frames):
        image = np.full((50, 100), index, np.uint8)  # the region, before resizing
        auto.add(index, image, image, VIEW)
    return auto.finish(), cuts


def moving(frames: range, score: float = 0.9) -> dict[int, list]:
    """One nodule drifting right 1 stored pixel a frame."""
    return {f: [([4 + f, 8, 12 + f, 16], score)] for f in frames}


def test_a_moving_nodule_becomes_one_tracklet_with_its_patches_and_boxes():
    cfg = DetectConfig(batch_size=3, track=TrackConfig(min_frames=5))
    (tracklet,), cuts = run(moving(range(10)), 10, cfg)
    assert tracklet.box_frames == list(range(10)) and tracklet.score == pytest.approx(0.9)
    assert tracklet.frame_index == [0, 3, 6, 9]  # T = 4 uniformly along the track
    assert tracklet.patches.shape == (4, 8, 4)
    assert [int(p[0, 0]) for p in tracklet.patches] == [0, 3, 6, 9]  # each from its own frame
    np.testing.assert_allclose(tracklet.boxes[0], VIEW.to_source(np.array([[4, 8, 12, 16]]))[0])
    assert cuts[0] == (0, tracklet.boxes[0].tolist())  # cut in source pixels


@pytest.mark.parametrize(
    ("truth", "cfg"),
    [
        (moving(range(4)), DetectConfig(track=TrackConfig(min_frames=5))),  # too short
        (
            moving(range(10), score=0.55),
            DetectConfig(track=TrackConfig(new_score=0.5, min_score=0.6)),
        ),
        ({}, DetectConfig()),  # nothing found
    ],
)
def test_short_or_unsure_tracks_are_no_tracklets(truth, cfg):
    assert run(truth, 10, cfg)[0] == []


def test_a_long_track_keeps_a_bounded_spread_of_patches():
    buffer = _Patches(cap=8)
    for frame in range(1000):
        buffer.add(frame, np.zeros((2, 2), np.uint8))
    assert len(buffer.frames) <= 9 and buffer.frames[0] == 0
    gaps = np.diff(buffer.frames)
    assert gaps.min() == gaps.max() and buffer.frames[-1] > 800  # evenly spread, to the end
