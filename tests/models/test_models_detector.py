"""The two detectors: a training loss through forward (DDP syncs it), detections above the
score threshold, and, for the CenterNet head, learning a toy nodule in a few steps."""

import numpy as np
import pytest
import torch

from usv_ray.detect.evaluate import detection_ap
from usv_ray.imaging import normalise
from usv_ray.models.detector import build_detector, centernet_loss

SIZE = 32


def toy_frames(n: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Speckle frames (n, 1, S, S) uint8, each with one dark square nodule (or none)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(90, 170, (n, 1, SIZE, SIZE)).astype(np.uint8)
    boxes = []
    for i in range(n):
        if i % 4 == 3:  # a frame without a nodule
            boxes.append(torch.zeros(0, 4))
            continue
        side = int(rng.integers(6, 12))
        x, y = rng.integers(0, SIZE - side, 2)
        images[i, 0, y : y + side, x : x + side] = 20
        boxes.append(torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32))
    return torch.from_numpy(images), boxes


@pytest.mark.parametrize("kind", ["centernet", "fcos"])
def test_a_detector_gives_a_loss_when_training_and_boxes_otherwise(kind):
    torch.manual_seed(0)
    model = build_detector({"model": kind, "input_size": SIZE, "score_threshold": 0.0})
    images, boxes = toy_frames(4, seed=0)
    loss = model.train()(normalise(images), boxes)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        found = model.eval()(normalise(images))
    assert len(found) == 4
    for boxes_found, scores in found:
        assert boxes_found.shape == (len(scores), 4) and (scores >= 0).all()


def test_the_score_threshold_holds_back_weak_detections():
    model = build_detector({"model": "centernet", "input_size": SIZE, "score_threshold": 0.99})
    with torch.no_grad():
        found = model.eval()(normalise(toy_frames(2, seed=1)[0]))
    assert all(len(scores) == 0 for _, scores in found)  # an untrained head is never that sure


def test_unknown_detectors_are_refused():
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        build_detector({"model": "yolo", "input_size": SIZE})


def test_the_centernet_loss_is_zero_free_only_at_the_target():
    heat = torch.full((1, 1, 8, 8), -10.0)  # logits: nothing anywhere
    size, offset = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    box = [torch.tensor([[8.0, 8.0, 16.0, 16.0]])]  # centre (12, 12) -> cell (3, 3) at stride 4
    missed = centernet_loss(heat, size, offset, box, stride=4)
    heat[0, 0, 3, 3] = 10.0
    size[0, :, 3, 3] = 2.0  # 8 px / stride 4
    found = centernet_loss(heat, size, offset, box, stride=4)
    assert found < 0.01 < missed
    assert centernet_loss(heat, size, offset, [torch.zeros(0, 4)], stride=4) > 1  # a false peak
    # under bf16 a confident false peak stays finite (1 - 1e-4 rounds to 1 in bf16)
    bf16 = [t.bfloat16() for t in (heat, size, offset)]
    assert torch.isfinite(centernet_loss(*bf16, [torch.zeros(0, 4)], stride=4))


@pytest.mark.slow
def test_the_centernet_head_learns_a_toy_nodule():
    torch.manual_seed(0)
    model = build_detector({"model": "centernet", "input_size": SIZE, "score_threshold": 0.05})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, boxes = toy_frames(64, seed=2)
    for step in range(60):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        loss = model.train()(normalise(images[batch]), boxes[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test, truth = toy_frames(32, seed=3)
    with torch.no_grad():
        found = [(b.numpy(), s.numpy()) for b, s in model.eval()(normalise(test))]
    assert detection_ap([t.numpy() for t in truth], found)["ap50"] > 0.7


@pytest.mark.parametrize(
    ("kind", "conv1"),
    [("centernet", "stem.0.weight"), ("fcos", "model.backbone.body.conv1.weight")],
)
def test_a_detector_starts_from_a_gray_resnet18_trunk(kind, conv1):
    from usv_ray.models.frame_cnn import gray_resnet18

    torch.manual_seed(1)
    trunk = gray_resnet18().state_dict()
    detector = build_detector({"model": kind, "input_size": 64})
    detector.load_trunk(trunk)
    assert torch.equal(detector.state_dict()[conv1], trunk["conv1.weight"])
    with pytest.raises(RuntimeError):
        detector.load_trunk({k: v for k, v in trunk.items() if not k.startswith("layer1")})
