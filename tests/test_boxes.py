"""Box IoU, the one the tracker, the tracking metrics and the synthetic annotator share:
by hand, in every shape, and against torchvision."""

import numpy as np
import pytest

from usv_ray.boxes import box_iou


def square(cx: float, cy: float, side: float = 20.0) -> list[float]:
    """Box ``x0, y0, x1, y1`` of a square centred at ``(cx, cy)``."""
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


# (a, b, iou)
IOU_CASES = [
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
    ([0, 0, 2, 2], [1, 0, 3, 2], 1 / 3),  # half overlap: 2 / (4 + 4 - 2)
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.25),  # contained: 4 / 16
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # corner: 1 / (4 + 4 - 1)
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0),  # touching edges
    ([0, 0, 2, 2], [5, 5, 6, 6], 0.0),  # apart
    ([1, 1, 1, 3], [0, 0, 2, 2], 0.0),  # zero width
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # two points: 0, not 0/0
    ([2, 2, 0, 0], [0, 0, 2, 2], 0.0),  # inverted
    ([0.5, 0.5, 1.5, 2.5], [0, 0, 1, 1], 0.25 / 2.75),
]


@pytest.mark.parametrize(("a", "b", "expected"), IOU_CASES)
def test_box_iou_by_hand(a, b, expected):
    assert box_iou([a], [b])[0, 0] == pytest.approx(expected)
    assert box_iou([b], [a])[0, 0] == pytest.approx(expected)


def test_box_iou_shapes():
    a = np.array([square(0, 0), square(5, 0), square(50, 50)])
    assert box_iou(a, a[:2]).shape == (3, 2)
    assert box_iou(np.empty((0, 4)), a).shape == (0, 3)
    assert box_iou(a, []).shape == (3, 0)
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(np.zeros((2, 3)), a)


@pytest.mark.slow  # importing torch takes ~15 s here
def test_box_iou_matches_torchvision():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, size=(2, 40, 2))
    sizes = rng.uniform(1, 40, size=(2, 40, 2))
    a, b = (np.concatenate([c, c + s], axis=1) for c, s in zip(corners, sizes, strict=True))
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)
    assert (expected > 0).any()  # the boxes do overlap


def test_box_iou_of_numpy_rows():  # the synthetic annotator's key frames
    a = np.array([0, 0, 10, 10])
    assert box_iou([a], [a])[0, 0] == 1.0
    assert box_iou([a], [np.array([5, 0, 15, 10])])[0, 0] == pytest.approx(50 / 150)
    assert box_iou([a], [np.array([20, 20, 30, 30])])[0, 0] == 0.0
