"""3D CNNs on gray clips ``(B, 1, T, H, W)``: the variable-frame paper's baselines
(method 1 of docs/methods.md: C3D_BN, R3D, R(2+1)D, each giving class logits ``(B, 2)``), and
torchvision's R(2+1)D-18 with a one-channel (gray B-mode) stem, which the re-ID extractor
shares.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from usv_ray.schemas import NUM_CLASSES


def gray_stem_conv(conv: nn.Conv3d) -> nn.Conv3d:
    """A 1-input-channel copy of the geometry of ``conv`` (freshly initialised)."""
    return nn.Conv3d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def gray_r2plus1d_18() -> nn.Module:
    """torchvision's R(2+1)D-18 (random init) on gray clips ``(B, 1, T, H, W)``.

    Only the stem's first, spatial (1x7x7) convolution sees the input channels. Its fc is
    still torchvision's 400-class layer: callers replace it with their own head.
    """
    from torchvision.models.video import r2plus1d_18

    model = r2plus1d_18(weights=None)
    model.stem[0] = gray_stem_conv(model.stem[0])  # (1, 7, 7) kernel, stride (1, 2, 2)
    return model


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    """C3D's 3x3x3 convolution (stride 1, padding 1), then batch norm and ReLU."""
    return [
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


class C3DBN(nn.Module):
    """C3D (Tran et al. 2015) with batch norm after every convolution, for short clips.

    C3D's layout: eight 3x3x3 convolutions of 64, 128, 256, 256, 512, 512, 512, 512 channels,
    and five max pools, the first spatial only (1x2x2) so early layers keep the temporal
    detail, the others 2x2x2. Adapted to 12 frames and any clip size: the pools round up
    (``ceil_mode``), so a clip of any T >= 1 and H, W >= 1 keeps at least one cell, and an
    adaptive average pool to 1 x 4 x 4 (C3D's pool5 grid for 16 x 112 x 112 input) feeds
    the fc layers. The fc layers are narrower than C3D's 4096 (``hidden`` = 1024 by
    default): 4096-wide fc6/fc7 would add 50 M parameters to a model trained on a few
    hundred videos.
    """

    def __init__(
        self,
        hidden: int = 1024,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.5,
        in_channels: int = 1,
    ) -> None:
        """Build the network.

        Args:
            hidden: width of fc6 and fc7 (C3D: 4096).
            num_classes: output logits.
            dropout: dropout after fc6 and fc7 (C3D: 0.5).
            in_channels: input channels (1: gray ultrasound).
        """
        super().__init__()

        def pool(kernel: tuple[int, int, int]) -> nn.Module:
            return nn.MaxPool3d(kernel, stride=kernel, ceil_mode=True)

        self.features = nn.Sequential(
            *_conv_bn(in_channels, 64),  # conv1a
            pool((1, 2, 2)),
            *_conv_bn(64, 128),  # conv2a
            pool((2, 2, 2)),
            *_conv_bn(128, 256),  # conv3a, conv3b
            *_conv_bn(256, 256),
            pool((2, 2, 2)),
            *_conv_bn(256, 512),  # conv4a, conv4b
            *_conv_bn(512, 512),
            pool((2, 2, 2)),
            *_conv_bn(512, 512),  # conv5a, conv5b
            *_conv_bn(512, 512),
            pool((2, 2, 2)),
            nn.AdaptiveAvgPool3d((1, 4, 4)),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 4 * 4, hidden),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # fc8
        )

    def forward(self, clips: Tensor) -> Tensor:
        """Class logits of each clip: ``(B, 1, T, H, W) -> (B, num_classes)``."""
        grid = self.features(clips)  # (B, 512, 1, 4, 4)
        return self.head(grid)  # (B, 8192) -> (B, C)


def c3d_bn() -> nn.Module:
    """C3D with batch norm (:class:`C3DBN`), one gray input channel, 2 classes."""
    return C3DBN()


def r3d() -> nn.Module:
    """torchvision's R3D-18 (random init) with a gray stem and a 2-class fc.

    Its global adaptive pool takes any T >= 1 and H, W >= 16 (at 16 the last stage is 1x1).
    """
    from torchvision.models.video import r3d_18

    model = r3d_18(weights=None)
    model.stem[0] = gray_stem_conv(model.stem[0])  # (3, 7, 7) kernel, stride (1, 2, 2)
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


def r2plus1d() -> nn.Module:
    """torchvision's R(2+1)D-18 (random init) with a gray stem and a 2-class fc."""
    model = gray_r2plus1d_18()
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


# The one explicit choice point: classify.video.models names -> builders.
VIDEO_MODELS: dict[str, Callable[[], nn.Module]] = {
    "C3D_BN": c3d_bn,
    "R3D": r3d,
    "R(2+1)D": r2plus1d,
}


def build_video_model(name: str) -> nn.Module:
    """A freshly initialised 3D CNN: gray clips ``(B, 1, T, H, W)`` -> logits ``(B, 2)``.

    Never downloads weights. Seed torch first for reproducible initial weights.

    Raises:
        ValueError: for a name not in :data:`VIDEO_MODELS`.
    """
    if name not in VIDEO_MODELS:
        raise ValueError(f"unknown video model {name!r} (known: {', '.join(VIDEO_MODELS)})")
    return VIDEO_MODELS[name]()
