import numpy as np
import pandas as pd
import pytest

from usv_ray.classify.baselines import annotated_key_frames, average, key_frame, vote

FRAMES = pd.DataFrame(
    {
        "video_id": ["a", "a", "a", "b", "b", "c"],
        "seq_index": [0, 1, 2, 1, 0, 0],
        "frame_index": [0, 10, 20, 5, 0, 7],
        "frame_prob": [0.2, 0.6, 0.7, 0.4, 0.9, 0.5],
    }
)


def test_vote_is_the_share_of_malignant_frames():
    assert vote(FRAMES).to_dict() == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    assert vote(FRAMES, threshold=0.65).to_dict() == pytest.approx({"a": 1 / 3, "b": 0.5, "c": 0})


def test_average_is_the_mean_frame_probability():
    assert average(FRAMES).to_dict() == pytest.approx({"a": 0.5, "b": 0.65, "c": 0.5})


@pytest.mark.parametrize(
    ("annotated", "expected"),
    [
        ({}, {"a": 0.6, "b": 0.4, "c": 0.5}),  # middle kept frame (of two: the later)
        ({"a": 12, "b": 0}, {"a": 0.6, "b": 0.9, "c": 0.5}),  # nearest kept frame
        ({"a": 15}, {"a": 0.6, "b": 0.4, "c": 0.5}),  # a tie: the earlier frame
        ({"a": 999}, {"a": 0.7, "b": 0.4, "c": 0.5}),
    ],
)
def test_key_frame_prefers_the_annotated_frame(annotated, expected):
    assert key_frame(FRAMES, annotated).to_dict() == pytest.approx(expected)


def test_annotated_key_frames_take_the_earliest_tracklet_start():
    tracklets = pd.DataFrame(
        {"video_id": ["a", "a", "b"], "frame_index": [[30, 40], [12, 20], [np.int32(3)]]}
    )
    assert annotated_key_frames(tracklets) == {"a": 12, "b": 3}
    assert annotated_key_frames(tracklets.iloc[:0]) == {}
