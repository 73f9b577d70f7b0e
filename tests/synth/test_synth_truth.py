"""The hidden truth file: schema, agreement with manifests and annotations, its reader."""

import json
from pathlib import Path

import pytest
from synth_archives import FULL, read_frames, read_manifest

from usv_ray.synth import load_truth, nodule_table
from usv_ray.synth.plan import plan_archive, plan_night
from usv_ray.synth.truth import APPEARANCE_COLUMNS, BOX_COLUMNS, VIDEO_COLUMNS, TruthError

VIDEO_KEYS = {
    "video", "manifest", "batch", "patient_id", "study_id", "exam_date", "label",
    "annotated", "n_frames", "width", "height", "nodules",
}  # fmt: skip


@pytest.fixture(scope="module")
def truth(full_archive) -> dict:
    return json.loads((full_archive.parent / "truth.json").read_text())


def manifest_rows(full_archive: Path) -> list[tuple[str, dict]]:
    """Every row of both manifests with the manifest's path relative to the archive."""
    night = full_archive.parent / "night" / "manifest.csv"
    return [("manifest.csv", r) for r in read_manifest(full_archive)] + [
        ("night/manifest.csv", r) for r in read_manifest(night)
    ]


def test_truth_file_is_compact_and_covers_both_manifests(full_archive, truth):
    text = (full_archive.parent / "truth.json").read_text()
    assert text.count("\n") == 1 and ": " not in text and ", " not in text
    assert truth["format"] == 1 and truth["seed"] == FULL.seed
    rows = manifest_rows(full_archive)
    assert [(v["manifest"], v["video"]) for v in truth["videos"]] == [
        (m, r["video"]) for m, r in rows
    ]
    for video in truth["videos"]:
        assert set(video) == VIDEO_KEYS
        assert video["batch"] == ("archive" if video["manifest"] == "manifest.csv" else "night")
        assert video["label"] in ("benign", "malignant")
        assert (video["width"], video["height"]) == (FULL.width, FULL.height)
        for nodule in video["nodules"]:
            assert set(nodule) == {"nodule_id", "malignant", "frames", "boxes"}
            assert nodule["frames"] == sorted(set(nodule["frames"]))
            assert nodule["frames"][0] >= 0 and nodule["frames"][-1] < video["n_frames"]
            assert len(nodule["boxes"]) == len(nodule["frames"])
            for x0, y0, x1, y1 in nodule["boxes"]:
                assert 0 <= x0 < x1 < FULL.width and 0 <= y0 < y1 < FULL.height


def test_truth_agrees_with_the_manifests(full_archive, truth):
    words = {"0": "benign", "1": "malignant"}
    for video, (_, row) in zip(truth["videos"], manifest_rows(full_archive), strict=True):
        assert video["annotated"] == bool(row["annotations"])
        assert row["patient_id"] in ("", video["patient_id"])  # "": in the DICOM tag
        assert row["study_id"] == video["study_id"]
        if video["batch"] == "archive":
            assert words.get(row["label"], row["label"]) == video["label"]
            malignant = any(n["malignant"] for n in video["nodules"])
            assert video["label"] == ("malignant" if malignant else "benign")
        else:
            assert not video["annotated"] and row["label"] == ""


def test_truth_boxes_are_the_annotations_at_their_key_frames(full_archive, truth):
    checked = 0
    for video in truth["videos"]:
        if not video["annotated"]:
            continue
        row = next(r for r in read_manifest(full_archive) if r["video"] == video["video"])
        tracklets = json.loads((full_archive.parent / row["annotations"]).read_text())
        nodules = {n["nodule_id"]: n for n in video["nodules"]}
        spanned: dict[str, set[int]] = {n: set() for n in nodules}
        for tracklet in tracklets["tracklets"]:
            nodule = nodules[tracklet["nodule_id"]]
            boxes = dict(zip(nodule["frames"], map(list, nodule["boxes"]), strict=True))
            keys = tracklet["keyframes"]
            for key in keys:
                assert key["frame"] in boxes  # every key frame is a visible frame...
                assert key["box"] == boxes[key["frame"]]  # ...with the same box
                checked += 1
            spanned[tracklet["nodule_id"]] |= set(range(keys[0]["frame"], keys[-1]["frame"] + 1))
        # The tracklets span exactly the visible frames: one per continuous run.
        assert spanned == {n: set(v["frames"]) for n, v in nodules.items()}
    assert checked


def test_truth_describes_the_written_videos(full_archive, truth):
    for video in truth["videos"]:
        folder = full_archive.parent / Path(video["manifest"]).parent
        frames = read_frames(folder / video["video"])
        assert frames.shape == (video["n_frames"], video["height"], video["width"])


def test_annotated_fraction_changes_only_the_annotations(night_archive, full_archive, truth):
    full, night = read_manifest(full_archive), read_manifest(night_archive)
    missing = [r for r in full if not r["annotations"]]
    assert len(missing) == len(full) - round(FULL.annotated_fraction * len(full))
    assert 0 < len(missing) < len(full)
    for a, b in zip(full, night, strict=True):
        assert {k: v for k, v in a.items() if k != "annotations"} == {
            k: v for k, v in b.items() if k != "annotations"
        }
        if a["annotations"]:
            assert a["annotations"] == b["annotations"]
            assert (full_archive.parent / a["annotations"]).read_bytes() == (
                night_archive.parent / b["annotations"]
            ).read_bytes()
        else:
            assert not (full_archive.parent / b["annotations"]).exists()
        assert (full_archive.parent / a["video"]).read_bytes() == (
            night_archive.parent / b["video"]
        ).read_bytes()
    # The night batch and the truth (but its annotated flags) are the same too.
    night_manifest = Path("night") / "manifest.csv"
    assert (full_archive.parent / night_manifest).read_bytes() == (
        night_archive.parent / night_manifest
    ).read_bytes()
    other = json.loads((night_archive.parent / "truth.json").read_text())
    strip = [{k: v for k, v in video.items() if k != "annotated"} for video in truth["videos"]]
    assert strip == [
        {k: v for k, v in video.items() if k != "annotated"} for video in other["videos"]
    ]


def test_load_truth_gives_tables(full_archive, truth):
    loaded = load_truth(full_archive.parent)  # the folder or the file itself
    assert load_truth(full_archive.parent / "truth.json").videos.equals(loaded.videos)
    assert loaded.seed == FULL.seed
    assert list(loaded.videos.columns) == list(VIDEO_COLUMNS)
    assert list(loaded.appearances.columns) == list(APPEARANCE_COLUMNS)
    assert list(loaded.boxes.columns) == list(BOX_COLUMNS)
    assert len(loaded.videos) == len(truth["videos"])
    assert set(loaded.videos["batch"]) == {"archive", "night"}
    assert loaded.videos["exam_date"].dtype.kind == "M"
    n_boxes = sum(len(n["frames"]) for v in truth["videos"] for n in v["nodules"])
    assert len(loaded.boxes) == n_boxes
    assert (loaded.boxes["x1"] > loaded.boxes["x0"]).all()
    assert loaded.videos["n_nodules"].sum() == len(loaded.appearances)


def test_nodule_table_lists_each_shown_nodule_once(full_archive):
    table = nodule_table(load_truth(full_archive.parent))
    assert list(table.columns) == ["patient_id", "nodule_id", "malignant"]
    assert not table.duplicated(["patient_id", "nodule_id"]).any()
    archive = plan_archive(FULL)
    patients = archive + [e.patient for e in plan_night(FULL, archive)]
    malignant = {(p.patient_id, n.nodule_id): n.malignant for p in patients for n in p.nodules}
    for row in table.itertuples():
        assert malignant[(row.patient_id, row.nodule_id)] == row.malignant


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ('{"format": 2, "seed": 0, "videos": []}', "format 2"),
        ('{"seed": 0}', "format None"),
        ("not json", "not a truth file"),
    ],
)
def test_load_truth_errors_say_what_is_wrong(tmp_path, content, match):
    path = tmp_path / "truth.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TruthError, match=match):
        load_truth(path)


def test_empty_truth_loads_to_empty_tables(tmp_path):
    (tmp_path / "truth.json").write_text('{"format": 1, "seed": 3, "videos": []}')
    loaded = load_truth(tmp_path)
    assert loaded.seed == 3 and loaded.videos.empty and loaded.boxes.empty
    assert nodule_table(loaded).empty
