"""The re-ID networks: the R(2+1)D-18 extractor, the classification model (CM) and the
siamese verification model (VM). Gray clips ``(B, 1, T, H, W)`` in, tensors out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from usv_ray.models.video import gray_r2plus1d_18
from usv_ray.schemas import EMBEDDING_DIM


class Extractor(nn.Module):
    """torchvision R(2+1)D-18 (gray stem, no fc): a clip -> its L2-normalised embedding.

    The embedding is the 512-d global average pool. Any ``T >= 1`` and ``H, W >= 16``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = gray_r2plus1d_18()
        self.backbone.fc = nn.Identity()

    def forward(self, clips: Tensor) -> Tensor:
        return nn.functional.normalize(self.backbone(clips), dim=1)  # (B, 512)


class ClassificationModel(nn.Module):
    """CM: the extractor and one fc over the training nodule identities.

    ``forward`` gives (embeddings (B, 512), identity logits (B, n_identities)); at
    inference the fc is dropped and two clips compare by the cosine of their embeddings.
    The logits are the cosine to each identity's weight vector times ``scale``: on
    unit-norm embeddings a plain fc would need huge weights to become confident.
    """

    def __init__(self, n_identities: int, scale: float = 16.0) -> None:
        super().__init__()
        self.extractor = Extractor()
        self.fc = nn.Linear(EMBEDDING_DIM, n_identities, bias=False)
        self.scale = scale

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = self.extractor(clips)  # (B, 512)
        weights = nn.functional.normalize(self.fc.weight, dim=1)  # (n_identities, 512)
        return embeddings, self.scale * embeddings @ weights.T  # (B, n_identities)


class VerificationModel(nn.Module):
    """VM: weight-sharing siamese extractors; the two embeddings concatenated, then fc,
    BN, ReLU, fc, BN, ReLU, fc to (different, same) logits."""

    def __init__(self, hidden: tuple[int, int] = (512, 128)) -> None:
        super().__init__()
        self.extractor = Extractor()
        self.head = nn.Sequential(
            nn.Linear(2 * EMBEDDING_DIM, hidden[0]),
            nn.BatchNorm1d(hidden[0]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]),
            nn.BatchNorm1d(hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], 2),
        )

    def forward(self, clips_a: Tensor, clips_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Two batches of clips (B, 1, T, H, W) -> (emb_a, emb_b (B, 512), logits (B, 2))."""
        both = self.extractor(torch.cat([clips_a, clips_b]))  # (2B, 512): one BN batch
        emb_a, emb_b = both.chunk(2)
        return emb_a, emb_b, self.head(torch.cat([emb_a, emb_b], dim=1))

    def same_prob(self, emb_a: Tensor, emb_b: Tensor) -> Tensor:
        """P(same nodule) of embedding pairs (M, 512) x 2 -> (M,)."""
        return self.head(torch.cat([emb_a, emb_b], dim=1)).softmax(dim=1)[:, 1]


def build_reid_model(kind: str, n_identities: int) -> nn.Module:
    """A freshly initialised CM (over ``n_identities`` nodules) or VM.

    Raises:
        ValueError: for another kind.
    """
    if kind == "CM":
        return ClassificationModel(n_identities)
    if kind == "VM":
        return VerificationModel()
    raise ValueError(f"unknown re-ID model {kind!r} (known: CM, VM)")


@torch.no_grad()
def embed_clips(
    extractor: nn.Module, clips: np.ndarray, batch_size: int, device: torch.device
) -> Tensor:
    """uint8 clips (N, T, H, W) -> unit-norm embeddings (N, 512) on the CPU, in eval mode."""
    from usv_ray.imaging import normalise

    extractor.eval()
    out = [
        extractor(normalise(torch.from_numpy(clips[i : i + batch_size]).to(device))[:, None]).cpu()
        for i in range(0, len(clips), batch_size)
    ]  # each (B, 1, T, H, W) in
    return torch.cat(out) if out else torch.zeros(0, EMBEDDING_DIM)
