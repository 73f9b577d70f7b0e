"""Gray B-mode images as the networks see them: normalisation and the augmentation that
ultrasound allows. Shared by the frame CNN, the 3D-CNN baselines and the re-ID extractor.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SHIFT = 0.12  # training shifts: up to this fraction of the frame, each way
ZOOM = (0.9, 1.1)  # training zoom range


def normalise(images: Tensor) -> Tensor:
    """uint8 (B, 1, H, W) -> float, centred: B-mode gray levels sit mostly below mid-gray."""
    return (images.float() / 255.0 - 0.5) / 0.25


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Augmentation that ultrasound allows, on a float batch (B, C, H, W), one draw per item.

    A left-right flip (the probe held the other way round), a shift of up to
    ``MAX_SHIFT`` of the frame and a zoom within ``ZOOM`` (the probe placed elsewhere, the
    depth setting changed; edges repeat the border), and a random gain and contrast (the
    sonographer's gain and time-gain-compensation knobs). No vertical flip or large
    rotation, which would put the skin line at the bottom. Without the shift a CNN trained
    on a few patients memorises where each patient's tissue is rather than the nodule.
    """
    batch = images.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5  # (B,)
    zoom = ZOOM[0] + (ZOOM[1] - ZOOM[0]) * torch.rand(batch, generator=generator)  # (B,)
    shift = MAX_SHIFT * 2 * (2 * torch.rand(batch, 2, generator=generator) - 1)  # (B, 2)
    theta = torch.zeros(batch, 2, 3)  # output -> input coordinates in [-1, 1]
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, :, 2] = shift
    theta = theta.to(images.device, images.dtype)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    gain = (1 + 0.4 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)).to(images.device)
    offset = (0.4 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)).to(images.device)
    return images * gain + offset
