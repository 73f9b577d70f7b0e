"""Gray B-mode images as the networks see them: normalisation and the augmentation that
ultrasound allows. Shared by the frame CNN, the 3D-CNN baselines and the re-ID extractor;
:func:`bmode_views`, stronger, makes the views of self-supervised pretraining.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SHIFT = 0.12  # training shifts: up to this fraction of the frame, each way
ZOOM = (0.9, 1.1)  # training zoom range
# pretraining views: crops of this share of the frame's area, then resized to the frame
CROP_AREA = (0.35, 1.0)
GAMMA = 0.4  # gamma = exp(U(-GAMMA, GAMMA)): the display curve
SPECKLE = 0.25  # standard deviation of the multiplicative, speckle-like noise
BLUR_SIGMA = (0.1, 1.2)  # pixels, applied to half the views


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


def bmode_views(images: Tensor, generator: torch.Generator) -> Tensor:
    """One random view of each uint8 frame ``(B, 1, H, W)`` for contrastive pretraining,
    normalised: what a frame may look like on another scan of the same tissue.

    A resized crop of ``CROP_AREA`` of the frame with a left-right flip (the probe moved,
    the depth changed), gamma (the display curve), multiplicative speckle-like noise (the
    speckle pattern changes from frame to frame), a Gaussian blur on half the views (focus,
    resolution), and gain and contrast. Gray only: nothing of colour jitter, no vertical
    flip or rotation that would put the skin line at the bottom. Every draw comes from
    ``generator`` (on the CPU), so a view is reproducible from its seed.
    """
    batch = images.shape[0]
    x = images.float() / 255.0

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(batch, *shape, generator=generator)

    scale = uniform(*CROP_AREA).sqrt()  # (B,) side of the crop, as a share of the frame
    flip = torch.rand(batch, generator=generator) < 0.5
    centre = (1 - scale)[:, None] * (2 * torch.rand(batch, 2, generator=generator) - 1)
    theta = torch.zeros(batch, 2, 3)  # output -> input coordinates in [-1, 1]
    theta[:, 0, 0] = torch.where(flip, -scale, scale)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = centre
    theta = theta.to(x.device)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)
    gamma = uniform(-GAMMA, GAMMA, 1, 1, 1).exp().to(x.device)
    x = x.clamp(min=0).pow(gamma)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    x = x * (1 + SPECKLE * uniform(0, 1, 1, 1, 1).to(x.device) * noise)
    sigma = uniform(*BLUR_SIGMA)  # (B,)
    blurred = torch.rand(batch, generator=generator) < 0.5
    if blurred.any():
        x[blurred] = _gaussian_blur(x[blurred], sigma[blurred].to(x.device))
    gain = (1 + 0.4 * uniform(-0.5, 0.5, 1, 1, 1)).to(x.device)
    offset = (0.2 * uniform(-0.5, 0.5, 1, 1, 1)).to(x.device)
    return normalise_float((x * gain + offset).clamp(0, 1))


def normalise_float(images: Tensor) -> Tensor:
    """Float gray levels in [0, 1] ``(B, 1, H, W)``, centred as :func:`normalise` centres."""
    return (images - 0.5) / 0.25


def _gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Each image of ``(N, 1, H, W)`` blurred by its own ``sigma`` ``(N,)`` (5 x 5 kernel)."""
    offsets = torch.arange(-2, 3, device=images.device, dtype=images.dtype)  # (5,)
    weights = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))  # (N, 5)
    weights = weights / weights.sum(1, keepdim=True)
    kernels = (weights[:, :, None] * weights[:, None, :])[:, None]  # (N, 1, 5, 5)
    n = len(images)
    padded = torch.nn.functional.pad(images.transpose(0, 1), (2, 2, 2, 2), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernels, groups=n).transpose(0, 1)  # (N, 1, H, W)
