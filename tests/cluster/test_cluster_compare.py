"""The clustering comparison table on tiny synthetic embeddings (no Ray)."""

import numpy as np
import pandas as pd
import pytest

from usv_ray.cluster import compare
from usv_ray.cluster.compare import (
    CANDIDATES,
    TABLE_COLUMNS,
    TAU_GRID,
    best_on_grid,
    clustering_table,
)
from usv_ray.evaluate.tables import to_markdown


def synthetic_tracklets(
    rng: np.random.Generator, n_patients: int, noise: float, dim: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings, patients, nodule_ids, splits)``: 1-3 nodules per patient with random
    unit centres, 1-6 tracklets each patient; patients alternate val / test. The first
    three patients have 1, 2 and 3 tracklets, sklearn's edge cases."""
    embeddings, patients, nodules, splits = [], [], [], []
    for p in range(n_patients):
        n = [1, 2, 3][p] if p < 3 else int(rng.integers(1, 7))
        centres = rng.normal(size=(int(rng.integers(1, 4)), dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        nodule = rng.integers(len(centres), size=n)
        embeddings.append(centres[nodule] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim))
        patients += [f"key-{p:03d}"] * n
        nodules += [f"nodule-{k}" for k in nodule]
        splits += ["val" if p % 2 else "test"] * n
    return (
        np.concatenate(embeddings).astype(np.float32),
        np.array(patients),
        np.array(nodules),
        np.array(splits),
    )


def test_tau_grid():
    assert TAU_GRID[:4] == (0.001, 0.0013, 0.0016, 0.002) and TAU_GRID[-1] == 0.81
    assert len(TAU_GRID) == 31 and sorted(TAU_GRID) == list(TAU_GRID)
    steps = np.array(TAU_GRID[1:]) / np.array(TAU_GRID[:-1])
    assert np.all((steps > 1.15) & (steps < 1.35))  # evenly spaced on a log scale


def test_best_on_grid_takes_the_middle_of_a_plateau():
    assert best_on_grid([0.2, 0.9, 0.5]) == 1
    assert best_on_grid([0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 0.4]) == 3  # centre of the plateau
    assert best_on_grid([1.0, 1.0, 0.3]) == 0  # the lower of two middles
    assert best_on_grid([np.nan, 0.1, np.nan]) == 1  # NaN ranks last
    assert best_on_grid([np.nan, np.nan]) == 0


def test_well_separated_nodules_score_near_100():
    rng = np.random.default_rng(0)
    table = clustering_table(*synthetic_tracklets(rng, 16, noise=0.1))
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["method"].tolist() == list(CANDIDATES)
    by_method = table.set_index("method")
    for method in ("Algorithm 1", "Closure", "DBSCAN"):
        assert by_method.loc[method, "f_score"] > 99.0, method
        assert by_method.loc[method, "parameter"] in ("tau", "eps")
        assert by_method.loc[method, "value"] in TAU_GRID
    assert table["not_converged"].dtype == np.int64
    assert (table["time_ms"] > 0).all()
    # DBSCAN with min_samples=1 is the closure: same choice, same scores
    for column in ("value", "precision", "recall", "f_score"):
        assert by_method.loc["DBSCAN", column] == by_method.loc["Closure", column]
    assert "| Closure | tau |" in to_markdown(table)


def test_noisy_nodules_every_method_gives_percentages():
    """Noisy, overlapping nodules: every method still runs; scores are percentages."""
    rng = np.random.default_rng(1)
    table = clustering_table(*synthetic_tracklets(rng, 20, noise=1.2), seed=3)
    scores = table[["precision", "recall", "f_score", "val_f_score"]].to_numpy()
    finite = scores[np.isfinite(scores)]
    assert ((finite >= 0) & (finite <= 100)).all()
    assert table["f_score"].notna().all()


def test_one_and_two_tracklet_patients_only():
    rng = np.random.default_rng(2)
    x, patients, nodules, splits = synthetic_tracklets(rng, 3, noise=0.1)  # 1, 2, 3 tracklets
    splits = np.array(["val"] * 1 + ["test"] * 2 + ["val"] * 3)  # test: the 2-tracklet patient
    table = clustering_table(x, patients, nodules, splits, grids={"Closure": [0.2]})
    assert len(table) == len(CANDIDATES)
    assert table.set_index("method").loc["Closure", "value"] == 0.2


def test_affinity_propagation_that_does_not_converge_counts_as_singletons(monkeypatch):
    monkeypatch.setattr(compare, "AFFINITY_MAX_ITER", 1)
    rng = np.random.default_rng(3)
    x, patients, nodules, splits = synthetic_tracklets(rng, 12, noise=0.1)
    table = clustering_table(x, patients, nodules, splits, methods=["AffinityPropagation"])
    test_sizes = pd.Series(patients[splits == "test"]).value_counts()
    # 1 and 2 tracklets take sklearn's no-iteration path; 3 and more cannot converge
    assert table.loc[0, "not_converged"] == int((test_sizes >= 3).sum()) > 0


def test_train_rows_are_ignored_and_may_lack_nodules():
    rng = np.random.default_rng(4)
    x, patients, nodules, splits = synthetic_tracklets(rng, 8, noise=0.1)
    extra = 5
    table = clustering_table(
        np.concatenate([x, rng.normal(size=(extra, x.shape[1]))]),
        np.concatenate([patients, ["train-patient"] * extra]),
        np.concatenate([nodules.astype(object), [None] * extra]),
        np.concatenate([splits, ["train"] * extra]),
        methods=["Closure"],
    )
    assert table.loc[0, "f_score"] > 99.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "splits": np.where(a["splits"] == "val", "train", a["splits"])}, "'val'"),
        (lambda a: {**a, "nodule_ids": np.array([None] * len(a["splits"]))}, "nodule id"),
        (lambda a: {**a, "patients": a["patients"][:-1]}, "patients must be"),
        (lambda a: {**a, "methods": ["KMeans"]}, "unknown methods"),
        (lambda a: {**a, "grids": {"Closure": []}}, "empty"),
        (lambda a: {**a, "embeddings": np.zeros_like(a["embeddings"])}, "non-zero norm"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    x, patients, nodules, splits = synthetic_tracklets(np.random.default_rng(5), 4, 0.1)
    arguments = {"embeddings": x, "patients": patients, "nodule_ids": nodules, "splits": splits}
    arguments = change({**arguments, "methods": ["Closure"]})
    with pytest.raises(ValueError, match=match):
        clustering_table(**arguments)
