"""The night batch: unlabelled follow-ups and new patients, and an archive it leaves alone."""

import dataclasses
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from synth_archives import BASE, NIGHT, read_frames, read_manifest

from usv_ray.synth.archive import MANIFEST_COLUMNS
from usv_ray.synth.bmode import PatientScene
from usv_ray.synth.plan import plan_archive, plan_night


def archive_files(manifest: Path) -> dict[str, bytes]:
    """Every file of the archive proper (not the night batch, not the truth), by path."""
    root = manifest.parent
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "night" and p.name != "truth.json"
    }


def truth_videos(manifest: Path, batch: str) -> list[dict]:
    videos = json.loads((manifest.parent / "truth.json").read_text())["videos"]
    return [v for v in videos if v["batch"] == batch]


def test_night_settings_leave_the_archive_byte_identical(base_archive, night_archive):
    base, night = archive_files(base_archive), archive_files(night_archive)
    assert base.keys() == night.keys()
    assert any(name.startswith("videos/") for name in base)
    for name, content in base.items():
        assert night[name] == content, name  # manifest, annotations and encoded videos
    assert truth_videos(night_archive, "archive") == truth_videos(base_archive, "archive")
    assert not (base_archive.parent / "night").exists()  # no batch, no folder


def test_night_plan_draws_nothing_from_the_archive_streams():
    assert plan_archive(NIGHT) == plan_archive(BASE)
    assert plan_night(BASE) == []
    assert plan_night(NIGHT) == plan_night(NIGHT, plan_archive(NIGHT))  # a pure function
    # More new patients only add to the follow-ups: each stream has its own children.
    more = plan_night(dataclasses.replace(NIGHT, night_new_patients=4))
    assert more[: len(plan_night(NIGHT))] == plan_night(NIGHT)


def test_night_manifest_hides_the_truth(night_archive):
    night = night_archive.parent / "night" / "manifest.csv"
    assert night.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    rows = read_manifest(night)
    assert rows
    for row in rows:
        assert row["label"] == "" and row["annotations"] == ""
        assert row["patient_id"] and row["study_id"]
        assert row["video"].startswith("videos/") and row["video"].endswith(".mp4")
        frames = read_frames(night.parent / row["video"])
        assert frames.shape[1:] == (NIGHT.height, NIGHT.width)
    assert sorted(p.name for p in night.parent.iterdir()) == ["manifest.csv", "videos"]


def test_night_patients_are_returning_or_new(night_archive):
    archive = {r["patient_id"] for r in truth_videos(night_archive, "archive")}
    rows = read_manifest(night_archive.parent / "night" / "manifest.csv")
    tonight = {r["patient_id"] for r in rows}
    returning, new = tonight & archive, tonight - archive
    assert len(returning) == round(NIGHT.night_followups * NIGHT.patients)
    assert len(new) == NIGHT.night_new_patients
    exams = {(r["patient_id"], r["study_id"]) for r in rows}
    assert len(exams) == len(tonight)  # one exam per patient tonight


def test_stems_are_unique_across_batches(night_archive):
    stems = [Path(v["video"]).stem for v in json.loads(
        (night_archive.parent / "truth.json").read_text())["videos"]]  # fmt: skip
    assert len(stems) == len(set(stems))
    names = [p.stem for p in night_archive.parent.rglob("videos/*")]
    assert sorted(names) == sorted(stems)


def test_follow_ups_come_3_to_14_months_after_the_last_exam(night_archive):
    last: dict[str, date] = {}
    for v in truth_videos(night_archive, "archive"):
        day = date.fromisoformat(v["exam_date"])
        last[v["patient_id"]] = max(last.get(v["patient_id"], day), day)
    checked = 0
    for v in truth_videos(night_archive, "night"):
        assert v["study_id"] == v["exam_date"]
        if v["patient_id"] in last:
            assert 90 <= (date.fromisoformat(v["exam_date"]) - last[v["patient_id"]]).days < 430
            checked += 1
    assert checked


def test_follow_up_is_the_same_breast_with_grown_nodules():
    archive = {p.patient_id: p for p in plan_archive(NIGHT)}
    follow_ups = [e for e in plan_night(NIGHT) if e.follow_up]
    assert follow_ups and all(not e.follow_up for e in plan_night(NIGHT)[len(follow_ups) :])
    for exam in follow_ups:
        before = archive[exam.patient.patient_id]
        assert exam.patient.studies[:-1] == before.studies
        assert (exam.patient.nodules, exam.patient.fov) == (before.nodules, before.fov)
        assert exam.patient.render_seed == before.render_seed
        assert exam.study.years > before.studies[-1].years  # the nodules have grown since
        assert 1 <= len(exam.study.videos) <= NIGHT.max_videos_per_study
        assert all(v.fmt == "mp4" and not v.annotated for v in exam.study.videos)
        scene = PatientScene.build(exam.patient, NIGHT)
        assert np.array_equal(scene.tissue, PatientScene.build(before, NIGHT).tissue)


def test_new_patients_never_take_an_archive_id():
    archive = plan_archive(NIGHT)
    new = [e.patient for e in plan_night(NIGHT, archive) if not e.follow_up]
    assert all(len(p.studies) == 1 for p in new)
    # An archive that already holds the first new patient's ID: the new one draws another.
    clash = [dataclasses.replace(archive[0], patient_id=new[0].patient_id), *archive[1:]]
    again = [e.patient for e in plan_night(NIGHT, clash) if not e.follow_up]
    ids = [p.patient_id for p in again]
    assert new[0].patient_id not in ids
    assert len(set(ids)) == len(ids) and not set(ids) & {p.patient_id for p in clash}
    assert again[0].nodules == new[0].nodules  # only the ID changed


def test_night_videos_show_dark_nodules_in_their_truth_boxes(night_archive):
    ratios = []
    for v in truth_videos(night_archive, "night"):
        frames = read_frames(night_archive.parent / "night" / v["video"])
        assert frames.shape == (v["n_frames"], v["height"], v["width"])
        assert v["nodules"]  # every planned sweep shows a nodule
        for nodule in v["nodules"]:
            middle = len(nodule["frames"]) // 2
            x0, y0, x1, y1 = nodule["boxes"][middle]
            frame = frames[nodule["frames"][middle]].astype(np.float64)
            m = max(3, (x1 - x0) // 3)
            outer = frame[max(0, y0 - m) : y1 + m + 1, max(0, x0 - m) : x1 + m + 1]
            inner = frame[y0 : y1 + 1, x0 : x1 + 1]
            ratios.append(inner.mean() / ((outer.sum() - inner.sum()) / (outer.size - inner.size)))
    assert ratios and np.median(ratios) < 0.8


@pytest.mark.parametrize(
    ("setting", "value", "match"),
    [
        ("night_followups", 1.5, "night_followups"),
        ("night_followups", -0.1, "night_followups"),
        ("annotated_fraction", 1.01, "annotated_fraction"),
        ("night_new_patients", -1, "night_new_patients"),
    ],
)
def test_bad_night_settings_are_rejected(setting, value, match):
    with pytest.raises(ValueError, match=match):
        plan_night(dataclasses.replace(BASE, **{setting: value}))
