import typing

import pytest
import torch

from usv_ray.config import VideoModel
from usv_ray.models.video import VIDEO_MODELS, build_video_model, gray_r2plus1d_18


def test_every_configurable_model_has_a_builder():
    assert tuple(VIDEO_MODELS) == typing.get_args(VideoModel)
    with pytest.raises(ValueError, match="unknown video model"):
        build_video_model("C3D")


@pytest.mark.parametrize("name", list(VIDEO_MODELS))
def test_models_take_any_clip_length_and_learn(name):
    torch.manual_seed(0)
    model = build_video_model(name)
    with torch.no_grad():  # shapes only: backward is the slow part on a CPU
        for frames, size in ((12, 32), (1, 16)):
            assert model(torch.randn(2, 1, frames, size, size)).shape == (2, 2)
    logits = model(torch.randn(2, 1, 3, 16, 16))  # (B, 1, T, H, W) -> (B, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    stem = next(p for p in model.parameters() if p.dim() == 5)  # the first 3D conv
    assert stem.shape[1] == 1  # one gray input channel
    assert all(p.grad is not None for p in model.parameters())
    assert stem.grad.abs().sum() > 0
    model.eval()  # batch norm from running stats: a single clip works
    assert model(torch.randn(1, 1, 12, 16, 16)).shape == (1, 2)


def test_gray_r2plus1d_takes_one_channel():
    model = gray_r2plus1d_18().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 2, 16, 16)).shape == (1, 400)  # torchvision's own fc
