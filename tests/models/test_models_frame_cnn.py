import pytest
import torch

from usv_ray.models.frame_cnn import FrameCNN, load_imagenet

# FrameCNN: ResNet-18 at 224 x 224 is slow-ish on a CPU, so a few batch-2 calls in total.


@pytest.fixture(scope="module")
def frame_cnn():
    torch.manual_seed(6)
    return FrameCNN().eval()


def test_frame_cnn_shapes_and_channels_last(frame_cnn):
    torch.manual_seed(7)
    frames = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        features = frame_cnn.features(frames)
        logits = frame_cnn(frames)
        assert features.shape == (2, 512) and logits.shape == (2, 2)
        torch.testing.assert_close(frame_cnn.head(features), logits)
        cl_model = FrameCNN().eval()
        cl_model.load_state_dict(frame_cnn.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        cl_logits = cl_model(frames.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl_logits, logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="gray"):
        frame_cnn(torch.randn(2, 3, 32, 32))


def test_frame_cnn_head_sizes_are_arguments():
    model = FrameCNN(hidden_sizes=(128, 32), num_classes=3, dropout=0.1)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 128), (128, 32), (32, 3)]


def test_load_imagenet_sums_rgb_conv1():
    import torchvision

    torch.manual_seed(8)
    rgb = torchvision.models.resnet18(weights=None).eval()  # stands in for ImageNet weights
    state = rgb.state_dict()
    model = FrameCNN().eval()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_imagenet(model, state)

    got = model.backbone.state_dict()
    torch.testing.assert_close(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert got["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(got["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert "fc.weight" not in got
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k  # the new head keeps its own init

    # A gray frame copied into R, G, B gives the same features as the gray network.
    rgb.fc = torch.nn.Identity()
    frames = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model.features(frames), rgb(frames.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4
        )


def test_imagenet_weights_come_from_the_cache_only(tmp_path, monkeypatch):
    import torchvision

    from usv_ray.models.frame_cnn import cached_imagenet_weights, imagenet_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrained: imagenet needs"):
        imagenet_weights_path()
    rgb = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(rgb, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = load_imagenet(FrameCNN(), cached_imagenet_weights())
    expected = rgb["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(model.backbone.conv1.weight.detach(), expected)
