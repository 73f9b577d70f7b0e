"""Detection AP by COCO's evaluation: pinned to torchmetrics' MeanAveragePrecision, and to
hand-made cases."""

import math

import numpy as np
import pytest

from usv_ray.detect.evaluate import detection_ap, examples_plot, pr_curve_plot


def random_case(seed: int, frames: int = 12):
    """Truth and noisy detections (some missed, some false) over ``frames`` frames."""
    rng = np.random.default_rng(seed)
    truth, found = [], []
    for _ in range(frames):
        n = int(rng.integers(0, 3))
        corner = rng.uniform(0, 40, (n, 2))
        true = np.concatenate([corner, corner + rng.uniform(5, 20, (n, 2))], 1)
        noisy = true + rng.normal(0, 2, true.shape)
        keep = rng.random(n) > 0.2  # a fifth missed
        extra = rng.uniform(0, 40, (int(rng.integers(0, 2)), 2))
        false = np.concatenate([extra, extra + 8], 1)
        boxes = np.concatenate([noisy[keep], false])
        scores = rng.uniform(0.05, 1, len(boxes))
        truth.append(true)
        found.append((boxes, scores))
    return truth, found


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_torchmetrics(seed):
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchmetrics.detection")
    truth, found = random_case(seed)
    metric = detection.MeanAveragePrecision(box_format="xyxy", backend="pycocotools")
    metric.update(
        [
            {
                "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(s, dtype=torch.float32),
                "labels": torch.ones(len(s), dtype=torch.int64),
            }
            for b, s in found
        ],
        [
            {
                "boxes": torch.tensor(t, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.ones(len(t), dtype=torch.int64),
            }
            for t in truth
        ],
    )
    expected = metric.compute()
    ours = detection_ap(truth, found)
    assert ours["ap"] == pytest.approx(float(expected["map"]), abs=1e-6)
    assert ours["ap50"] == pytest.approx(float(expected["map_50"]), abs=1e-6)


def test_perfect_detections_score_one_and_a_miss_less():
    truth = [np.array([[0, 0, 10, 10]]), np.array([[20, 20, 30, 30]]), np.zeros((0, 4))]
    perfect = [(t, np.ones(len(t))) for t in truth]
    assert detection_ap(truth, perfect)["ap50"] == pytest.approx(1.0)
    assert detection_ap(truth, perfect)["ap"] == pytest.approx(1.0)
    missed = [perfect[0], (np.zeros((0, 4)), np.zeros(0)), perfect[2]]
    half = detection_ap(truth, missed)
    assert half["ap50"] == pytest.approx(0.5, abs=0.01) and half["boxes"] == 2


def test_no_detection_is_zero_and_no_truth_is_undefined():
    truth = [np.array([[0, 0, 10, 10]])]
    nothing = [(np.zeros((0, 4)), np.zeros(0))]
    assert detection_ap(truth, nothing)["ap50"] == 0.0
    assert math.isnan(detection_ap([np.zeros((0, 4))], nothing)["ap"])
    with pytest.raises(ValueError, match="1 frames of truth, 2 of detections"):
        detection_ap(truth, nothing * 2)


def test_the_figures_are_written(tmp_path):
    truth, found = random_case(0, frames=4)
    scores = detection_ap(truth, found)
    assert pr_curve_plot({"test": scores}, tmp_path / "pr.png", "toy").stat().st_size > 0
    frames = np.random.default_rng(0).integers(0, 255, (4, 48, 48), dtype=np.uint8)
    path = examples_plot(frames, truth, found, tmp_path / "examples.png", "toy", shown=0.0)
    assert path.stat().st_size > 0
