"""The detector's data: frames and boxes collated from Parquet rows, and an augmentation
that moves each box with its frame."""

import numpy as np
import pytest
import torch

from usv_ray.detect.data import augment, collate

SIZE = 32


def test_rows_collate_into_frames_and_boxes():
    frames = [np.full((SIZE, SIZE), i, np.uint8).tobytes() for i in range(3)]
    batch = {
        "image": np.array(frames, dtype=object),
        "height": np.array([SIZE] * 3),
        "width": np.array([SIZE] * 3),
        "boxes": np.array([[[1, 2, 3, 4]], [], [[0, 0, 5, 5], [6, 6, 9, 9]]], dtype=object),
    }
    images, boxes = collate(batch)
    assert images.shape == (3, 1, SIZE, SIZE) and images.dtype == torch.uint8
    assert images[2].unique().tolist() == [2]
    assert [tuple(b.shape) for b in boxes] == [(1, 4), (0, 4), (2, 4)]
    assert boxes[2][1].tolist() == [6, 6, 9, 9]


@pytest.mark.parametrize("seed", range(6))
def test_the_augmented_box_still_frames_the_nodule(seed):
    images = torch.zeros(8, 1, SIZE, SIZE)
    images[:, :, 10:18, 5:11] = 1.0  # a bright 6 x 8 nodule at x 5..11, y 10..18
    boxes = [torch.tensor([[5.0, 10.0, 11.0, 18.0]]) for _ in range(8)]
    out, moved = augment(images, boxes, torch.Generator().manual_seed(seed))
    for frame, box in zip(out, moved, strict=True):
        bright = frame[0] > frame[0].mean()
        ys, xs = np.nonzero(bright.numpy())
        if len(box) == 0:  # shifted half out of the frame: dropped
            continue
        x0, y0, x1, y1 = box[0].tolist()
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_a_frame_without_nodules_stays_without():
    _, moved = augment(torch.rand(4, 1, SIZE, SIZE), [torch.zeros(0, 4)] * 4, torch.Generator())
    assert all(b.shape == (0, 4) for b in moved)


def test_a_detector_folder_depends_on_the_frames_not_on_how_it_runs():
    import pandas as pd

    from usv_ray.config import Config, DetectConfig
    from usv_ray.layout import digest_rows, fingerprint

    splits = pd.DataFrame({"video_id": ["v"], "patient_key": ["p"], "split": ["train"]})
    frames = {"frame_size": 64, "crop_box": [0, 0, 1, 1], "trim_fov": True, "fov_threshold": 12}

    def _fingerprint(cfg, splits, frames):  # as usv-ray detect claims its folder
        return fingerprint({"detect": cfg.detect}, frames, digest_rows(splits.itertuples()))

    first = _fingerprint(Config(), splits, frames)
    assert _fingerprint(Config(), splits, {**frames, "frame_size": 128}) != first
    assert _fingerprint(Config(detect=DetectConfig(epochs=3)), splits, frames) != first
    assert _fingerprint(Config(detect=DetectConfig(workers=4)), splits, frames) == first
