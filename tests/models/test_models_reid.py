import pytest
import torch

from usv_ray.models.reid import ClassificationModel, Extractor, VerificationModel
from usv_ray.models.reid import build_reid_model as build_model


def test_extractor_gives_unit_embeddings_for_any_clip_length():
    torch.manual_seed(0)
    extractor = Extractor().eval()
    with torch.no_grad():
        for frames in (1, 4):
            emb = extractor(torch.randn(2, 1, frames, 32, 16))  # (B, 1, T, H, W)
            assert emb.shape == (2, 512)
            assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_cm_gives_embeddings_and_identity_logits_and_learns():
    torch.manual_seed(0)
    model = ClassificationModel(n_identities=3)
    embeddings, logits = model(torch.randn(4, 1, 2, 16, 16))
    assert embeddings.shape == (4, 512) and logits.shape == (4, 3)
    assert logits.abs().max() <= model.scale + 1e-4  # scaled cosines
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert model.fc.weight.grad is not None
    assert model.extractor.backbone.stem[0].weight.grad.abs().sum() > 0


def test_vm_shares_one_extractor_and_scores_pairs():
    torch.manual_seed(0)
    model = VerificationModel()
    a, b = torch.randn(3, 1, 2, 16, 16), torch.randn(3, 1, 2, 16, 16)
    emb_a, emb_b, logits = model(a, b)
    assert emb_a.shape == emb_b.shape == (3, 512) and logits.shape == (3, 2)
    model.eval()
    with torch.no_grad():
        # Siamese: each side is the one extractor applied to that side's clips.
        assert torch.allclose(model.extractor(a), model(a, b)[0], atol=1e-5)
        probs = model.same_prob(emb_a, emb_b)
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
    extractors = [m for m in model.modules() if isinstance(m, Extractor)]
    assert len(extractors) == 1  # weights shared, not copied


def test_build_model_knows_both_kinds():
    assert isinstance(build_model("CM", 5), ClassificationModel)
    assert isinstance(build_model("VM", 5), VerificationModel)
    with pytest.raises(ValueError, match="unknown re-ID model"):
        build_model("XM", 5)
