"""One exam's results as a PACS and an EHR read them: a DICOM Comprehensive 3D SR (TID 1500)
and a FHIR R4B collection Bundle.

Both carry, for each video of the exam, its calibrated P(malignant) and its reading at the
diagnosis bundle's threshold, and for each nodule the exam shows, its P(malignant) now
and at its first exam. A nodule is tracked across exams by a UID derived from its
``nodule_uid`` (:func:`tracking_uid`), the same in every exam's document, so a viewer links
it. The algorithm (the bundles' kinds and versions) is named per TID 4019 and as a FHIR
Device, and every document says it is not for diagnostic use.

Concepts without a standard code are in the private coding scheme ``99USVRAY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from usv_ray.export.sources import StudySource

SCHEME = "99USVRAY"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE: research software output, to be read by a clinician"


@dataclass(frozen=True)
class Results:
    """What the night concluded of one exam: its videos' diagnoses (video_id, prob, reading,
    threshold) and the nodules it shows (nodule_uid, malignancy_latest, malignancy_first,
    turned_suspicious, first_date: the source date of its first exam, or None)."""

    videos: pd.DataFrame
    nodules: pd.DataFrame
    diagnosis_version: str | None
    index_version: str | None


def tracking_uid(nodule_uid: str) -> str:
    """The DICOM Tracking UID of a nodule: a ``2.25`` UID from its ``nodule_uid`` alone, so
    every exam's SR gives the nodule the same one."""
    return _uid("usv_ray nodule", nodule_uid)


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _placeholder(study: StudySource) -> Any:
    """Patient and study attributes for an exam with no DICOM source (a video file): the
    SR opens a study of its own, its UID derived from the keyed study."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientID = study.patient_id or ""
    ds.PatientName = study.patient_name or ""
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID = _uid("usv_ray study", study.study_key)
    ds.StudyDate, ds.StudyTime, ds.StudyID = study.study_date or "", "", "USVRAY"
    ds.AccessionNumber, ds.ReferringPhysicianName = study.accession or "", ""
    ds.SeriesInstanceUID = _uid("usv_ray series", study.study_key)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = _uid("usv_ray instance", study.study_key)
    ds.Modality = "US"
    return ds


def structured_report(study: StudySource, results: Results, series_number: int = 900) -> Any:
    """The exam's DICOM SR (a pydicom Dataset): one measurement group per nodule, with its
    tracking identifier and UID, P(malignant) as a measurement and the reading as a
    qualitative evaluation; each video's reading as a group of its own. It references the
    exam's source instances (its DICOM videos) in their study; an exam of video files
    only gets a study of its own, with the patient's ID and no reference."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(
        name="usv_ray",
        version=f"diagnosis {results.diagnosis_version}; index {results.index_version}",
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("usv_ray device"),
            name="usv_ray",
            model_name=str(results.diagnosis_version),
        ),
    )
    groups = []

    def group(uid: str, label: str, prob: float, reading: str, finding: Any) -> Any:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=label),
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(
                    name=_concept("P-MALIGNANT", "Probability of malignancy"),
                    value=round(100.0 * float(prob), 2),
                    unit=codes.UCUM.Percent,
                    algorithm_id=algorithm,
                )
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=_concept("READING", "Reading at the operating point"),
                    value=_concept(reading.upper(), reading.capitalize()),
                )
            ],
        )

    nodule, threshold = _concept("NODULE", "Breast nodule"), _threshold(results)
    for row in results.nodules.itertuples(index=False):
        prob = row.malignancy_latest
        if pd.isna(prob):
            continue
        reading = "malignant" if prob >= threshold else "benign"
        label = f"nodule {row.nodule_uid[:12]}"
        groups.append(group(tracking_uid(row.nodule_uid), label, prob, reading, nodule))
    video = _concept("VIDEO", "Ultrasound video")
    for row in results.videos.itertuples(index=False):
        uid = _uid("usv_ray video", row.video_id)
        groups.append(group(uid, f"video {row.video_id[:12]}", row.prob, row.reading, video))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_concept("US-BREAST-VIDEO-AI", "Breast ultrasound video analysis"),
        imaging_measurements=groups,
    )
    evidence = [_complete(ds) for ds in study.headers] or [_placeholder(study)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=_uid("usv_ray sr", study.study_key),
        series_number=series_number,
        sop_instance_uid=_uid("usv_ray sr", study.study_key, _digest(results)),
        instance_number=1,
        manufacturer="usv_ray",
        record_evidence=bool(study.headers),
    )
    if not study.headers:  # nothing to reference: not the placeholder's made-up instance
        del sr.CurrentRequestedProcedureEvidenceSequence
    scheme = Dataset()  # the private coding scheme, declared as DICOM asks
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "usv_ray concepts"
    scheme.CodingSchemeResponsibleOrganization = "usv_ray"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SeriesDescription = "usv_ray nodule index and diagnosis (NOT FOR DIAGNOSTIC USE)"
    return sr


# the patient and study attributes an SR copies from its evidence (type 2: present, maybe empty)
TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _complete(header: Any) -> Any:
    """A source header with the type-2 attributes a scanner may leave out, empty."""
    for name in TYPE2:
        if name not in header:
            setattr(header, name, "")
    return header


def _digest(results: Results) -> str:
    """What the document says, hashed: a rerun that says the same keeps the SR's instance
    UID, and one that says more (a later night's P) gets a new instance."""
    import hashlib

    text = "|".join(
        [
            str(results.diagnosis_version),
            str(results.index_version),
            results.videos[["video_id", "prob", "reading"]].to_json(orient="values"),
            results.nodules[["nodule_uid", "malignancy_latest"]].to_json(orient="values"),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _threshold(results: Results) -> float:
    thresholds = results.videos["threshold"].dropna()
    return float(thresholds.iloc[0]) if len(thresholds) else 0.5


def iso_date(yyyymmdd: str | None) -> str | None:
    """A DICOM date (YYYYMMDD) as FHIR and people write it (YYYY-MM-DD); None if it is not
    one."""
    if not yyyymmdd or len(yyyymmdd) < 8 or not yyyymmdd[:8].isdigit():
        return None
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:8]}"


def fhir_bundle(study: StudySource, results: Results) -> dict:
    """The exam as a FHIR R4B collection Bundle: a DiagnosticReport, an Observation per video
    and per nodule, and a Device for the algorithm; checked by fhir.resources (a model that
    does not validate raises)."""
    from fhir.resources.R4B.bundle import Bundle

    base = f"urn:uuid:{_uuid(study.study_key)}"
    subject = {"identifier": {"value": study.patient_id or ""}}
    when = iso_date(study.study_date)
    device_url = f"urn:uuid:{_uuid('device', str(results.diagnosis_version))}"
    device = {
        "resourceType": "Device",
        "deviceName": [{"name": "usv_ray", "type": "manufacturer-name"}],
        "version": [
            {"type": {"text": "diagnosis bundle"}, "value": str(results.diagnosis_version)},
            {"type": {"text": "nodule index"}, "value": str(results.index_version)},
        ],
        "note": [{"text": NOT_FOR_DIAGNOSIS}],
    }
    entries = [{"fullUrl": device_url, "resource": device}]
    observations = []

    def observation(url: str, system: str, value: str, text: str, prob: float, note: str) -> None:
        resource = {
            "resourceType": "Observation",
            "status": "preliminary",
            "identifier": [{"system": system, "value": value}],
            "code": {"coding": [{"system": f"urn:{SCHEME}", "code": "P-MALIGNANT"}], "text": text},
            "subject": subject,
            "device": {"reference": device_url},
            "valueQuantity": {
                "value": round(100.0 * float(prob), 2),
                "unit": "%",
                "system": "http://unitsofmeasure.org",
                "code": "%",
            },
            "note": [{"text": f"{note}. {NOT_FOR_DIAGNOSIS}"}],
        }
        if when:
            resource["effectiveDateTime"] = when
        entries.append({"fullUrl": url, "resource": resource})
        observations.append({"reference": url})

    threshold = _threshold(results)
    for row in results.nodules.itertuples(index=False):
        if pd.isna(row.malignancy_latest):
            continue
        first = f", first seen in the exam of {row.first_date}" if row.first_date else ""
        reading = "malignant" if row.malignancy_latest >= threshold else "benign"
        observation(
            f"urn:uuid:{_uuid('nodule', row.nodule_uid, study.study_key)}",
            "urn:usv-ray:nodule_uid",
            row.nodule_uid,
            "Probability of malignancy of a breast nodule",
            row.malignancy_latest,
            f"reads {reading} at the operating point {100 * threshold:.1f}%{first}",
        )
    for row in results.videos.itertuples(index=False):
        observation(
            f"urn:uuid:{_uuid('video', row.video_id)}",
            "urn:usv-ray:video_id",
            row.video_id,
            "Probability of malignancy of a breast ultrasound video",
            row.prob,
            f"reads {row.reading} at the operating point {100 * threshold:.1f}%",
        )
    report = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {"text": "Breast ultrasound video analysis (usv_ray)"},
        "subject": subject,
        "result": observations,
        "conclusion": NOT_FOR_DIAGNOSIS,
    }
    if study.study_uid:
        report["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}]
    if when:
        report["effectiveDateTime"] = when
    entries.insert(0, {"fullUrl": base, "resource": report})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


def _uuid(*parts: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "usv_ray:" + "/".join(parts)))


def _uid(*parts: str) -> str:
    """A DICOM UID that is a function of ``parts``: ``2.25`` and a name-based UUID (pydicom's
    ``generate_uid`` takes no entropy without an organisation's own prefix)."""
    import uuid

    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'usv_ray:' + '/'.join(parts)).int}"
