"""Algorithm 1 and the closure: hand-made point sets, a literal transcription of the paper's
loop, scikit-learn's DBSCAN, permutation invariance, and the all-patients batching."""

import numba
import numpy as np
import pytest

from usv_ray.cluster import threshold
from usv_ray.cluster.threshold import algorithm1, closure, cluster_patients


def on_circle(degrees) -> np.ndarray:
    """``(N, 2)`` unit vectors at these angles: cosine distance 1 - cos(angle between)."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings group the rows alike (label names aside)."""
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]))


def rng_choosing(seed_element: int, n: int) -> np.random.Generator:
    """A generator whose first ``random(n)`` is highest at ``seed_element``: Algorithm 1's
    first seed (the documented contract)."""
    for seed in range(1000):
        if np.random.default_rng(seed).random(n).argmax() == seed_element:
            return np.random.default_rng(seed)
    raise AssertionError("no seed found")


def nodule_embeddings(
    rng: np.random.Generator, n: int, n_nodules: int, noise: float, dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (n, dim) float64, nodule (n,))``: unit nodule centres plus noise."""
    centres = rng.normal(size=(n_nodules, dim))
    nodule = rng.integers(n_nodules, size=n)
    return centres[nodule] / np.linalg.norm(centres[nodule], axis=1, keepdims=True) + noise * (
        rng.normal(size=(n, dim))
    ), nodule


def paper_algorithm1(embeddings: np.ndarray, tau: float, priority: np.ndarray) -> np.ndarray:
    """Algorithm 1 as printed in the paper, loop by loop (the seed: highest priority)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit.T
    remaining = list(range(len(embeddings)))
    labels = np.full(len(embeddings), -1)
    cluster_id = 0
    while remaining:
        seed = max(remaining, key=lambda i: priority[i])
        cluster = [seed]
        remaining.remove(seed)
        for f in remaining:
            if any(distance[member, f] < tau for member in cluster):
                cluster.append(f)
        labels[cluster] = cluster_id
        remaining = [f for f in remaining if f not in cluster]
        cluster_id += 1
    return labels


# (angles in degrees, tau, closure labels): cosine distance of 10° is 0.015, of 50° 0.357
CASES = [
    ([0, 10, 90, 95, 180], 0.1, [0, 0, 1, 1, 2]),  # three separated groups
    ([0, 90, 5, 180, 85], 0.1, [0, 1, 0, 2, 1]),  # interleaved input order
    ([0, 100, 50], 0.5, [0, 0, 0]),  # a chain: 0-50 and 50-100 linked, 0-100 not
    ([0, 100, 50], 0.3, [0, 1, 2]),  # nothing linked
    ([0, 100, 50], 2.5, [0, 0, 0]),  # everything linked
    ([30], 0.1, [0]),
]


@pytest.mark.parametrize(("degrees", "tau", "expected"), CASES)
def test_closure_hand_made(degrees, tau, expected):
    labels = closure(on_circle(degrees), tau)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(("degrees", "tau", "expected"), [c for c in CASES if c[0] != [0, 100, 50]])
def test_algorithm1_equals_closure_without_chains(degrees, tau, expected):
    """Every group pairwise linked, no link across: the nodules, whatever the seed."""
    for seed in range(5):
        labels = algorithm1(on_circle(degrees), tau, np.random.default_rng(seed))
        assert labels.dtype == np.int64
        assert same_partition(labels, np.asarray(expected))
        assert set(labels.tolist()) == set(range(labels.max() + 1))


@pytest.mark.parametrize(
    ("seed_element", "expected"),
    [
        (0, [0, 1, 0]),  # seed 0°: scans 100° (no link to {0°}: out), then 50° (joins)
        (1, [1, 0, 0]),  # seed 100°: scans 0° (out), then 50° (joins)
        (2, [0, 0, 0]),  # seed 50°: links both
    ],
)
def test_algorithm1_splits_a_chain_by_seed(seed_element, expected):
    chain = on_circle([0, 100, 50])  # input order a, c, b of the chain a - b - c
    labels = algorithm1(chain, 0.5, rng_choosing(seed_element, 3))
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(closure(chain, 0.5), [0, 0, 0])


def test_a_distance_equal_to_tau_links_in_the_closure_only():
    """The paper's Algorithm 1 links d < tau, the closure (like DBSCAN's eps) d <= tau."""
    orthogonal = np.array([[1.0, 0.0], [0.0, 1.0]])  # cosine distance exactly 1
    np.testing.assert_array_equal(closure(orthogonal, 1.0), [0, 0])
    np.testing.assert_array_equal(algorithm1(orthogonal, 1.0, np.random.default_rng(0)), [0, 1])


def test_algorithm1_matches_the_papers_loop():
    rng = np.random.default_rng(1)
    for trial in range(40):
        x, _ = nodule_embeddings(rng, int(rng.integers(1, 30)), int(rng.integers(1, 6)), 0.4)
        tau = float(rng.uniform(0.05, 0.6))
        priority = np.random.default_rng(trial).random(len(x))
        labels = algorithm1(x, tau, np.random.default_rng(trial))
        np.testing.assert_array_equal(labels, paper_algorithm1(x, tau, priority))


def test_algorithm1_refines_the_closure():
    """Each Algorithm 1 cluster lies inside one closure component."""
    rng = np.random.default_rng(2)
    x, _ = nodule_embeddings(rng, 60, 6, 0.5)
    components = closure(x, 0.4)
    for seed in range(10):
        labels = algorithm1(x, 0.4, np.random.default_rng(seed))
        for cluster in np.unique(labels):
            assert np.unique(components[labels == cluster]).size == 1


def test_closure_labels_are_numbered_by_smallest_member():
    rng = np.random.default_rng(3)
    x, _ = nodule_embeddings(rng, 50, 7, 0.3)
    labels = closure(x, 0.3)
    _, first_index = np.unique(labels, return_index=True)
    assert np.all(np.diff(first_index) > 0)  # label k starts before label k + 1
    np.testing.assert_array_equal(closure(x, 0.3), labels)


def test_closure_is_permutation_invariant():
    rng = np.random.default_rng(4)
    x, _ = nodule_embeddings(rng, 80, 8, 0.6)  # noisy: chains between nodules occur
    labels = closure(x, 0.45)
    assert 1 < labels.max() + 1 < 80  # neither one cluster nor all singletons
    for _ in range(30):
        permutation = rng.permutation(len(x))
        permuted = closure(x[permutation], 0.45)
        restored = np.empty_like(permuted)
        restored[permutation] = permuted
        assert same_partition(restored, labels)


def test_closure_follows_a_long_shuffled_chain():
    """A great-circle path in 1° steps, in random order: one component (many groups merged)."""
    degrees = np.random.default_rng(5).permutation(np.arange(0, 150, 1.0))
    tau = 1 - np.cos(np.deg2rad(1.5))  # links 1° neighbours, not 2°
    np.testing.assert_array_equal(closure(on_circle(degrees), tau), np.zeros(150))
    assert algorithm1(on_circle(degrees), tau, np.random.default_rng(0)).max() > 0


@pytest.mark.parametrize(("dim", "dtype"), [(3, np.float64), (512, np.float32)])
def test_both_equal_dense_references_past_the_pivots(dim, dtype):
    """More cluster seeds than pivots, and (in 3-d) many pairs near the cut: the pivot
    bounds never drop a link that computing every distance finds."""
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(12)
    most = 0
    for trial in range(12):
        x, _ = nodule_embeddings(rng, 120, 60, float(rng.uniform(0.01, 0.3)), dim)
        x = x.astype(dtype)
        tau = float(rng.uniform(0.001, 0.2))
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        _, expected = connected_components(1.0 - unit @ unit.T <= tau, directed=False)
        labels = closure(x, tau)
        assert same_partition(labels, expected), trial
        priority = np.random.default_rng(trial).random(len(x))
        np.testing.assert_array_equal(
            algorithm1(x, tau, np.random.default_rng(trial)), paper_algorithm1(x, tau, priority)
        )
        most = max(most, labels.max() + 1)
    assert most > threshold.PIVOTS


def test_without_a_writable_cache_the_loops_compile_per_process(monkeypatch):
    """A read-only install run without a home: numba finds no cache location and refuses
    cache=True at import; the loops must still compile (and not break the import)."""
    from numba.core.caching import CacheImpl

    monkeypatch.setattr(CacheImpl, "_locator_classes", [])

    def twice(x):
        return 2 * x

    with pytest.raises(RuntimeError, match="no locator"):  # what numba does on its own
        numba.njit(cache=True)(twice)
    assert threshold._compiled()(twice)(21) == 42


def test_the_angle_is_within_its_stated_error():
    cosines = np.concatenate([np.linspace(-1.0, 1.0, 200_001), [-1.5, 1.5]])  # clipped
    angles = np.array([threshold._angle(c) for c in cosines])
    exact = np.arccos(np.clip(cosines, -1.0, 1.0))
    assert np.abs(angles - exact).max() <= threshold.ANGLE_ERROR


@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 0.8])
def test_closure_equals_dbscan_with_min_samples_1(tau):
    from sklearn.cluster import DBSCAN

    rng = np.random.default_rng(6)
    x, _ = nodule_embeddings(rng, 70, 6, 0.5, dim=32)
    expected = DBSCAN(eps=tau, min_samples=1, metric="cosine").fit_predict(x)
    assert same_partition(closure(x, tau), expected)


def test_scale_and_dtype_do_not_matter():
    rng = np.random.default_rng(7)
    x, _ = nodule_embeddings(rng, 30, 4, 0.3)
    scaled = x * rng.uniform(0.1, 10.0, size=(30, 1))
    np.testing.assert_array_equal(closure(scaled, 0.3), closure(x, 0.3))
    np.testing.assert_array_equal(closure(x.astype(np.float32), 0.3), closure(x, 0.3))
    assert closure(np.zeros((0, 4)), 0.3).shape == (0,)
    assert algorithm1(np.zeros((0, 4)), 0.3, np.random.default_rng(0)).shape == (0,)


@pytest.mark.parametrize("method", ["closure", "algorithm1"])
def test_cluster_patients_equals_per_patient_calls(method, monkeypatch):
    monkeypatch.setattr(threshold, "ROWS_PER_BATCH", 12)  # several batches, one patient alone
    rng = np.random.default_rng(8)
    sizes = [1, 1, 2, 3, 3, 3, 3, 5, 5, 7, 7, 7, 20]
    keys = np.array([f"patient-{i:02d}" for i in rng.permutation(len(sizes))])
    patients = np.repeat(keys, sizes)
    x, _ = nodule_embeddings(rng, len(patients), 4, 0.5)
    shuffle = rng.permutation(len(patients))
    patients, x = patients[shuffle], x[shuffle].astype(np.float32)

    labels = cluster_patients(x, patients, 0.4, method=method, seed=11)
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    shared = np.random.default_rng(11)  # algorithm1: one generator, patients in sorted order
    for key in np.unique(patients):
        rows = np.flatnonzero(patients == key)
        if method == "closure":
            expected = closure(x[rows], 0.4)
        else:
            expected = algorithm1(x[rows], 0.4, shared)
        np.testing.assert_array_equal(labels[rows], expected, err_msg=key)


def test_cluster_patients_takes_integer_codes_and_empty_input():
    rng = np.random.default_rng(9)
    x, _ = nodule_embeddings(rng, 40, 3, 0.3)
    codes = rng.integers(0, 6, size=40)
    as_strings = cluster_patients(x, codes.astype(str), 0.3)
    np.testing.assert_array_equal(cluster_patients(x, codes, 0.3), as_strings)
    assert cluster_patients(np.zeros((0, 4)), np.array([]), 0.3).shape == (0,)


@pytest.mark.parametrize(
    ("embeddings", "tau", "match"),
    [
        (np.ones(4), 0.3, "must be \\(N, D\\)"),
        (np.ones((3, 0)), 0.3, "must be \\(N, D\\)"),
        (np.array([["a", "b"]]), 0.3, "numeric"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), 0.3, "zero or non-finite norm"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 0.3, "zero or non-finite norm"),
        (np.eye(2), -0.1, "tau"),
        (np.eye(2), float("nan"), "tau"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings, tau, match):
    with pytest.raises(ValueError, match=match):
        closure(embeddings, tau)
    with pytest.raises(ValueError, match=match):
        algorithm1(embeddings, tau, np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        cluster_patients(embeddings, np.zeros(np.shape(embeddings)[0]), tau)


def test_cluster_patients_rejects_bad_patients_and_methods():
    x = np.eye(3)
    with pytest.raises(ValueError, match="patients must be"):
        cluster_patients(x, np.array(["a", "b"]), 0.3)
    with pytest.raises(ValueError, match="no patient"):
        cluster_patients(x, np.array(["a", None, "b"], dtype=object), 0.3)
    with pytest.raises(ValueError, match="method"):
        cluster_patients(x, np.array(["a", "a", "b"]), 0.3, method="dbscan")
