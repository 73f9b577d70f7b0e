"""Torchvision's video networks on gray clips, shared by the classify baselines and the
re-ID extractor: a one-channel (gray B-mode) stem in place of the RGB one.
"""

from __future__ import annotations

from torch import nn


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
