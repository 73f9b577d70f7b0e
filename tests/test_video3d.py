import torch

from usv_ray.video3d import gray_r2plus1d_18


def test_gray_r2plus1d_takes_one_channel():
    model = gray_r2plus1d_18().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 2, 16, 16)).shape == (1, 400)  # torchvision's own fc
