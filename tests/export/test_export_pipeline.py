"""``usv-ray export`` on the demo's night: every exam's SR reads back, a nodule keeps one
tracking UID in every exam that shows it, the FHIR validates, and no file name, summary,
log line or de-identified table gains a source identifier."""

from __future__ import annotations

import csv
import hashlib
import json
import logging

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _digests(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def test_the_nights_export(demo_run, tmp_path, caplog):
    import highdicom as hd
    import pyarrow.parquet as pq
    import pydicom
    from fhir.resources.R4B.bundle import Bundle

    from usv_ray.cli import main
    from usv_ray.export.documents import tracking_uid

    _, root = demo_run
    manifests = [root / "archive" / "manifest.csv", root / "archive" / "night" / "manifest.csv"]
    raw_ids = set()  # the manifests' patient IDs, and the DICOM headers' where they are empty
    for manifest in manifests:
        with manifest.open() as handle:
            for row in csv.DictReader(handle):
                video = manifest.parent / row["video"]
                raw_ids.add(row["patient_id"] or str(pydicom.dcmread(video).PatientID))
    before = _digests(root / "data") | _digests(root / "predict") | _digests(root / "index")
    out = tmp_path / "export"
    argv = ["export", "--config", "demo", "--set", "privacy.dev_key=true"]
    argv += ["--data", str(root / "data"), "--predict", str(root / "predict")]
    argv += ["--index", str(root / "index"), "--out", str(out)]
    argv += [arg for m in manifests for arg in ("--manifest", str(m))]
    with caplog.at_level(logging.DEBUG):
        assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    srs, bundles = sorted((out / "sr").glob("*.dcm")), sorted((out / "fhir").glob("*.json"))
    assert summary["studies"] == len(srs) == len(bundles) > 0
    assert summary["documents"] == 2 * len(srs)

    nodules = pq.read_table(root / "index" / "nodules.parquet").to_pandas()
    shows = nodules.explode("study_keys").groupby("nodule_uid").size()
    seen: dict[str, set[str]] = {}
    exams: dict[str, int] = {}  # SRs that list each nodule
    for path in srs:
        hd.sr.srread(path)  # highdicom reads it back
        ds = pydicom.dcmread(path)
        assert ds.PatientID in raw_ids  # filed under the patient, inside the hospital
        for item in ds.ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeValue != "126010":
                continue
            for group in item.ContentSequence:
                codes = {c.ConceptNameCodeSequence[0].CodeValue: c for c in group.ContentSequence}
                label = codes["112039"].TextValue
                seen.setdefault(label, set()).add(codes["112040"].UID)
                exams[label] = exams.get(label, 0) + 1
    for uid in shows.index:
        tracked = seen.get(f"nodule {uid[:12]}")
        if tracked is not None:  # a nodule with a P: one UID, in every exam that shows it
            assert tracked == {tracking_uid(uid)}
    followed = [uid for uid, n in shows.items() if n > 1 and f"nodule {uid[:12]}" in seen]
    assert followed and all(exams[f"nodule {uid[:12]}"] > 1 for uid in followed)
    for path in bundles:
        Bundle.model_validate(json.loads(path.read_text()))

    # privacy: names of files, the summary and the log carry no raw ID; the tables are as before
    names = " ".join(p.name for p in out.rglob("*"))
    logged = caplog.text + (out / "summary.json").read_text()
    for raw in raw_ids:
        assert raw not in names and raw not in logged
    assert "2.25." not in caplog.text  # no source or derived UID in the log
    after = _digests(root / "data") | _digests(root / "predict") | _digests(root / "index")
    assert after == before

    # a rerun says the same: the same documents, the same instance UIDs
    first = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in srs}
    assert main(argv) == 0
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in srs} == first
