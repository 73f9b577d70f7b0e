import numpy as np
import pytest
import torch

from usv_ray.reid.losses import batch_hard_triplet, contrastive, pairwise_distances


def _brute_force_triplet(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Batch-hard triplet by loops over anchors, positives and negatives, in float64."""
    x = embeddings.detach().double()
    hinges = []
    for a in range(len(x)):
        positives = [
            torch.linalg.norm(x[a] - x[q]).item()
            for q in range(len(x))
            if q != a and labels[q] == labels[a]
        ]
        negatives = [
            torch.linalg.norm(x[a] - x[q]).item() for q in range(len(x)) if labels[q] != labels[a]
        ]
        if positives and negatives:
            hinges.append(max(0.0, max(positives) - min(negatives) + margin))
    return float(np.mean(hinges)) if hinges else 0.0


def _case(seed: int, batch: int, dim: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, n_labels, (batch,), generator=gen)
    return embeddings, labels


@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0, 5.0])
@pytest.mark.parametrize(
    ("seed", "batch", "dim", "n_labels"),
    [(0, 8, 4, 2), (1, 16, 8, 4), (2, 12, 3, 6), (3, 20, 16, 10), (4, 5, 2, 5)],
)
def test_batch_hard_matches_brute_force(seed, batch, dim, n_labels, margin):
    embeddings, labels = _case(seed, batch, dim, n_labels)
    loss = batch_hard_triplet(embeddings, labels, margin=margin)
    assert loss.item() == pytest.approx(_brute_force_triplet(embeddings, labels, margin), abs=1e-9)


@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_batch_hard_with_duplicates_and_a_singleton_label(margin):
    embeddings, labels = _case(5, 12, 4, 3)
    embeddings[3] = embeddings[0]  # coincident rows, same or other label
    embeddings[7] = embeddings[0]
    embeddings[9] = embeddings[9] * 0
    embeddings[10] = embeddings[9]
    labels[11] = 99  # occurs once: no positive, not an anchor, but a negative for others
    loss = batch_hard_triplet(embeddings, labels, margin=margin)
    assert loss.item() == pytest.approx(_brute_force_triplet(embeddings, labels, margin), abs=1e-9)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [([0, 0, 0, 0], "no negatives"), ([0, 1, 2, 3], "no positives"), ([7], "one row")],
)
def test_batch_hard_without_valid_anchor_is_a_zero_with_grad(labels, reason):
    embeddings = torch.randn(len(labels), 3, requires_grad=True)
    loss = batch_hard_triplet(embeddings, torch.tensor(labels), margin=0.5)
    assert loss.item() == 0.0, reason
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_batch_hard_gradient_is_finite_for_coincident_embeddings():
    base = torch.randn(3, 4)
    # Rows 0 and 1 coincide with the same label (a repeated tracklet); row 2 and 3 coincide
    # across labels (distance-0 negative); row 4 is elsewhere.
    embeddings = torch.stack([base[0], base[0], base[1], base[1], base[2]]).requires_grad_()
    labels = torch.tensor([0, 0, 1, 2, 2])
    loss = batch_hard_triplet(embeddings, labels, margin=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0  # the other terms still train


def test_batch_hard_gradient_matches_finite_differences():
    # Central differences by hand: torch.autograd.gradcheck spends seconds importing.
    embeddings, labels = _case(6, 8, 3, 3)
    embeddings.requires_grad_()
    batch_hard_triplet(embeddings, labels, margin=0.7).backward()
    step, numeric = 1e-6, torch.zeros_like(embeddings)
    with torch.no_grad():
        for index in np.ndindex(*embeddings.shape):
            shifted = embeddings.detach().clone()
            shifted[index] += step
            up = batch_hard_triplet(shifted, labels, margin=0.7)
            shifted[index] -= 2 * step
            down = batch_hard_triplet(shifted, labels, margin=0.7)
            numeric[index] = (up - down) / (2 * step)
    assert torch.allclose(embeddings.grad, numeric, atol=1e-6)
    assert embeddings.grad.abs().sum() > 0


def test_pairwise_distances_are_exact_zero_on_the_diagonal():
    embeddings = torch.randn(6, 5) * 100
    dist = pairwise_distances(embeddings)
    assert torch.equal(dist.diagonal(), torch.zeros(6))
    assert torch.allclose(dist, torch.cdist(embeddings, embeddings), rtol=1e-5, atol=1e-3)


def test_batch_hard_rejects_bad_shapes_and_margin():
    with pytest.raises(ValueError, match="embeddings"):
        batch_hard_triplet(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), margin=1.0)
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), margin=-1.0)


# Hand-computed: loss = mean(same * d² + (1 - same) * max(0, margin - d)²), no factor 1/2.
CONTRASTIVE_CASES = [
    # same pair at d = 5 (3-4-5 triangle): 5² = 25
    ([[0.0, 0.0]], [[3.0, 4.0]], [True], 1.0, 25.0),
    # different pair at d = 5 beyond margin 2: max(0, 2 - 5)² = 0
    ([[0.0, 0.0]], [[3.0, 4.0]], [False], 2.0, 0.0),
    # different pair at d = 1 inside margin 3: (3 - 1)² = 4
    ([[1.0, 1.0]], [[1.0, 2.0]], [False], 3.0, 4.0),
    # different pair at d = 0: margin² = 1.5² = 2.25
    ([[2.0, -1.0]], [[2.0, -1.0]], [False], 1.5, 2.25),
    # same pair at d = 0: 0
    ([[2.0, -1.0]], [[2.0, -1.0]], [True], 1.5, 0.0),
    # mean of [same d=2 -> 4, different d=2 margin 3 -> 1, different d=4 margin 3 -> 0] = 5/3
    (
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        [[2.0, 0.0], [0.0, 2.0], [0.0, -4.0]],
        [1, 0, 0],
        3.0,
        5.0 / 3.0,
    ),
]


@pytest.mark.parametrize(("emb_a", "emb_b", "same", "margin", "expected"), CONTRASTIVE_CASES)
def test_contrastive_hand_computed(emb_a, emb_b, same, margin, expected):
    loss = contrastive(torch.tensor(emb_a), torch.tensor(emb_b), torch.tensor(same), margin=margin)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("margin", [0.5, 2.0, 6.0])
def test_contrastive_matches_numpy(margin):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 40, 8))
    same = rng.random(40) < 0.5
    d = np.sqrt(((a - b) ** 2).sum(axis=1))
    expected = np.mean(np.where(same, d**2, np.maximum(0.0, margin - d) ** 2))
    loss = contrastive(
        torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(same), margin=margin
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_contrastive_gradient_is_finite_for_coincident_pairs():
    emb_a = torch.randn(4, 3)
    emb_b = emb_a.clone()
    emb_a.requires_grad_()
    loss = contrastive(emb_a, emb_b, torch.tensor([1, 0, 1, 0]), margin=1.0)
    loss.backward()
    assert torch.isfinite(emb_a.grad).all()


def test_contrastive_rejects_bad_shapes():
    with pytest.raises(ValueError, match="emb_a"):
        contrastive(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3), margin=1.0)
    with pytest.raises(ValueError, match="no pairs"):
        contrastive(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0), margin=1.0)
