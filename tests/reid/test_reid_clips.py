import numpy as np
import pytest
import torch
from toy_tracklets import write_toy_tracklets

from usv_ray.config import ReidConfig
from usv_ray.layout import IngestFolder
from usv_ray.reid.clips import augmented_input, load_tracklets


def test_load_tracklets_reads_only_the_asked_ids(tmp_path):
    ids = write_toy_tracklets(tmp_path, patients=3, unknown=1)
    cfg = ReidConfig(clip_frames=2, clip_height=16, clip_width=8)
    wanted = sorted(ids)[::2]
    loaded = load_tracklets(tmp_path, wanted, cfg)
    assert loaded.tracklet_ids.tolist() == wanted
    assert loaded.clips.shape == (len(wanted), 2, 16, 8)
    assert set(loaded.patient_keys) <= {"pk00", "pk01", "pk02"}
    table = IngestFolder(tmp_path).read_tracklets()
    assert table.num_rows == len(ids) and table["nodule_id"].null_count == 3
    with pytest.raises(KeyError, match="not found"):
        load_tracklets(tmp_path, ["nope"], cfg)


def test_read_tracklet_table_without_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run ingest first"):
        IngestFolder(tmp_path).read_tracklets()


def test_inputs_have_one_channel_and_one_augmentation_per_clip():
    clips = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 4, 16, 8), np.uint8))
    a = augmented_input(clips, torch.Generator().manual_seed(0))
    b = augmented_input(clips, torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 4, 16, 8) and a.dtype == torch.float32 and torch.equal(a, b)
    # A constant clip stays constant over time: the frames of a clip share one transform.
    flat = torch.full((1, 4, 16, 8), 100, dtype=torch.uint8)
    out = augmented_input(flat, torch.Generator().manual_seed(1))
    assert torch.allclose(out[0, 0, 0], out[0, 0, 3])
