import numpy as np
import pytest

from usv_ray.frames import clip_array, clip_problem, resize_gray, uniform_positions


@pytest.mark.parametrize(
    ("length", "count", "start", "expected"),
    [
        (1, 4, 0, [0, 0, 0, 0]),  # one frame: repeated
        (3, 6, 0, [0, 0, 1, 1, 2, 2]),  # fewer frames than positions: nearest frames repeat
        (12, 12, 0, list(range(12))),  # as many: every frame once
        (30, 3, 0, [0, 14, 29]),  # more: spread out, both ends included
        (30, 12, 0, [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]),
        (4, 3, 7, [7, 8, 10]),  # a tracklet from frame 7 to 10: linspace(7, 10) rounded
    ],
)
def test_uniform_positions(length, count, start, expected):
    positions = uniform_positions(length, count, start)
    assert positions.tolist() == expected and positions.dtype == np.int64


@pytest.mark.parametrize("start", [0, 1, 5, 12])
def test_uniform_positions_round_as_linspace_from_the_start(start):
    # rint(start + x) and start + rint(x) differ at .5 when start is odd (ties to even)
    for length in range(1, 40):
        expected = np.rint(np.linspace(start, start + length - 1, 8)).astype(int)
        assert uniform_positions(length, 8, start).tolist() == expected.tolist()


@pytest.mark.parametrize(("length", "count"), [(0, 12), (5, 0)])
def test_uniform_positions_rejects_empty(length, count):
    with pytest.raises(ValueError):
        uniform_positions(length, count)


@pytest.mark.parametrize(
    ("shape", "out"),
    [
        ((480, 640), (224, 224)),
        ((20, 30), (224, 224)),
        ((224, 224), (224, 224)),
        ((64, 32), (32, 16)),
    ],
)
def test_resize_gray_shapes_and_range(shape, out):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    resized = resize_gray(image, *out)
    assert resized.shape == out and resized.dtype == np.uint8
    assert abs(float(resized.mean()) - float(image.mean())) < 3


def test_clip_array_samples_and_resizes():
    frames = np.stack([np.full((8, 4), 10 * t, np.uint8) for t in range(5)])  # (5, 8, 4)
    clip = clip_array(frames.tobytes(), 5, 8, 4, (3, 4, 2))
    assert clip.shape == (3, 4, 2) and clip.dtype == np.uint8
    assert clip[:, 0, 0].tolist() == [0, 20, 40]  # first, middle and last frame
    same = clip_array(frames.tobytes(), 5, 8, 4, (5, 8, 4))
    assert np.array_equal(same, frames)  # no resize when the size already fits


def test_clip_array_rejects_a_truncated_clip():
    with pytest.raises(ValueError, match="is not 2 x 8 x 4"):
        clip_array(b"\0" * 63, 2, 8, 4, (8, 256, 128))


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
