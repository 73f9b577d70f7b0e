import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from usv_ray.models.reid import ClassificationModel, VerificationModel
from usv_ray.reid.evaluate import Pairs, best_threshold, comparison, pair_metrics, pair_scores


@pytest.mark.parametrize(
    ("same", "scores", "accuracy"),
    [
        ([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1], 1.0),  # separable: perfect
        ([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], 0.75),
        ([0, 0, 0], [0.2, 0.5, 0.9], 1.0),  # one class: nothing reads same
        ([1, 1], [0.5, 0.5], 1.0),  # ties
        ([1, 0], [0.5, 0.5], 0.5),
    ],
)
def test_best_threshold_is_the_best_accuracy(same, scores, accuracy):
    same, scores = np.array(same, bool), np.array(scores)
    threshold, acc = best_threshold(same, scores)
    assert acc == pytest.approx(accuracy)
    assert accuracy_score(same, scores >= threshold) == pytest.approx(acc)


def test_best_threshold_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        same = rng.random(30) < 0.4
        scores = np.round(rng.random(30) * 0.5 + 0.4 * same, 1)  # ties on purpose
        threshold, acc = best_threshold(same, scores)
        brute = max(accuracy_score(same, scores >= t) for t in np.r_[scores, 2.0])
        assert acc == pytest.approx(brute)
        assert accuracy_score(same, scores >= threshold) == pytest.approx(acc)


def test_pair_scores_cm_is_shifted_cosine_and_vm_a_probability():
    embeddings = torch.nn.functional.normalize(torch.randn(4, 512), dim=1)
    i, j = np.array([0, 0, 1]), np.array([0, 1, 2])
    cm = pair_scores(ClassificationModel(3), embeddings, i, j)
    cosine = (embeddings[i] * embeddings[j]).sum(1).numpy()
    assert cm == pytest.approx((1 + cosine) / 2, abs=1e-6) and cm[0] == pytest.approx(1.0)
    vm = pair_scores(VerificationModel(), embeddings, i, j)
    assert vm.shape == (3,) and ((vm >= 0) & (vm <= 1)).all()


def _pairs(rng, n, signal):
    same = rng.random(n) < 0.4
    scores = np.clip(0.5 + signal * (same - 0.4) + rng.normal(0, 0.2, n), 0, 1)
    patients = np.array([f"p{k}" for k in rng.integers(0, 8, n)])
    return Pairs(np.arange(n), np.arange(n) + 1, same, patients, scores)


def test_pair_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    pairs = _pairs(rng, 200, 0.5)
    row = pair_metrics(pairs, 0.5, n_boot=200, rng=np.random.default_rng(0))
    y, pred = pairs.same, pairs.scores >= 0.5
    assert row["ACC"] == pytest.approx(accuracy_score(y, pred))
    assert row["SE"] == pytest.approx(pred[y].mean()) and row["SP"] == pytest.approx(
        1 - pred[~y].mean()
    )
    assert row["AUC"] == pytest.approx(roc_auc_score(y, pairs.scores))
    for name in ("ACC", "SE", "SP", "AUC"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]


def test_comparison_needs_the_same_pairs():
    rng = np.random.default_rng(2)
    a, b = _pairs(rng, 100, 0.6), _pairs(rng, 100, 0.1)
    b = Pairs(a.i, a.j, a.same, a.patient_keys, b.scores)
    result = comparison({"CM": a, "VM": b})
    assert result["models"] == "CM vs VM" and 0 <= result["p_value"] <= 1
    other = Pairs(a.i + 1, a.j, a.same, a.patient_keys, a.scores)
    with pytest.raises(ValueError, match="same pairs"):
        comparison({"CM": a, "VM": other})
