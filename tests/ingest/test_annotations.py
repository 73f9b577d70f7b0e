import json

import pytest

from usv_ray.ingest.annotations import AnnotationError, Tracklet, load_tracklets


def _tracklet():
    return Tracklet("t", "n1", (10, 20, 30), ((0, 0, 10, 10), (5, 5, 20, 12), (2, 1, 8, 30)))


@pytest.mark.parametrize(
    ("frame", "box"),
    [
        (10, (0, 0, 10, 10)),  # a key frame keeps its own box
        (20, (5, 5, 20, 12)),
        (30, (2, 1, 8, 30)),
        (15, (0, 0, 20, 12)),  # between two key frames: the union of the two
        (25, (2, 1, 20, 30)),
    ],
)
def test_box_at(frame, box):
    assert _tracklet().box_at(frame) == box


def test_box_outside_tracklet():
    with pytest.raises(ValueError, match="outside"):
        _tracklet().box_at(31)


@pytest.mark.parametrize(
    ("count", "expected"),
    [(3, [10, 20, 30]), (5, [10, 15, 20, 25, 30]), (1, [10])],
)
def test_sample_frames_uniform(count, expected):
    assert _tracklet().sample_frames(count) == expected


def test_short_tracklet_repeats_frames():
    short = Tracklet("t", None, (4, 5), ((0, 0, 1, 1), (0, 0, 1, 1)))
    frames = short.sample_frames(4)
    assert len(frames) == 4 and set(frames) == {4, 5} and frames == sorted(frames)


def _write(tmp_path, data):
    path = tmp_path / "a.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_sorts_key_frames(tmp_path):
    data = {
        "tracklets": [
            {
                "tracklet_id": "t1",
                "nodule_id": "n1",
                "keyframes": [
                    {"frame": 9, "box": [1, 2, 3, 4]},
                    {"frame": 2, "box": [0, 0, 5, 5]},
                ],
            },
            {
                "tracklet_id": "t2",
                "nodule_id": None,
                "keyframes": [{"frame": 0, "box": [0, 0, 1, 1]}],
            },
        ]
    }
    first, second = load_tracklets(_write(tmp_path, data))
    assert first.frames == (2, 9) and first.boxes[0] == (0, 0, 5, 5)
    assert second.nodule_id is None and second.first == second.last == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not readable JSON"),
        ({"tracks": []}, "expected"),
        ({"tracklets": [{"nodule_id": "n"}]}, "tracklet_id"),
        ({"tracklets": [{"tracklet_id": "t", "keyframes": []}]}, "non-empty list"),
        (
            {
                "tracklets": [
                    {"tracklet_id": "t", "keyframes": [{"frame": -1, "box": [0, 0, 1, 1]}]}
                ]
            },
            "not a frame index",
        ),
        (
            {"tracklets": [{"tracklet_id": "t", "keyframes": [{"frame": 1, "box": [5, 0, 1, 1]}]}]},
            "x1 > x0",
        ),
        (
            {"tracklets": [{"tracklet_id": "t", "keyframes": [{"frame": 1, "box": [0, 0, 1]}]}]},
            "x0, y0, x1, y1",
        ),
        (
            {
                "tracklets": [
                    {
                        "tracklet_id": "t",
                        "nodule_id": 3,
                        "keyframes": [{"frame": 1, "box": [0, 0, 1, 1]}],
                    }
                ]
            },
            "nodule_id",
        ),
        (
            {
                "tracklets": [
                    {
                        "tracklet_id": "t",
                        "keyframes": [
                            {"frame": 1, "box": [0, 0, 1, 1]},
                            {"frame": 1, "box": [0, 0, 2, 2]},
                        ],
                    }
                ]
            },
            "annotated twice",
        ),
        (
            {
                "tracklets": [
                    {"tracklet_id": "t", "keyframes": [{"frame": 1, "box": [0, 0, 1, 1]}]}
                ]
                * 2
            },
            "repeat",
        ),
    ],
)
def test_bad_annotations_name_the_problem(tmp_path, data, message):
    with pytest.raises(AnnotationError, match=message):
        load_tracklets(_write(tmp_path, data))


def test_missing_annotations_file(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        load_tracklets(tmp_path / "none.json")


def test_annotations_inline_parse_as_a_file_does(tmp_path):
    data = {"tracklets": [{"tracklet_id": "t", "keyframes": [{"frame": 2, "box": [0, 0, 4, 4]}]}]}
    (from_file,) = load_tracklets(_write(tmp_path, data))
    (inline,) = load_tracklets(" " + json.dumps(data))  # a cell may start with a space
    assert inline == from_file
    with pytest.raises(AnnotationError, match="not readable JSON"):
        load_tracklets('{"tracklets": [')
