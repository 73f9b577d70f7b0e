"""The link model: a calibrated P(same nodule) from embeddings and, within one exam, boxes."""

import numpy as np
import pytest

from usv_ray.cluster.link import (
    FEATURES,
    LinkModel,
    box_geometry,
    fit_link,
    pair_features,
    within_pairs,
)


def unit(*angles_deg: float) -> np.ndarray:
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_box_geometry_is_the_median_centre_depth_and_height():
    boxes = [[0, 10, 5, 30], [0, 12, 5, 30], [0, 100, 5, 140]]  # one outlier box
    assert box_geometry(boxes) == (21.0, 20.0)
    assert box_geometry(np.array([[1.0, 2.0, 3.0, 4.0]])) == (3.0, 2.0)
    with pytest.raises(ValueError, match="without boxes"):
        box_geometry([])


def test_geometry_counts_within_one_exam_only():
    x = unit(0, 0, 60)
    f = pair_features(x, ["s1", "s1", "s2"], np.array([10.0, 40.0, 10.0]), np.array([10, 20, 10]))
    assert f.shape == (3, 3, len(FEATURES))
    np.testing.assert_allclose(f, f.transpose(1, 0, 2))  # symmetric
    # a and b: one exam, the same look, 30 px apart in depth = 2 mean heights, heights x2
    np.testing.assert_allclose(f[0, 1], [np.log(1e-6), 2.0, np.log(2), 1.0], atol=1e-9)
    # a and c: two exams; their depth and size say nothing
    np.testing.assert_allclose(f[0, 2], [np.log(0.5), 0.0, 0.0, 0.0], atol=1e-9)
    # an unknown exam is never one exam with another
    g = pair_features(x[:2], [None, None], np.array([10.0, 40.0]), np.array([10, 10]))
    assert g[0, 1, 3] == 0.0 and g[0, 1, 1] == 0.0


def test_within_pairs_are_the_pairs_of_each_patient():
    first, second = within_pairs(["p", "q", "p", "p", "q"])
    assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == [
        (0, 2), (0, 3), (1, 4), (2, 3)
    ]  # fmt: skip
    assert within_pairs([])[0].size == 0


def _pairs(rng, n):
    """Pairs whose cosine distance and, within one exam, depth gap tell same from not."""
    same = rng.random(n) < 0.4
    cosine = np.where(same, rng.uniform(0.001, 0.02, n), rng.uniform(0.01, 0.05, n))
    exam = rng.random(n) < 0.5
    gap = np.where(same, rng.uniform(0, 0.3, n), rng.uniform(0.5, 3, n)) * exam
    ratio = rng.uniform(0, 0.2, n) * exam
    return np.stack([np.log(cosine), gap, ratio, exam.astype(float)], axis=1), same


def test_a_fitted_model_is_calibrated_and_uses_the_geometry():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, same = _pairs(rng, 400)
    model = fit_link(x, same)
    assert (model.pairs, model.same) == (400, int(same.sum()))
    p = model.probability(x)
    # scikit-learn's own fit on the standardised features gives the same P
    z = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(p, LogisticRegression().fit(z, same).predict_proba(z)[:, 1])
    assert model.coef[1] < 0  # a depth gap within one exam speaks against one nodule
    # calibrated: the mean P matches the share of same pairs on fresh pairs
    fresh, fresh_same = _pairs(rng, 4000)
    assert abs(model.probability(fresh).mean() - fresh_same.mean()) < 0.05
    accuracy = ((model.probability(fresh) >= 0.5) == fresh_same).mean()
    by_cosine = max(((fresh[:, 0] <= t) == fresh_same).mean() for t in fresh[:, 0])
    assert accuracy > by_cosine + 0.03  # the exam's geometry adds to the look


def test_the_model_travels_as_a_record():
    x, same = _pairs(np.random.default_rng(1), 100)
    model = fit_link(x, same)
    entry = model.to_dict()
    assert entry["features"] == list(FEATURES)
    assert LinkModel.from_dict({**entry, "validation": {"f_score": 0.8}}) == model
    assert LinkModel.from_dict(entry).digest() == model.digest()
    assert fit_link(x[:-1], same[:-1]).digest() != model.digest()
    with pytest.raises(ValueError, match="features"):
        LinkModel.from_dict({**entry, "features": ["cosine"]})


def test_distances_are_one_minus_p_with_a_zero_diagonal():
    x, same = _pairs(np.random.default_rng(2), 200)
    model = fit_link(x, same)
    d = model.distances(unit(0, 1, 40), ["s", "s", "s"], np.zeros(3), np.full(3, 10.0))
    assert np.all(np.diag(d) == 0) and np.allclose(d, d.T)
    assert d[0, 1] < 0.5 < d[0, 2]  # one degree apart: same; forty: not


def test_one_kind_of_pair_fits_no_model():
    x, _ = _pairs(np.random.default_rng(3), 50)
    with pytest.raises(ValueError, match="at least two of each"):
        fit_link(x, np.ones(50, bool))
    with pytest.raises(ValueError, match="at least two of each"):
        fit_link(x[:3], np.array([True, False, False]))
