"""Cannot-links: tracklets seen in the same frames of one video are never one nodule."""

import numpy as np
import pandas as pd
import pytest
from test_cluster_threshold import nodule_embeddings, on_circle, same_partition

from usv_ray.cluster.constraints import (
    cannot_links,
    constrained_algorithm1,
    constrained_closure,
    cosine_distances,
    pairs_of,
)
from usv_ray.cluster.threshold import algorithm1, closure

NONE = np.empty((0, 2), np.int64)


def test_pairs_share_a_frame_of_one_video():
    tracklets = pd.DataFrame(
        {
            "tracklet_id": ["a", "b", "c", "d", "e"],
            "video_id": ["v1", "v1", "v1", "v2", "v2"],
            "box_frames": [[0, 1, 2], [2, 3], [5, 6], [0, 1], [4]],
        }
    )
    # a and b share frame 2; c follows them (a lost and found track: may be one nodule);
    # d and e never share a frame; nothing across videos
    assert cannot_links(tracklets) == {frozenset(("a", "b"))}
    assert cannot_links(tracklets.iloc[:0]) == set()
    np.testing.assert_array_equal(pairs_of(["x", "b", "a"], cannot_links(tracklets)), [[1, 2]])
    assert pairs_of(["a"], cannot_links(tracklets)).shape == (0, 2)


def test_without_cannot_links_they_are_the_clusterings_they_constrain():
    rng = np.random.default_rng(0)
    for trial in range(30):
        x, _ = nodule_embeddings(rng, int(rng.integers(1, 40)), int(rng.integers(1, 6)), 0.4)
        tau = float(rng.uniform(0.05, 0.6))
        np.testing.assert_array_equal(
            constrained_closure(cosine_distances(x), tau, NONE), closure(x, tau)
        )
        np.testing.assert_array_equal(
            constrained_algorithm1(cosine_distances(x), tau, NONE, np.random.default_rng(trial)),
            algorithm1(x, tau, np.random.default_rng(trial)),
        )


@pytest.mark.parametrize("method", ["closure", "algorithm1"])
def test_a_cannot_link_pair_never_shares_a_cluster(method):
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(2, 40))
        x, _ = nodule_embeddings(rng, n, int(rng.integers(1, 4)), 0.3)
        pairs = np.unique(np.sort(rng.integers(n, size=(int(rng.integers(1, 8)), 2)), 1), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        tau = float(rng.uniform(0.2, 1.5))  # loose: most of the patient links
        if method == "closure":
            labels = constrained_closure(cosine_distances(x), tau, pairs)
            # each cluster is still held together by links within tau
            free = closure(x, tau)
            for cluster in np.unique(labels):
                assert np.unique(free[labels == cluster]).size == 1
        else:
            labels = constrained_algorithm1(
                cosine_distances(x), tau, pairs, np.random.default_rng(trial)
            )
        assert all(labels[i] != labels[j] for i, j in pairs)
        assert labels.min() == 0 and set(labels) == set(range(labels.max() + 1))


def test_a_chain_between_two_nodules_seen_together_breaks_at_its_longest_link():
    # a at 0, c at 20, b between them at 12: the closure joins all three; a and c are seen
    # in the same frames, so b joins the nearer (c, 8 degrees) and a stays apart
    x = on_circle([0, 12, 20])
    tau = 1 - np.cos(np.radians(13))
    assert same_partition(closure(x, tau), np.array([0, 0, 0]))
    labels = constrained_closure(cosine_distances(x), tau, np.array([[0, 2]]))
    np.testing.assert_array_equal(labels, [0, 1, 1])
    # permuted input: the same partition
    order = np.array([2, 0, 1])
    permuted = constrained_closure(cosine_distances(x[order]), tau, np.array([[0, 1]]))
    assert same_partition(permuted, labels[order])


def test_bad_pairs_and_embeddings_are_errors():
    with pytest.raises(ValueError, match="itself"):
        constrained_closure(cosine_distances(on_circle([0, 5])), 0.1, np.array([[1, 1]]))
    with pytest.raises(ValueError, match="non-zero"):
        cosine_distances(np.zeros((2, 3)))
