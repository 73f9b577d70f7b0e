"""Metric-learning losses for nodule re-identification, as pure torch functions.

- ``batch_hard_triplet``: the TriHard loss of the classification model (CM) on P x K
  batches (see :mod:`usv_ray.reid.sampler`).
- ``contrastive``: the contrastive loss of the verification model (VM) on tracklet pairs
  (see :mod:`usv_ray.reid.pairs`).

Distances are Euclidean, through a square root that is safe at zero: two embeddings that
coincide are at distance exactly 0 and get a zero (not NaN) gradient from that distance.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _safe_norm(diff: Tensor) -> Tensor:
    """Euclidean norm over the last axis, exactly 0 with a zero gradient where ``diff`` is 0.

    ``sqrt`` has an infinite derivative at 0, and ``where`` alone does not help: its unused
    branch still back-propagates ``0 * inf = NaN``. So the square root only ever sees
    positive inputs (1 stands in for the zeros) and the zeros are put back afterwards.
    """
    squared = (diff * diff).sum(dim=-1)
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances between all rows of ``embeddings (B, D)``, as a ``(B, B)`` matrix.

    Computed from differences rather than the Gram matrix (``|a|² + |b|² - 2ab``), so equal
    rows give exactly 0 instead of round-off noise whose square root has a huge gradient.
    Memory is ``B * B * D``, which is small for P x K batches.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    diff = embeddings[:, None, :] - embeddings[None, :, :]  # (B, B, D)
    return _safe_norm(diff)  # (B, B)


def batch_hard_triplet(embeddings: Tensor, labels: Tensor, *, margin: float) -> Tensor:
    """Batch-hard triplet loss (TriHard): a scalar, the mean hinge over valid anchors.

    For every anchor ``a``: ``d_ap`` is the largest distance to another row with the same
    label (hardest positive), ``d_an`` the smallest distance to a row with another label
    (hardest negative); its loss is ``max(0, d_ap - d_an + margin)``. The mean is taken over
    the anchors that have at least one positive and one negative; with none (e.g. one
    label in the batch, or every label once) the result is a zero that still carries a
    gradient, so ``loss.backward()`` works on any batch.

    A positive that is the same tracklet repeated (an identity with one tracklet, see
    :func:`usv_ray.reid.sampler.pk_batches`) has ``d_ap = 0`` when the two clips give the
    same embedding; that anchor then only pushes its nearest negative out beyond ``margin``.

    Args:
        embeddings: ``(B, D)`` float.
        labels: ``(B,)`` integer identities (nodules).
        margin: the hinge margin ``m`` (>= 0).
    """
    if labels.ndim != 1 or embeddings.ndim != 2 or len(labels) != len(embeddings):
        raise ValueError(
            f"need embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    dist = pairwise_distances(embeddings)  # (B, B)
    same = labels[:, None] == labels[None, :]  # (B, B)
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    is_positive = same & ~itself  # (B, B)
    is_negative = ~same  # (B, B)
    hardest_positive = dist.masked_fill(~is_positive, -torch.inf).amax(dim=1)  # (B,)
    hardest_negative = dist.masked_fill(~is_negative, torch.inf).amin(dim=1)  # (B,)
    valid = is_positive.any(dim=1) & is_negative.any(dim=1)  # (B,)
    # Invalid anchors have -inf or +inf above; zero them before they reach the sum.
    hinge = torch.where(
        valid, torch.relu(hardest_positive - hardest_negative + margin), 0.0
    )  # (B,)
    return hinge.sum() / valid.sum().clamp(min=1)


def contrastive(emb_a: Tensor, emb_b: Tensor, same: Tensor, *, margin: float) -> Tensor:
    """Contrastive loss of pairs: mean of ``same * d² + (1 - same) * max(0, margin - d)²``.

    ``d`` is the Euclidean distance between ``emb_a[i]`` and ``emb_b[i]``. No factor 1/2
    (Hadsell et al. write one; it only rescales the loss): a same pair at distance 1 costs
    1, a different pair at distance 0 costs ``margin²``. The mean is over the ``M`` pairs.

    Args:
        emb_a, emb_b: ``(M, D)`` float, the two sides of each pair.
        same: ``(M,)`` bool or 0/1, whether the pair shows the same nodule.
        margin: distance beyond which a different pair costs nothing (>= 0).
    """
    if emb_a.shape != emb_b.shape or emb_a.ndim != 2 or same.shape != emb_a.shape[:1]:
        raise ValueError(
            f"need emb_a, emb_b (M, D) and same (M,), got {tuple(emb_a.shape)}, "
            f"{tuple(emb_b.shape)} and {tuple(same.shape)}"
        )
    if len(same) == 0:
        raise ValueError("contrastive loss of no pairs")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    d = _safe_norm(emb_a - emb_b)  # (M,)
    same = same.to(d.dtype)  # (M,)
    loss = same * d.square() + (1 - same) * torch.relu(margin - d).square()  # (M,)
    return loss.mean()
