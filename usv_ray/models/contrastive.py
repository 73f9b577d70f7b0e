"""The network of self-supervised pretraining (``usv-ray pretrain``): the 2D trunk with a
projection head, and its contrastive loss.

:class:`ContrastiveTrunk` is the frame CNN's gray ResNet-18 (:func:`gray_resnet18`, which
the detector shares) followed by a two-layer projection head, as SimCLR trains it; only the
trunk is kept afterwards (:func:`trunk_weights`). :func:`nt_xent` is SimCLR's normalised
temperature-scaled cross-entropy over a batch of B positive pairs: each view's positive is
the other view of its pair, every other view of the batch is a negative. Pairs come from
distinct videos (:mod:`usv_ray.pretrain.task`), so no negative is a frame of the anchor's
own video.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from usv_ray.models.frame_cnn import gray_resnet18
from usv_ray.schemas import FEATURE_DIM


class ContrastiveTrunk(nn.Module):
    """Gray frames ``(B, 1, H, W)`` -> projections ``(B, projection)`` (not normalised)."""

    def __init__(self, projection: int = 128) -> None:
        super().__init__()
        self.backbone = gray_resnet18()  # (B, 512), the trunk the bundle keeps
        self.head = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Linear(FEATURE_DIM, projection),
        )

    def forward(self, frames: Tensor) -> Tensor:
        return self.head(self.backbone(frames))


def contrastive_meta(projection: int) -> dict:
    """What a :class:`ContrastiveTrunk` weights file records of the network's shape."""
    return {"model": "ContrastiveTrunk", "in_channels": 1, "projection": projection}


def trunk_weights(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The trunk's state dict (:func:`gray_resnet18`'s keys) out of a
    :class:`ContrastiveTrunk`'s: the projection head is dropped."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """SimCLR's NT-Xent loss of B pairs ``(z1[i], z2[i])`` of projections ``(B, D)``, and the
    share of the 2B views whose nearest other view is their positive (a label-free accuracy).

    Cosine similarities over temperature; each of the 2B views is one cross-entropy row
    whose target is its pair's other view, among the 2B - 1 other views.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or len(z1) < 2:
        raise ValueError(f"need two (B, D) batches with B >= 2, got {z1.shape} and {z2.shape}")
    b = len(z1)
    z = nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)  # (2B,)
    loss = nn.functional.cross_entropy(logits, target)
    accuracy = (logits.argmax(1) == target).float().mean()
    return loss, accuracy
