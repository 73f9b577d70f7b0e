"""The archive plan: labels, identities, sweeps and annotator-style tracklets (no pixels)."""

import itertools
from collections import Counter

import numpy as np
import pytest

from usv_ray.boxes import box_iou
from usv_ray.config import SynthConfig
from usv_ray.synth.plan import (
    Fov,
    plan_archive,
    sweep_progress,
    video_annotations,
    video_label,
    video_tracks,
)

DEFAULT = SynthConfig()


@pytest.fixture(scope="module")
def default_plan():
    return plan_archive(DEFAULT)


def _videos(patients):
    for patient in patients:
        for study in patient.studies:
            for video in study.videos:
                yield patient, study, video


def test_plan_is_a_pure_function_of_the_seed(default_plan):
    again = plan_archive(DEFAULT)
    assert again == default_plan
    other = plan_archive(SynthConfig(seed=1))
    assert [p.patient_id for p in other] != [p.patient_id for p in default_plan]


def test_patient_plan_does_not_depend_on_archive_size(default_plan):
    fewer = plan_archive(SynthConfig(patients=5))
    for a, b in zip(fewer, default_plan, strict=False):
        assert (a.patient_id, a.nodules, a.render_seed) == (b.patient_id, b.nodules, b.render_seed)


def test_default_plan_has_both_labels_well_represented(default_plan):
    labels = Counter(video_label(p, s, v, DEFAULT) for p, s, v in _videos(default_plan))
    assert set(labels) == {"benign", "malignant"}
    assert min(labels.values()) >= 0.25 * sum(labels.values())


def test_every_video_shows_a_nodule_and_some_show_two(default_plan):
    shown = []
    for p, s, v in _videos(default_plan):
        tracklets = video_annotations(p, s, v, DEFAULT)["tracklets"]
        shown.append(len({t["nodule_id"] for t in tracklets}))
    assert min(shown) >= 1
    assert max(shown) >= 2


def test_identities_studies_and_contract_paths(default_plan):
    assert len(default_plan) == DEFAULT.patients
    assert len({p.patient_id for p in default_plan}) == DEFAULT.patients
    for patient in default_plan:
        assert patient.patient_id.startswith("MRN") and patient.patient_id[3:].isdigit()
        assert 1 <= len(patient.nodules) <= DEFAULT.max_nodules
        ids = [n.nodule_id for n in patient.nodules]
        assert len(set(ids)) == len(ids) and patient.patient_id not in "".join(ids)
        dates = [s.exam_date for s in patient.studies]
        assert dates == sorted(set(dates))  # follow-ups on later dates
        assert all(1 <= len(s.videos) <= DEFAULT.max_videos_per_study for s in patient.studies)
    videos = [v for _, _, v in _videos(default_plan)]
    assert len({v.stem for v in videos}) == len(videos)
    assert any(v.fmt == "dcm" for v in videos) and any(v.fmt == "mp4" for v in videos)
    assert any(v.numeric_label for v in videos)
    omitted = [v for v in videos if v.omit_patient_id]
    assert omitted and all(v.fmt == "dcm" for v in omitted)
    lengths = [v.n_frames for v in videos]
    assert DEFAULT.min_frames <= min(lengths) and max(lengths) <= DEFAULT.max_frames
    assert min(lengths) < 15 and max(lengths) > 80  # log-uniform: short and long ones
    assert {p.fov.kind for p in default_plan} == {"linear", "sector"}


def test_tracklets_follow_the_annotation_contract(default_plan):
    for p, s, v in _videos(default_plan):
        for tracklet in video_annotations(p, s, v, DEFAULT)["tracklets"]:
            assert set(tracklet) == {"tracklet_id", "nodule_id", "keyframes"}
            frames = [k["frame"] for k in tracklet["keyframes"]]
            assert frames == sorted(set(frames))
            assert frames[0] >= 0 and frames[-1] < v.n_frames
            for key in tracklet["keyframes"]:
                x0, y0, x1, y1 = key["box"]
                assert 0 <= x0 < x1 < DEFAULT.width and 0 <= y0 < y1 < DEFAULT.height
                assert y0 >= 0.12 * DEFAULT.height  # inside the view, below the text
            boxes = [np.array(k["box"]) for k in tracklet["keyframes"]]
            for a, b in itertools.pairwise(boxes[:-1]):
                assert box_iou([a], [b])[0, 0] < 0.7  # each inner key frame is a real change


def test_box_shapes_follow_birads_cues(default_plan):
    tall = {True: [], False: []}
    for p, s, v in _videos(default_plan):
        malignant = {n.nodule_id: n.malignant for n in p.nodules}
        for tracklet in video_annotations(p, s, v, DEFAULT)["tracklets"]:
            for key in tracklet["keyframes"]:
                x0, y0, x1, y1 = key["box"]
                tall[malignant[tracklet["nodule_id"]]].append(y1 - y0 > x1 - x0)
    assert not any(tall[False])  # benign: wider than tall, always
    assert 0.2 < np.mean(tall[True]) < 1.0  # malignant: taller than wide in some frames


@pytest.mark.parametrize(
    ("fov", "inside", "outside"),
    [
        (Fov("linear", 36, 36.0, 200, 20, 300), [(160, 100), (20, 36)], [(10, 100), (160, 30)]),
        (
            Fov("sector", 36, 50.0, 180, 40, 280, 160.0, -50.0, 100.0, 280.0, 0.6),
            [(160, 100), (160, 220)],
            [(160, 45), (20, 100), (160, 235)],
        ),
    ],
)
def test_fov_contains(fov, inside, outside):
    assert fov.contains(*np.array(inside).T).all()
    assert not fov.contains(*np.array(outside).T).any()


def test_bad_frame_size_is_rejected():
    with pytest.raises(ValueError, match="even"):
        plan_archive(SynthConfig(width=321))


def test_each_sweep_shows_a_nodule_in_its_own_surrounding_tissue(default_plan):
    """The tissue field column under a shown nodule is its anchor, in every video."""
    for p, s, v in _videos(default_plan):
        tracks = video_tracks(p, s, v, DEFAULT.height, DEFAULT.width)
        probe = v.q_start + (v.q_end - v.q_start) * sweep_progress(v.n_frames)  # (T,)
        anchored = False
        for nodule in p.nodules:
            track = tracks[nodule.nodule_id]
            column = track.cx + np.round(probe) + v.field_offset  # (T,)
            target = DEFAULT.width / 2 + nodule.tissue_anchor
            anchored |= bool(np.any(track.visible & (np.abs(column - target) <= 1)))
        assert anchored
