"""When two tracklets of one patient show one nodule: a calibrated P(same nodule).

The re-ID embedding alone links tracklets by cosine distance within tau. Its scale moves
with the model (benchmarks/RESULTS.md, "Index quality": the swept tau moves six-fold
between seeds), and it leaves out what an exam says. Within one exam a probe's depth
setting stays put, so a nodule lies at the same depth in every video of it and keeps its
size: two tracklets of one exam at depths a nodule's height apart are two nodules. Across
exams (another day, another depth setting, the nodule grown) linking is left to
appearance.

:class:`LinkModel` is a logistic regression of "same nodule" on four features of a pair
(:data:`FEATURES`):

- the log cosine distance of their embeddings;
- within one exam, the gap between their boxes' centre depths over their mean box height;
- within one exam, the absolute log ratio of their box heights;
- whether they come from one exam (0 across exams, where the two geometry features are 0).

It is fitted on the validation patients' within-patient pairs (``usv-ray tune --target
tau``, which records it in the re-ID bundle). The index links where P(same) is at least
``index.link_threshold`` (0.5: where "same" is the likelier), in place of a tau on the
model's own scale: :meth:`LinkModel.distances` gives ``1 - P`` to the clusterings, which
link at ``d <= 1 - threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FEATURES", "LinkModel", "box_geometry", "fit_link", "pair_features", "within_pairs"]

FEATURES = ("log_cosine_distance", "depth_gap", "height_ratio", "same_exam")
FLOOR = 1e-6  # cosine distances below this are taken as this (log of zero)


def box_geometry(boxes: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(centre depth, height) of a tracklet: the medians over its ``(x0, y0, x1, y1)``
    boxes, in source pixels."""
    b = np.asarray([np.asarray(box, dtype=np.float64) for box in boxes]).reshape(-1, 4)
    if not len(b):
        raise ValueError("a tracklet without boxes has no geometry")
    return float(np.median((b[:, 1] + b[:, 3]) / 2)), float(np.median(b[:, 3] - b[:, 1]))


def pair_features(
    embeddings: np.ndarray, studies: Sequence[str | None], depth: np.ndarray, height: np.ndarray
) -> np.ndarray:
    """``(n, n, 4)`` :data:`FEATURES` of every pair of one patient's ``n`` tracklets:
    unit-norm ``embeddings (n, D)``, their study keys (None: unknown, never one exam), box
    centre depths and heights ``(n,)``."""
    x = np.asarray(embeddings, dtype=np.float64)
    cosine = np.clip(1.0 - x @ x.T, FLOOR, 2.0)  # (n, n)
    keys = np.asarray([s if s is not None else f"\0{i}" for i, s in enumerate(studies)])
    same = (keys[:, None] == keys[None, :]).astype(np.float64)  # (n, n)
    depth, height = np.asarray(depth, np.float64), np.maximum(np.asarray(height, np.float64), 1)
    gap = np.abs(depth[:, None] - depth[None, :]) / ((height[:, None] + height[None, :]) / 2)
    ratio = np.abs(np.log(height[:, None] / height[None, :]))
    return np.stack([np.log(cosine), same * gap, same * ratio, same], axis=-1)


def within_pairs(patients: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(i, j)``, ``i < j``, of every pair of rows with one patient."""
    patients = np.asarray(patients, dtype=object)
    rows, cols = [], []
    for patient in dict.fromkeys(patients.tolist()):
        where = np.flatnonzero(patients == patient)
        a, b = np.triu_indices(len(where), k=1)
        rows.append(where[a])
        cols.append(where[b])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


@dataclass(frozen=True)
class LinkModel:
    """P(same nodule) = sigmoid(((features - mean) / scale) . coef + intercept)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    pairs: int = 0  # the pairs it was fitted on, and how many of them show one nodule
    same: int = 0

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(same) of ``features (..., 4)`` -> ``(...)``."""
        z = (np.asarray(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def distances(
        self,
        embeddings: np.ndarray,
        studies: Sequence[str | None],
        depth: np.ndarray,
        height: np.ndarray,
    ) -> np.ndarray:
        """``(n, n)`` ``1 - P(same)`` of one patient's tracklets (0 on the diagonal)."""
        d = 1.0 - self.probability(pair_features(embeddings, studies, depth, height))
        np.fill_diagonal(d, 0.0)
        return d

    def digest(self) -> str:
        """A short hash of the fitted model: the index's version names it."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), **asdict(self)}

    @classmethod
    def from_dict(cls, entry: dict) -> LinkModel:
        """The model a bundle recorded.

        Raises:
            ValueError: for a record of other features.
        """
        if tuple(entry.get("features", ())) != FEATURES:
            raise ValueError(f"a link model of features {entry.get('features')}, not {FEATURES}")
        fields = {k: entry[k] for k in ("intercept", "pairs", "same")}
        vectors = {k: tuple(float(v) for v in entry[k]) for k in ("mean", "scale", "coef")}
        return cls(**vectors, **fields)


def fit_link(features: np.ndarray, same: np.ndarray) -> LinkModel:
    """A :class:`LinkModel` fitted on pairs' ``features (m, 4)`` and ``same (m,)``
    (scikit-learn's logistic regression on standardised features, its default L2).

    Raises:
        ValueError: with fewer than two pairs of each kind.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    y = np.asarray(same, dtype=bool)
    if min(y.sum(), (~y).sum()) < 2:
        raise ValueError(
            f"{y.sum()} same-nodule and {(~y).sum()} different-nodule pairs: a link model "
            "needs at least two of each"
        )
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature (no pair within one exam) stays 0
    fitted = LogisticRegression().fit((x - mean) / scale, y)
    return LinkModel(
        tuple(mean.tolist()),
        tuple(scale.tolist()),
        tuple(fitted.coef_[0].tolist()),
        float(fitted.intercept_[0]),
        len(y),
        int(y.sum()),
    )
