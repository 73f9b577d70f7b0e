import pytest

from usv_ray.config import IngestConfig
from usv_ray.ingest.manifest import ManifestError, parse_label, read_manifest, redact
from usv_ray.privacy import patient_key

KEY = b"test-key-0123456789"


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("benign", 0),
        ("Malignant", 1),
        (" 0 ", 0),
        ("1", 1),
        ("", -1),
        (None, -1),
        ("malignnat", None),
        ("2", None),
    ],
)
def test_parse_label(raw, label):
    assert parse_label(raw) == label


def _manifest(tmp_path, text):
    (tmp_path / "v").mkdir(exist_ok=True)
    for name in ("a.mp4", "b.mp4", "MRN777_c.mp4", "d.dcm"):
        (tmp_path / "v" / name).write_bytes(b"x")
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_rows_become_tasks_and_errors(tmp_path):
    path = _manifest(
        tmp_path,
        "video,patient_id,study_id,label,annotations\n"
        "v/a.mp4,P1,2024-01-02,benign,a.json\n"
        "v/b.mp4,P1,2024-01-02,malignnat,\n"
        "v/a.mp4,P1,2024-01-02,benign,\n"  # duplicate of line 2
        "v/missing.mp4,P2,,1,\n"
        "v/MRN777_c.mp4,MRN777,,0,\n"
        ",P3,,0,\n"
        "v/d.dcm,,S9,,\n",
    )
    tasks, row_errors, rejected = read_manifest(path, KEY, IngestConfig())
    assert [t.source for t in tasks] == ["v/a.mp4", "v/<patient>_c.mp4", "v/d.dcm"]
    a, c, d = tasks
    assert a.patient_key == patient_key(KEY, "P1") and a.label == 0 and a.study_id_hash
    assert a.annotations == str(tmp_path / "a.json")
    assert c.label == 0 and "MRN777" not in c.source and "MRN777" not in c.video_id
    assert d.patient_key is None and d.study_id_raw == "S9" and d.label == -1
    assert sorted(e["kind"] for e in row_errors) == ["duplicate_row", "no_video"]
    assert {kind for _, kind, _ in rejected} == {"bad_label", "missing_file"}
    for task in tasks:
        assert "P1" not in repr(task.patient_key)


def test_fingerprint_tracks_input_and_settings(tmp_path):
    path = _manifest(tmp_path, "video,patient_id,label\nv/a.mp4,P1,benign\n")
    (first,), _, _ = read_manifest(path, KEY, IngestConfig())
    (same,), _, _ = read_manifest(path, KEY, IngestConfig())
    (other,), _, _ = read_manifest(path, KEY, IngestConfig(n_frames=12))
    assert first.fingerprint == same.fingerprint != other.fingerprint
    how = IngestConfig(workers=8, num_cpus_per_video=2, decode_threads=4, rows_per_row_group=8)
    (elsewhere,), _, _ = read_manifest(path, KEY, how)  # how it runs redoes nothing
    assert elsewhere.fingerprint == first.fingerprint
    (tmp_path / "v" / "a.mp4").write_bytes(b"changed content")
    (changed,), _, _ = read_manifest(path, KEY, IngestConfig())
    assert changed.fingerprint != first.fingerprint and changed.video_id == first.video_id


def test_missing_manifest_or_column(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.csv", KEY, IngestConfig())
    path = tmp_path / "m.csv"
    path.write_text("file,patient_id\nx.mp4,P\n")
    with pytest.raises(ManifestError, match="missing column 'video'"):
        read_manifest(path, KEY, IngestConfig())


def test_excel_bom_and_absolute_paths(tmp_path):
    video = tmp_path / "abs.mp4"
    video.write_bytes(b"x")
    path = tmp_path / "m.csv"
    path.write_text(f"\ufeffvideo,patient_id\n{video},P\n", encoding="utf-8")
    (task,), _, _ = read_manifest(path, KEY, IngestConfig())
    assert task.path == str(video)


def test_redact():
    assert redact("scans/MRN1/MRN1_a.mp4", "MRN1") == "scans/<patient>/<patient>_a.mp4"
    assert redact("a.mp4", None) == "a.mp4" and redact("a.mp4", " ") == "a.mp4"


def test_the_annotations_column_takes_a_file_or_the_json_itself(tmp_path):
    import csv
    import json

    inline = json.dumps({"tracklets": [{"tracklet_id": "t1", "nodule_id": "n1", "keyframes": []}]})
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as handle:  # a CSV quotes the JSON's commas and quotes
        writer = csv.writer(handle)
        writer.writerows(
            [
                ["video", "patient_id", "annotations"],
                ["v/a.mp4", "P1", "a.json"],
                ["v/b.mp4", "P1", inline],
            ]
        )
    tasks, _, _ = read_manifest(path, KEY, IngestConfig())
    assert tasks[0].annotations == str(tmp_path / "a.json")
    assert tasks[1].annotations == inline
    edited = inline.replace("n1", "n2")  # other annotations: other work
    path.write_text(path.read_text().replace("n1", "n2"))
    again, _, _ = read_manifest(path, KEY, IngestConfig())
    assert again[1].annotations == edited and again[1].fingerprint != tasks[1].fingerprint
    assert again[0].fingerprint == tasks[0].fingerprint
