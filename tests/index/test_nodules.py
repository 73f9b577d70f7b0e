from datetime import UTC, datetime

import numpy as np
import pytest

from usv_ray.index.nodules import Links, Nodule, centroid, nodule_uid, update_patient

BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 2, 1, tzinfo=UTC)


def unit(*angles_deg: float) -> np.ndarray:
    """Unit vectors in the plane at these angles: cosine distance = 1 - cos(difference)."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


TAU = 1 - np.cos(np.radians(10))  # within 10 degrees


def world(angles: dict[str, float], studies: dict[str, str | None]) -> Links:
    """Tracklets at these angles, linked within 10 degrees."""
    vecs = unit(*angles.values())
    return Links(dict(zip(angles, vecs, strict=True)), studies, TAU)


@pytest.mark.parametrize("method", ["closure", "algorithm1"])
def test_first_build_clusters_the_patient(method):
    links = world(
        {"a": 0, "b": 5, "c": 90, "d": 94, "e": 180},
        {"a": "s1", "b": "s2", "c": "s1", "d": "s1", "e": None},
    )
    nodules = update_patient("pk", [], list("edcba"), links, method, NOW)
    groups = sorted(n.tracklet_ids for n in nodules)
    assert groups == [("a", "b"), ("c", "d"), ("e",)]
    ab = next(n for n in nodules if n.tracklet_ids == ("a", "b"))
    assert ab.nodule_uid == nodule_uid("pk", "a")  # founded on its smallest tracklet id
    assert (ab.first_study, ab.last_study) == ("s1", "s2") and ab.updated_at == NOW
    e = next(n for n in nodules if n.tracklet_ids == ("e",))
    assert (e.first_study, e.last_study) == (None, None)  # no study known


def test_follow_up_joins_the_nodule_it_matches_and_uids_stay():
    links = world(
        {"a": 0, "c": 90, "a2": 6, "a3": 14, "c2": 95, "new": 200},
        {"a": "s1", "c": "s1", "a2": "s2", "a3": "s2", "c2": "s2", "new": "s2"},
    )
    existing = [
        Nodule("uid-a", ("a",), "s1", "s1", BEFORE),
        Nodule("uid-c", ("c",), "s1", "s1", BEFORE),
    ]
    nodules = update_patient("pk", existing, ["a3", "new", "c2", "a2"], links, "closure", NOW)
    by_uid = {n.nodule_uid: n for n in nodules}
    # a3 is 14 degrees from a, but 8 from a2, which joined: a chain of views joins too
    assert by_uid["uid-a"].tracklet_ids == ("a", "a2", "a3")
    assert by_uid["uid-a"].last_study == "s2" and by_uid["uid-a"].first_study == "s1"
    assert by_uid["uid-c"].tracklet_ids == ("c", "c2") and by_uid["uid-c"].updated_at == NOW
    assert by_uid[nodule_uid("pk", "new")].tracklet_ids == ("new",)  # matches nothing: new
    assert len(nodules) == 3


def test_unchanged_nodules_come_back_as_they_were():
    links = world({"a": 0, "c": 90, "c2": 92}, {"a": "s1", "c": "s1", "c2": "s2"})
    a = Nodule("uid-a", ("a",), "s1", "s1", BEFORE)
    nodules = update_patient(
        "pk",
        [a, Nodule("uid-c", ("c",), "s1", "s1", BEFORE)],
        ["c2"],
        links,
        "closure",
        NOW,
    )
    assert nodules[0] is a  # untouched, its updated_at too
    assert update_patient("pk", [a], [], links, "closure", NOW) == [a]


def test_a_tracklet_between_two_nodules_joins_the_nearer_and_never_merges_them():
    links = world({"a": 0, "b": 15, "x": 9}, {"a": "s", "b": "s", "x": "s"})
    existing = [Nodule("A", ("a",), "s", "s", BEFORE), Nodule("B", ("b",), "s", "s", BEFORE)]
    nodules = update_patient("pk", existing, ["x"], links, "closure", NOW)
    assert [n.tracklet_ids for n in nodules] == [("a",), ("b", "x")]


def test_a_non_finite_embedding_is_an_error():
    links = Links({"a": np.array([np.nan, 1.0], np.float32)}, {"a": None}, TAU)
    with pytest.raises(ValueError, match="non-finite embedding among the tracklets of patient pk"):
        update_patient("pk", [], ["a"], links, "closure", NOW)


def test_centroid_is_the_normalised_mean():
    links = world({"a": 0, "b": 90}, {})
    c = centroid(Nodule("u", ("a", "b"), None, None, NOW), links.embedding_of)
    np.testing.assert_allclose(c, unit(45)[0], atol=1e-6)
    assert c.dtype == np.float32


@pytest.mark.parametrize("method", ["closure", "algorithm1"])
def test_tracklets_seen_together_are_never_one_nodule(method):
    # a first build: b and c, both near a, were seen in the same frames of one video
    links = world({"a": 0, "b": 4, "c": 6}, {"a": "s1", "b": "s1", "c": "s1"})
    apart = {frozenset(("b", "c"))}
    nodules = update_patient("pk", [], ["a", "b", "c"], links, method, NOW, cannot=apart)
    groups = [set(n.tracklet_ids) for n in nodules]
    assert not any({"b", "c"} <= group for group in groups) and len(nodules) == 2
    assert update_patient("pk", [], ["a", "b", "c"], links, method, NOW)[0].tracklet_ids == (
        "a",
        "b",
        "c",
    )  # without the cannot-link: one nodule


def test_a_new_tracklet_joins_the_nearest_nodule_it_may_join():
    links = world(
        {"a": 0, "c": 12, "new": 3, "twin": 2}, {t: "s" for t in ("a", "c", "new", "twin")}
    )
    existing = [
        Nodule("uid-a", ("a",), "s", "s", BEFORE),
        Nodule("uid-c", ("c",), "s", "s", BEFORE),
    ]
    # new is nearest to a, but was seen beside a: it joins c (9 degrees, within tau)
    nodules = update_patient(
        "pk", existing, ["new"], links, "closure", NOW,
        cannot={frozenset(("new", "a"))},
    )  # fmt: skip
    by_uid = {n.nodule_uid: n.tracklet_ids for n in nodules}
    assert by_uid == {"uid-a": ("a",), "uid-c": ("c", "new")}
    # two new tracklets seen together, both nearest to a: the nearer joins a; the other
    # may not join a any more, and joins c
    nodules = update_patient(
        "pk", existing, ["new", "twin"], links, "closure", NOW,
        cannot={frozenset(("new", "twin"))},
    )  # fmt: skip
    by_uid = {n.nodule_uid: n.tracklet_ids for n in nodules}
    assert by_uid == {"uid-a": ("a", "twin"), "uid-c": ("c", "new")}


def test_a_link_model_keeps_one_exams_tracklets_at_other_depths_apart():
    from usv_ray.cluster.link import LinkModel

    # P(same) >= 0.5 where the cosine distance is within TAU and, within one exam, the
    # depths lie less than one box height apart
    model = LinkModel((0.0,) * 4, (1.0,) * 4, (-1.0, -8.0, 0.0, 0.0), float(np.log(TAU)))
    angles = {"a": 0, "b": 2, "c": 3}
    geometry = {"a": (50.0, 10.0), "b": (80.0, 10.0), "c": (80.0, 10.0)}
    vectors = dict(zip(angles, unit(*angles.values()), strict=True))

    def groups(studies):
        links = Links(vectors, studies, 0.5, model, geometry)
        found = update_patient("pk", [], list(angles), links, "closure", NOW)
        return sorted(n.tracklet_ids for n in found)

    # one exam: a lies 3 heights above b and c, so it is another nodule that looks alike
    assert groups({"a": "s1", "b": "s1", "c": "s1"}) == [("a",), ("b", "c")]
    # a from another exam: its depth says nothing there, and the look links it
    assert groups({"a": "s0", "b": "s1", "c": "s1"}) == [("a", "b", "c")]
    # a without boxes: of no known exam, so the look links it
    del geometry["a"]
    assert groups({"a": "s1", "b": "s1", "c": "s1"}) == [("a", "b", "c")]
    # by cosine distance alone, one nodule in one exam too
    cosine = Links(vectors, dict.fromkeys(angles, "s1"), TAU)
    assert [
        n.tracklet_ids for n in update_patient("pk", [], list(angles), cosine, "closure", NOW)
    ] == [("a", "b", "c")]
