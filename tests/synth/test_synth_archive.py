"""The written archive: manifest contract, MP4 and DICOM files, annotations, determinism."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from synth_archives import read_frames, read_manifest

from usv_ray.config import SynthConfig
from usv_ray.synth import write_archive
from usv_ray.synth.plan import plan_archive

CFG = SynthConfig(patients=4, max_frames=40, workers=1, dicom_fraction=0.3)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(CFG, tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def plan():
    patients = plan_archive(CFG)
    return {v.stem: (p, s, v) for p in patients for s in p.studies for v in s.videos}


def test_returns_the_manifest_with_the_contract_columns(archive):
    assert archive.name == "manifest.csv"
    with archive.open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["video", "patient_id", "study_id", "label", "annotations"]
    rows = read_manifest(archive)
    assert rows
    for row in rows:
        assert (archive.parent / row["video"]).is_file()
        assert (archive.parent / row["annotations"]).is_file()
        assert not Path(row["video"]).is_absolute()
        assert row["label"] in {"benign", "malignant", "0", "1"}
        assert row["study_id"]
    assert {r["label"] for r in rows} & {"0", "1"}
    # The hidden truth file is the only JSON beside the manifest (the pipeline never reads it).
    assert [p.name for p in archive.parent.glob("*.json")] == ["truth.json"]
    assert not (archive.parent / "night").exists()  # no night batch by default


def test_every_video_decodes_to_the_planned_frames(archive, plan):
    for row in read_manifest(archive):
        path = archive.parent / row["video"]
        _, _, video = plan[path.stem]
        assert path.suffix == f".{video.fmt}"
        frames = read_frames(path)
        assert frames.shape == (video.n_frames, CFG.height, CFG.width)


def test_dicom_files_carry_identity_and_cine_timing(archive, plan):
    import pydicom

    rows = read_manifest(archive)
    dicom_rows = [r for r in rows if r["video"].endswith(".dcm")]
    assert dicom_rows
    assert all(r["video"].endswith(".dcm") for r in rows if not r["patient_id"])
    assert any(not r["patient_id"] for r in dicom_rows)
    for row in dicom_rows:
        patient, study, video = plan[Path(row["video"]).stem]
        ds = pydicom.dcmread(archive.parent / row["video"])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert int(ds.NumberOfFrames) == video.n_frames
        assert (ds.Rows, ds.Columns) == (CFG.height, CFG.width)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        assert ds.PatientID == patient.patient_id
        assert row["patient_id"] in ("", ds.PatientID)
        assert str(ds.PatientName) == patient.name
        assert ds.StudyDate == study.exam_date.strftime("%Y%m%d")
        assert float(ds.FrameTime) == pytest.approx(1000 / CFG.fps, rel=1e-3)


def test_annotations_match_the_contract_and_the_frames(archive):
    n_nodules = 0
    for row in read_manifest(archive):
        frames = read_frames(archive.parent / row["video"])
        tracklets = json.loads((archive.parent / row["annotations"]).read_text())["tracklets"]
        assert tracklets
        for tracklet in tracklets:
            assert isinstance(tracklet["tracklet_id"], str)
            assert tracklet["nodule_id"].startswith("n")
            assert row["patient_id"] == "" or row["patient_id"] not in tracklet["nodule_id"]
            keys = tracklet["keyframes"]
            frame_ids = [k["frame"] for k in keys]
            assert frame_ids == sorted(set(frame_ids))
            assert frame_ids[0] >= 0 and frame_ids[-1] < len(frames)
            for key in keys:
                x0, y0, x1, y1 = key["box"]
                assert 0 <= x0 < x1 < CFG.width and 0 <= y0 < y1 < CFG.height
                # Hypoechoic: darker inside the box than in a ring around it.
                frame = frames[key["frame"]].astype(np.float64)
                m = max(4, (x1 - x0) // 3)
                outer = frame[max(0, y0 - m) : y1 + m + 1, max(0, x0 - m) : x1 + m + 1]
                inner = frame[y0 : y1 + 1, x0 : x1 + 1]
                ring = (outer.sum() - inner.sum()) / (outer.size - inner.size)
                assert inner.mean() < ring
            n_nodules += 1
    assert n_nodules


def test_text_band_and_view_survive_the_codec(archive):
    band, fov_top = int(np.floor(0.10 * CFG.height)), int(np.ceil(0.12 * CFG.height))
    for row in read_manifest(archive):
        frames = read_frames(archive.parent / row["video"])
        assert (frames[:, :band].max(axis=(1, 2)) >= 200).all()  # bright burned-in text
        assert frames[:, band:fov_top].max() <= 16  # black down to the view (codec noise)


def test_file_names_never_carry_identity(archive, plan):
    names = [p.name.lower() for p in archive.parent.rglob("*") if p.is_file()]
    for patient, _, _ in plan.values():
        family, given = patient.name.lower().split("^")
        for name in names:
            assert patient.patient_id.lower() not in name
            assert patient.patient_id[3:] not in name
            assert family not in name and given not in name


def test_labels_agree_with_the_plan(archive, plan):
    for row in read_manifest(archive):
        patient, _, _ = plan[Path(row["video"]).stem]
        tracklets = json.loads((archive.parent / row["annotations"]).read_text())["tracklets"]
        malignant = {n.nodule_id: n.malignant for n in patient.nodules}
        expected = any(malignant[t["nodule_id"]] for t in tracklets)
        assert row["label"] in (("malignant", "1") if expected else ("benign", "0"))


def test_same_seed_same_archive_whatever_the_workers(archive, tmp_path):
    again = write_archive(dataclasses.replace(CFG, workers=2), tmp_path / "again")
    assert again.read_bytes() == archive.read_bytes()
    for row in read_manifest(archive):
        ann = row["annotations"]
        assert (again.parent / ann).read_bytes() == (archive.parent / ann).read_bytes()
        a = read_frames(archive.parent / row["video"])
        b = read_frames(again.parent / row["video"])
        assert np.array_equal(a, b)


def test_another_seed_gives_another_archive(archive, tmp_path):
    small = dataclasses.replace(CFG, seed=7, patients=1, max_frames=8)
    other = write_archive(small, tmp_path / "other")
    assert other.read_bytes() != archive.read_bytes()
    first = read_manifest(archive)[0]
    assert read_manifest(other)[0]["patient_id"] != first["patient_id"]
