import numpy as np
import pytest

from usv_ray.frames import resize_gray
from usv_ray.ingest.deid import crop_region, cut, fov_region, patch


@pytest.mark.parametrize(
    ("box", "size", "region"),
    [
        ((0.0, 0.0, 1.0, 1.0), (320, 240), (0, 0, 320, 240)),
        ((0.0, 0.11, 1.0, 1.0), (320, 240), (0, 26, 320, 240)),
        ((0.25, 0.5, 0.75, 1.0), (100, 10), (25, 5, 75, 10)),
    ],
)
def test_crop_region(box, size, region):
    assert crop_region(box, *size) == region


@pytest.mark.parametrize("box", [(0.5, 0, 0.5, 1), (0, 0, 1.2, 1), (-0.1, 0, 1, 1)])
def test_crop_region_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="crop_box"):
        crop_region(box, 10, 10)


def test_fov_region_uses_the_maximum_over_frames():
    a = np.zeros((50, 60), np.uint8)
    b = np.zeros((50, 60), np.uint8)
    a[10:20, 5:15] = 200  # one frame lights the top-left
    b[30:40, 40:50] = 200  # another the bottom-right
    assert fov_region([a, b], threshold=12, margin=0) == (5, 10, 50, 40)
    assert fov_region([a, b], threshold=12, margin=2) == (3, 8, 52, 42)
    assert fov_region([np.zeros((5, 5), np.uint8)], threshold=12) is None


def test_text_band_never_survives_the_crop():
    frame = np.full((240, 320), 40, np.uint8)
    frame[:24] = 255  # burned-in text band, top 10%
    region = crop_region((0.0, 0.11, 1.0, 1.0), 320, 240)
    kept = resize_gray(cut(frame, region), 224, 224)
    assert kept.max() == 40


def test_patch_is_clipped_to_the_kept_region():
    frame = np.full((100, 100), 255, np.uint8)
    frame[20:] = 60  # rows 0-19 hold text, cut by the crop
    region = (0, 20, 100, 100)
    p = patch(frame, (10.0, 0.0, 50.0, 60.0), region, 256, 128)
    assert p.shape == (256, 128) and p.max() == 60  # the text above row 20 is not in the patch
    assert patch(frame, (10, 0, 50, 10), region, 256, 128).max() == 0  # wholly in the text band
