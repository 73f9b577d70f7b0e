"""Pairwise evaluation of the re-ID models: every pair of tracklets within a patient.

A pair's score is P(same nodule) in [0, 1]: ``(1 + cosine) / 2`` of the two embeddings
for the classification model (CM), the head's probability for the verification model
(VM). The threshold is chosen on validation pairs (best accuracy) and applied to test.
Accuracy, sensitivity and specificity get patient-bootstrap 95% CIs (pairs of one patient
share tracklets: they are not independent); the AUC gets its DeLong 95% CI, and CM and VM
are compared with the paired DeLong test on the same pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from usv_ray.evaluate.delong import delong_auc, delong_test
from usv_ray.evaluate.metrics import accuracy, bootstrap_ci, sensitivity, specificity
from usv_ray.evaluate.tables import ci_text
from usv_ray.models.reid import ClassificationModel, VerificationModel, embed_clips
from usv_ray.reid.clips import TrackletSet
from usv_ray.reid.pairs import within_patient_pairs


@torch.no_grad()
def pair_scores(model: nn.Module, embeddings: Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """P(same nodule) of the pairs ``(i[m], j[m])`` of ``embeddings`` (N, 512) -> (M,)."""
    a, b = embeddings[torch.from_numpy(i)], embeddings[torch.from_numpy(j)]  # (M, 512) each
    if isinstance(model, VerificationModel):
        model.eval()
        head_device = next(model.head.parameters()).device
        probs = model.same_prob(a.to(head_device), b.to(head_device)).cpu()
    elif isinstance(model, ClassificationModel):
        probs = ((1 + (a * b).sum(dim=1)) / 2).clamp(0.0, 1.0)
    else:
        raise TypeError(f"not a re-ID model: {type(model).__name__}")
    return probs.numpy().astype(np.float64)


@dataclass(frozen=True)
class Pairs:
    """The within-patient pairs of a tracklet set, scored."""

    i: np.ndarray  # (M,) indices into the set
    j: np.ndarray
    same: np.ndarray  # (M,) bool: the same nodule
    patient_keys: np.ndarray  # (M,) the pair's patient
    scores: np.ndarray  # (M,) P(same)


def score_pairs(model: nn.Module, tracklets: TrackletSet, batch_size: int) -> Pairs:
    """Embed ``tracklets`` once and score all their within-patient pairs with ``model``."""
    device = next(model.parameters()).device
    i, j, same = within_patient_pairs(tracklets.patient_keys, tracklets.identities)
    embeddings = embed_clips(model.extractor, tracklets.clips, batch_size, device)
    scores = pair_scores(model, embeddings, i, j)
    return Pairs(i, j, same, tracklets.patient_keys[i], scores)


def best_threshold(same: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold with the best accuracy of ``scores >= threshold`` reading "same".

    Candidates are midpoints between consecutive distinct scores (and the two ends).
    Returns (threshold, accuracy); (0.5, NaN) for no pairs.
    """
    same, scores = np.asarray(same, dtype=bool), np.asarray(scores, dtype=np.float64)
    if same.size == 0:
        return 0.5, float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    distinct = np.flatnonzero(np.r_[np.diff(s) != 0, True])  # last index of each score
    tp = np.cumsum(y)[distinct]  # predicted same: everything at or above that score
    fp = (distinct + 1) - tp
    negatives = (~y).sum()
    correct = np.r_[negatives, tp + negatives - fp]  # first: nothing reads same
    cuts = np.r_[s[0] + 1e-9, (s[distinct[:-1]] + s[distinct[:-1] + 1]) / 2, s[-1] - 1e-9]
    best = int(np.argmax(correct))
    return float(np.clip(cuts[best], 0.0, 1.0)), float(correct[best] / same.size)


def pair_metrics(
    pairs: Pairs, threshold: float, *, n_boot: int, rng: np.random.Generator
) -> dict[str, float]:
    """ACC, SE, SP (patient-bootstrap CIs) at ``threshold`` and the AUC (DeLong CI)."""
    y, p = pairs.same.astype(np.int64), pairs.scores
    row: dict[str, float] = {"pairs": float(y.size), "same": float(y.sum())}
    for name, metric in (("ACC", accuracy), ("SE", sensitivity), ("SP", specificity)):
        bound = partial(metric, threshold=threshold)
        low, high = bootstrap_ci(bound, y, p, pairs.patient_keys, n_boot=n_boot, rng=rng)
        row.update({name: bound(y, p), f"{name}_low": low, f"{name}_high": high})
    auc = delong_auc(y, p)
    row.update({"AUC": auc.auc, "AUC_low": auc.low, "AUC_high": auc.high})
    return row


def comparison(pairs: Mapping[str, Pairs]) -> dict[str, float]:
    """Paired DeLong test of the first two models' AUCs on the same pairs."""
    (name_a, a), (name_b, b) = list(pairs.items())[:2]
    if not (np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j)):
        raise ValueError("the DeLong test needs both models scored on the same pairs")
    test = delong_test(a.same.astype(np.int64), a.scores, b.scores)
    return {
        "models": f"{name_a} vs {name_b}",
        "difference": test.difference,
        "low": test.low,
        "high": test.high,
        "z": test.z,
        "p_value": test.p_value,
    }


def reid_table(rows: list[dict]) -> pd.DataFrame:
    """The paper's Table 3 layout: one row per model and split; ACC, SE, SP and AUC in
    percent, each beside its 95% CI as ``"low-high"``."""
    out = []
    for row in rows:
        line = {"model": row["model"], "split": row["split"]}
        line.update(pairs=int(row["pairs"]), same=int(row["same"]), threshold=row["threshold"])
        for name in ("ACC", "SE", "SP", "AUC"):
            line[name] = 100 * row[name]
            line[f"{name}_ci"] = ci_text(row[f"{name}_low"], row[f"{name}_high"])
        out.append(line)
    return pd.DataFrame(out)
