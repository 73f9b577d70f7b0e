"""One exam's documents: a DICOM SR that a viewer files with its source study and links
nodules across exams by, and a FHIR Bundle that validates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom

from usv_ray.export.documents import Results, fhir_bundle, structured_report, tracking_uid
from usv_ray.export.sources import StudySource


def _source_header(tmp_path: Path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
    from ingest_inputs import clip_frames, write_dicom

    path = write_dicom(tmp_path / "cine.dcm", clip_frames(2, 32, 32), "MRN-42")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    header.SeriesInstanceUID = pydicom.uid.generate_uid()
    return header


def _results(prob: float = 0.8) -> Results:
    videos = pd.DataFrame(
        {"video_id": ["v" * 16], "prob": [0.3], "reading": ["malignant"], "threshold": [0.27]}
    )
    nodules = pd.DataFrame(
        {
            "nodule_uid": ["a1b2c3d4e5f60718"],
            "malignancy_latest": [prob],
            "malignancy_first": [0.2],
            "turned_suspicious": [True],
            "first_date": ["2024-03-01"],
        }
    )
    return Results(videos, nodules, "diagnosis-abc", "CM x tau 0.01")


def _groups(ds) -> dict[str, tuple[str, float]]:
    """Tracking identifier -> (tracking UID, P) of each measurement group."""
    found = {}
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            by_code = {c.ConceptNameCodeSequence[0].CodeValue: c for c in group.ContentSequence}
            value = by_code["P-MALIGNANT"].MeasuredValueSequence[0].NumericValue
            found[by_code["112039"].TextValue] = (by_code["112040"].UID, float(value))
    return found


def test_a_nodule_keeps_one_tracking_uid_of_its_own():
    uid = tracking_uid("a1b2c3d4e5f60718")
    assert uid == tracking_uid("a1b2c3d4e5f60718") != tracking_uid("a1b2c3d4e5f60719")
    assert pydicom.uid.UID(uid).is_valid and uid.startswith("2.25.")


def test_the_sr_files_with_its_source_study_and_reads_back(tmp_path):
    import highdicom as hd

    header = _source_header(tmp_path)
    study = StudySource("s" * 64, "p" * 64, "MRN-42", "Doe^Jane", header.StudyInstanceUID)
    study.headers.append(header)
    path = tmp_path / "sr.dcm"
    structured_report(study, _results()).save_as(path, enforce_file_format=True)
    sr = hd.sr.srread(path)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == header.StudyInstanceUID and ds.PatientID == "MRN-42"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    groups = _groups(ds)
    assert groups["nodule a1b2c3d4e5f6"] == (tracking_uid("a1b2c3d4e5f60718"), 80.0)
    assert len(groups) == 2  # the nodule and the video
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def test_an_exam_of_video_files_gets_a_study_of_its_own_without_references(tmp_path):
    study = StudySource("s" * 64, "p" * 64, "MRN-42")
    first = structured_report(study, _results())
    assert "CurrentRequestedProcedureEvidenceSequence" not in first
    again, later = structured_report(study, _results()), structured_report(study, _results(0.9))
    assert first.StudyInstanceUID == again.StudyInstanceUID == later.StudyInstanceUID
    assert first.SOPInstanceUID == again.SOPInstanceUID != later.SOPInstanceUID  # new content
    first.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "sr.dcm").PatientID == "MRN-42"


def test_the_fhir_bundle_validates_and_says_what_it_is():
    from fhir.resources.R4B.bundle import Bundle

    study = StudySource("s" * 64, "p" * 64, "MRN-42", study_uid="1.2.3", study_date="20240501")
    bundle = fhir_bundle(study, _results())
    Bundle.model_validate(bundle)  # raises where it does not validate
    kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert kinds == ["DiagnosticReport", "Device", "Observation", "Observation"]
    report = bundle["entry"][0]["resource"]
    assert report["subject"]["identifier"]["value"] == "MRN-42"
    assert report["effectiveDateTime"] == "2024-05-01"
    assert report["identifier"][0]["value"] == "urn:oid:1.2.3"
    nodule = bundle["entry"][2]["resource"]
    assert nodule["identifier"][0]["value"] == "a1b2c3d4e5f60718"
    assert nodule["valueQuantity"]["value"] == 80.0
    assert "first seen in the exam of 2024-03-01" in nodule["note"][0]["text"]
    assert "NOT FOR DIAGNOSTIC USE" in report["conclusion"]


def test_the_sources_are_re_read_from_the_manifest_and_headers(tmp_path):
    from usv_ray.export.sources import study_sources
    from usv_ray.privacy import keyed_hash

    key = b"k" * 16
    header = _source_header(tmp_path)  # writes cine.dcm: MRN-42, a StudyInstanceUID, no date
    header.StudyDate = "20240102"
    header.save_as(tmp_path / "cine.dcm")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 200)  # not DICOM
    (tmp_path / "manifest.csv").write_text(
        "video,patient_id,study_id\nclip.mp4,MRN-7,2023-06-30\ncine.dcm,,\nelse.mp4,MRN-8,x\n"
    )
    videos = pd.DataFrame(
        {
            "video_id": [keyed_hash(key, "video", v) for v in ("clip.mp4", "cine.dcm")],
            "patient_key": ["p7", "p42"],
            "study_key": ["s-clip", "s-cine"],
        }
    )
    sources = study_sources([tmp_path / "manifest.csv"], key, videos)
    assert set(sources) == {"s-clip", "s-cine"}  # else.mp4 was never ingested
    clip, cine = sources["s-clip"], sources["s-cine"]
    assert (clip.patient_id, clip.study_date, clip.headers) == ("MRN-7", "20230630", [])
    assert (cine.patient_id, cine.study_date) == ("MRN-42", "20240102")
    assert cine.study_uid == header.StudyInstanceUID and len(cine.headers) == 1
