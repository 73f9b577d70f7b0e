import numpy as np
import pytest
import torch
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ReidConfig
from usv_ray.reid.clips import (
    augmented_input,
    clip_array,
    clip_problem,
    load_tracklets,
    model_input,
    read_tracklet_table,
)


def test_clip_array_samples_and_resizes():
    frames = np.stack([np.full((8, 4), 10 * t, np.uint8) for t in range(5)])  # (5, 8, 4)
    cfg = ReidConfig(clip_frames=3, clip_height=4, clip_width=2)
    clip = clip_array(frames.tobytes(), 5, 8, 4, cfg)
    assert clip.shape == (3, 4, 2) and clip.dtype == np.uint8
    assert clip[:, 0, 0].tolist() == [0, 20, 40]  # first, middle and last frame
    same = clip_array(
        frames.tobytes(), 5, 8, 4, ReidConfig(clip_frames=5, clip_height=8, clip_width=4)
    )
    assert np.array_equal(same, frames)  # no resize when the size already fits


def test_clip_array_rejects_a_truncated_clip():
    with pytest.raises(ValueError, match="is not 2 x 8 x 4"):
        clip_array(b"\0" * 63, 2, 8, 4, ReidConfig())


@pytest.mark.parametrize(
    ("clip", "frames", "height", "width", "problem"),
    [
        (b"\0" * 64, 2, 8, 4, None),
        (b"\0" * 63, 2, 8, 4, "63 bytes is not 2 x 8 x 4"),
        (None, 2, 8, 4, "0 bytes is not 2 x 8 x 4"),
        (b"", 0, 8, 4, "empty tracklet"),
        (b"", 2, 0, 4, "empty tracklet"),
    ],
)
def test_clip_problem(clip, frames, height, width, problem):
    found = clip_problem(clip, frames, height, width)
    assert found == problem if problem is None else problem in found


def test_load_tracklets_reads_only_the_asked_ids(tmp_path):
    ids = write_toy_tracklets(tmp_path, patients=3, unknown=1)
    cfg = ReidConfig(clip_frames=2, clip_height=16, clip_width=8)
    wanted = sorted(ids)[::2]
    loaded = load_tracklets(tmp_path, wanted, cfg)
    assert loaded.tracklet_ids.tolist() == wanted
    assert loaded.clips.shape == (len(wanted), 2, 16, 8)
    assert set(loaded.patient_keys) <= {"pk00", "pk01", "pk02"}
    table = read_tracklet_table(tmp_path)
    assert table.num_rows == len(ids) and table["nodule_id"].null_count == 3
    with pytest.raises(KeyError, match="not found"):
        load_tracklets(tmp_path, ["nope"], cfg)


def test_read_tracklet_table_without_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run ingest first"):
        read_tracklet_table(tmp_path)


def test_inputs_have_one_channel_and_one_augmentation_per_clip():
    clips = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 4, 16, 8), np.uint8))
    x = model_input(clips)
    assert x.shape == (3, 1, 4, 16, 8) and x.dtype == torch.float32
    a = augmented_input(clips, torch.Generator().manual_seed(0))
    b = augmented_input(clips, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # A constant clip stays constant over time: the frames of a clip share one transform.
    flat = torch.full((1, 4, 16, 8), 100, dtype=torch.uint8)
    out = augmented_input(flat, torch.Generator().manual_seed(1))
    assert torch.allclose(out[0, 0, 0], out[0, 0, 3])
