import numpy as np
import pytest
import torch

from usv_ray.video3d import clip_positions, gray_r2plus1d_18


@pytest.mark.parametrize(
    ("length", "count", "expected"),
    [
        (1, 4, [0, 0, 0, 0]),  # one frame: repeated
        (3, 6, [0, 0, 1, 1, 2, 2]),  # fewer frames than positions: nearest frames repeat
        (12, 12, list(range(12))),  # as many: every frame once
        (30, 3, [0, 14, 29]),  # more: spread out, both ends included
        (30, 12, [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]),
    ],
)
def test_clip_positions(length, count, expected):
    positions = clip_positions(length, count)
    assert positions.tolist() == expected and positions.dtype == np.int64


@pytest.mark.parametrize(("length", "count"), [(0, 12), (5, 0)])
def test_clip_positions_rejects_empty(length, count):
    with pytest.raises(ValueError):
        clip_positions(length, count)


def test_gray_r2plus1d_takes_one_channel():
    model = gray_r2plus1d_18().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 2, 16, 16)).shape == (1, 400)  # torchvision's own fc
