"""ByteTrack-style tracker: identities through a crossing, the low-score second pass, the
lost-track horizon, skipped frames, bad input."""

import numpy as np
import pytest

from usv_ray.boxes import box_iou
from usv_ray.ingest.track import Track, Tracker, TrackerSettings


def square(cx: float, cy: float, side: float = 20.0) -> list[float]:
    """Box ``x0, y0, x1, y1`` of a square centred at ``(cx, cy)``."""
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def run(frames, detections, settings: TrackerSettings | None = None) -> list[Track]:
    """Tracks of a video given as ``frames`` and, per frame, a list of ``(box, score)``."""
    tracker = Tracker(settings or TrackerSettings())
    for frame, found in zip(frames, detections, strict=True):
        boxes = np.array([box for box, _ in found], dtype=float).reshape(-1, 4)
        scores = np.array([score for _, score in found], dtype=float)
        tracker.update(frame, boxes, scores)
    return tracker.finish()


# --- tracking -----------------------------------------------------------------------------


def crossing(frames, speed: float, start: float) -> list[list[tuple[list[float], float]]]:
    """Two 20 px squares: A from ``-start`` moving right, B from ``start`` moving left and
    2 px lower, ``speed`` px per frame index; A scores 0.9, B 0.8."""
    return [
        [(square(-start + speed * f, 0), 0.9), (square(start - speed * f, 2), 0.8)] for f in frames
    ]


def static_prediction_swaps(before, after) -> bool:
    """Whether the boxes of ``before`` (A, B) as predictions of ``after`` pair A with B:
    the swap's IoU beats the truth's, so only a motion model keeps the identities."""
    (a0, _), (b0, _) = before
    (a1, _), (b1, _) = after
    iou = box_iou([a0, b0], [a1, b1])  # (2, 2)
    return iou[0, 1] + iou[1, 0] > iou[0, 0] + iou[1, 1]


def check_crossing(frames, detections, tracks):
    assert [t.track_id for t in tracks] == [0, 1]
    for track, index in zip(tracks, (0, 1), strict=True):
        assert track.frames == tuple(frames)
        expected = np.array([found[index][0] for found in detections])
        np.testing.assert_array_equal(track.boxes, expected)


def test_crossing_objects_keep_their_identities():
    # 6 px a frame: A at -3 and B at 3 in frame 5, A at 3 and B at -3 in frame 6
    frames = list(range(11))
    detections = crossing(frames, speed=6, start=33)
    assert static_prediction_swaps(detections[5], detections[6])
    check_crossing(frames, detections, run(frames, detections))


def test_crossing_seen_every_third_frame():
    # 2 px a frame, seen at frames 0, 3, 6, ...: A at -1 and B at 1 in frame 15, A at 5 and
    # B at -5 in frame 18; a velocity per update (6 px) or per frame index agree here
    frames = list(range(0, 31, 3))
    detections = crossing(frames, speed=2, start=31)
    assert static_prediction_swaps(detections[5], detections[6])
    check_crossing(frames, detections, run(frames, detections))


def test_low_score_detection_bridges_a_weak_frame():
    # frame 3: the nodule is seen only faintly (score 0.3); the second pass keeps the track
    scores = [0.9, 0.9, 0.9, 0.3, 0.9, 0.9]
    tracks = run(range(6), [[(square(2 * f, 0), s)] for f, s in enumerate(scores)])
    assert len(tracks) == 1
    assert tracks[0].frames == (0, 1, 2, 3, 4, 5)
    np.testing.assert_allclose(tracks[0].scores, scores)
    assert tracks[0].mean_score == pytest.approx(np.mean(scores))


def test_low_score_detections_never_start_a_track():
    # a faint box in every frame, and one between high_score and new_track_score
    faint = [[(square(50, 50), 0.3)] for _ in range(8)]
    assert run(range(8), faint) == []
    unsure = [[(square(50, 50), 0.55)] for _ in range(8)]
    assert run(range(8), unsure) == []


def test_low_score_detection_does_not_resume_a_lost_track():
    # frame 2 empty, so the track is lost at frame 3 and the faint box there is dropped;
    # the confident box at frame 4 resumes it through the first pass
    detections = [
        [(square(0, 0), 0.9)],
        [(square(0, 0), 0.9)],
        [],
        [(square(0, 0), 0.3)],
        [(square(0, 0), 0.9)],
    ]
    (track,) = run(range(5), detections)
    assert track.frames == (0, 1, 4)


def test_detections_below_low_score_are_ignored():
    scores = [0.9, 0.9, 0.05, 0.9]
    (track,) = run(range(4), [[(square(0, 0), s)] for s in scores])
    assert track.frames == (0, 1, 3)


@pytest.mark.parametrize(
    ("missed", "tracks"),
    [
        (0, 1),
        (1, 1),
        (3, 1),  # exactly max_lost missed frames: resumed
        (4, 2),  # one more: the old track has ended, a new one starts
        (9, 2),
    ],
)
def test_track_survives_up_to_max_lost_missed_frames(missed, tracks):
    settings = TrackerSettings(max_lost=3)
    frames = range(5 + missed + 3)
    detections = [[] if 5 <= f < 5 + missed else [(square(0, 0), 0.9)] for f in frames]
    got = run(frames, detections, settings)
    assert len(got) == tracks
    assert got[0].frames[:5] == (0, 1, 2, 3, 4)
    if tracks == 2:
        assert got[0].last == 4 and got[1].first == 5 + missed
        assert got[1].track_id == 1


@pytest.mark.parametrize(("gap", "tracks"), [(4, 1), (5, 2)])
def test_max_lost_counts_frames_not_updates(gap, tracks):
    # the frames in between are never shown to the tracker; the span still counts
    settings = TrackerSettings(max_lost=3)
    frames = [0, 1, 1 + gap, 2 + gap]
    detections = [[(square(0, 0), 0.9)] for _ in frames]
    assert len(run(frames, detections, settings)) == tracks


def test_irregular_frames_use_the_frame_gap_for_motion():
    # 4 px per frame index. Frames 0 and 2 (8 px apart) overlap enough to start the velocity;
    # after that, a box at its last place overlaps the next too little (IoU < 0.3 from a
    # 4-frame gap on), and a velocity per update (8 px from frames 0-2) would miss frame 7
    # (20 px on) too: only a velocity per frame index times the gap follows it
    frames = [0, 2, 7, 8, 13, 14, 19, 23, 24]
    detections = [[(square(4 * f, 0), 0.9)] for f in frames]
    (track,) = run(frames, detections)
    assert track.frames == tuple(frames)
    assert box_iou([square(0, 0)], [square(16, 0)])[0, 0] < 0.3
    assert box_iou([square(16, 0)], [square(28, 0)])[0, 0] < 0.3


def test_empty_frames_and_an_empty_video():
    tracker = Tracker(TrackerSettings())
    tracker.update(0, np.empty((0, 4)), np.empty(0))
    tracker.update(1, [], [])
    assert tracker.finish() == []
    tracker.update(2, [square(0, 0)], [0.9])
    tracker.update(3, np.empty((0, 4)), np.empty(0))
    (track,) = tracker.finish()
    assert (track.first, track.last, track.length) == (2, 2, 1)
    assert track.boxes.shape == (1, 4) and track.scores.shape == (1,)


def test_track_arrays_are_read_only():
    (track,) = run([0], [[(square(0, 0), 0.9)]])
    with pytest.raises(ValueError, match="read-only"):
        track.boxes[0, 0] = 1.0


def test_tracks_keep_their_boxes_when_the_caller_reuses_its_array():
    tracker = Tracker(TrackerSettings())
    boxes, scores = np.array([square(0, 0)]), np.array([0.9])
    tracker.update(0, boxes, scores)
    boxes[0] = square(1, 0)  # the next frame's detections, written into the same array
    tracker.update(1, boxes, scores)
    (track,) = tracker.finish()
    np.testing.assert_array_equal(track.boxes, [square(0, 0), square(1, 0)])


def test_finish_orders_by_first_frame_then_id():
    detections = [
        [(square(0, 0), 0.9), (square(100, 0), 0.9)],
        [(square(0, 0), 0.9), (square(100, 0), 0.9), (square(200, 0), 0.9)],
    ]
    tracks = run([0, 1], detections)
    assert [(t.first, t.track_id) for t in tracks] == [(0, 0), (0, 1), (1, 2)]
    assert [t.length for t in tracks] == [2, 2, 1]


@pytest.mark.parametrize("frame", [4, 3])
def test_frames_must_increase(frame):
    tracker = Tracker(TrackerSettings())
    tracker.update(4, [square(0, 0)], [0.9])
    with pytest.raises(ValueError, match="increase"):
        tracker.update(frame, [square(0, 0)], [0.9])
    tracker.update(5, [square(0, 0)], [0.9])  # the failed update changed nothing
    assert tracker.finish()[0].frames == (4, 5)


@pytest.mark.parametrize(
    ("boxes", "scores", "match"),
    [
        ([[0, 0, 1]], [0.9], r"\(N, 4\)"),
        ([[0, 0, 1, 1]], [0.9, 0.8], "scores must be"),
        ([[0, 0, 1, np.nan]], [0.9], "finite"),
        ([[0, 0, 1, 1]], [np.inf], "finite"),
    ],
)
def test_bad_detections_are_a_clear_error(boxes, scores, match):
    with pytest.raises(ValueError, match=match):
        Tracker(TrackerSettings()).update(0, boxes, scores)


def test_frame_must_be_an_integer():
    with pytest.raises(TypeError):
        Tracker(TrackerSettings()).update(1.5, [], [])


@pytest.mark.parametrize(
    "overrides",
    [
        {"low_score": 0.6},  # above high_score
        {"new_track_score": 0.4},  # below high_score
        {"match_iou": 0.0},
        {"max_lost": -1},
        {"position_gain": 0.0},
        {"velocity_gain": 2.0},
    ],
)
def test_bad_settings_are_rejected(overrides):
    with pytest.raises(ValueError):
        TrackerSettings(**overrides)


def test_deterministic():
    rng = np.random.default_rng(7)
    frames = np.cumsum(rng.integers(1, 3, size=60))
    centres = np.array([[20.0, 20.0], [80.0, 40.0], [50.0, 90.0]])
    velocities = np.array([[1.5, 0.5], [-1.0, 0.8], [0.3, -1.2]])
    detections = []
    for frame in frames:
        found = []
        for centre, velocity in zip(centres, velocities, strict=True):
            if rng.random() < 0.85:  # missed now and then
                cx, cy = centre + velocity * frame + rng.normal(0, 1.0, 2)
                found.append((square(cx, cy, rng.uniform(16, 24)), rng.uniform(0.2, 1.0)))
        for _ in range(rng.poisson(0.5)):  # clutter
            found.append((square(*rng.uniform(0, 150, 2)), rng.uniform(0.1, 0.7)))
        detections.append(found)

    def summary(tracks):
        return [(t.track_id, t.frames, t.boxes.tobytes(), t.scores.tobytes()) for t in tracks]

    first = run(frames, detections)
    assert summary(first) == summary(run(frames, detections))
    assert len(first) >= 3
    # the three objects dominate: most matched detections belong to three long tracks
    lengths = sorted((t.length for t in first), reverse=True)
    assert sum(lengths[:3]) > 0.8 * 0.85 * 3 * len(frames)


def test_update_says_which_detection_each_track_took():
    tracker = Tracker(TrackerSettings())
    first = tracker.update(0, [square(0, 0), square(60, 0)], [0.9, 0.8])
    assert first == {0: 0, 1: 1}  # two new tracks
    # the second frame lists them the other way round, with a faint third box
    second = tracker.update(1, [square(61, 0), square(1, 0), square(30, 30)], [0.7, 0.3, 0.05])
    assert second == {1: 0, 0: 1}  # track 0 kept by the low-score box (second pass)
    assert tracker.update(2, np.zeros((0, 4)), np.zeros(0)) == {}
