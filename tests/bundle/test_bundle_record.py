"""Model bundles: written whole, read back anywhere, and refused with a reason when they
cannot be trusted (unknown format, another kind, a missing or damaged file, data made
with other ingest settings)."""

import json
import os
import shutil

import pytest

from usv_ray.bundle import BUNDLE_FILE, BundleError, load
from usv_ray.bundle import read as read_bundle
from usv_ray.bundle import write as write_bundle
from usv_ray.bundle.record import Bundle
from usv_ray.config import IngestConfig
from usv_ray.layout import IngestFolder, LayoutError


@pytest.fixture
def weights(tmp_path):
    run = tmp_path / "runs" / "models"
    run.mkdir(parents=True)
    (run / "a.pt").write_bytes(b"weights of a" * 100)
    (run / "b.pt").write_bytes(b"weights of b")
    return {"a.pt": run / "a.pt", "b.pt": run / "b.pt"}


def test_a_bundle_round_trips_and_links_its_files(tmp_path, weights):
    record = write_bundle(
        tmp_path / "bundle", "demo", weights, {"note": 1}, versioned=("note",)
    ).record
    assert record["format"] == 2 and record["kind"] == "demo"
    assert record["version"].startswith("demo-") and record["usv_ray"]
    assert record["ingest"] == {} and record["metrics"] == {}  # every kind's record has them
    read = read_bundle(tmp_path, "demo")  # the stage folder holding bundle/
    folder = read.folder
    assert folder == tmp_path / "bundle" and read.record == record
    # hard links, not copies: a bundle of 100 MB models costs no disk
    assert os.path.samefile(folder / "a.pt", weights["a.pt"])
    # the same files and meta: the same version; another versioned value: another one
    again = write_bundle(tmp_path / "bundle", "demo", weights, {"note": 1}, versioned=("note",))
    assert again.version == record["version"]
    other = write_bundle(tmp_path / "other", "demo", weights, {"note": 2}, versioned=("note",))
    assert other.version != record["version"]


def test_a_copied_bundle_works_without_its_training_folder(tmp_path, weights):
    write_bundle(tmp_path / "bundle", "demo", weights, {})
    shutil.copytree(tmp_path / "bundle", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "runs")
    copied = read_bundle(tmp_path / "elsewhere", "demo")
    assert sorted(copied.files) == ["a.pt", "b.pt"] and copied.folder.name == "elsewhere"


def test_files_a_new_bundle_does_not_name_are_removed(tmp_path, weights):
    write_bundle(tmp_path / "bundle", "demo", weights, {})
    write_bundle(tmp_path / "bundle", "demo", {"a.pt": weights["a.pt"]}, {})
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["a.pt", BUNDLE_FILE]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "b.pt").unlink(), "the weights file b.pt is missing"),
        (lambda f: (f / "b.pt").write_bytes(b"weights of c"), "b.pt is not the one"),
        (lambda f: (f / "b.pt").write_bytes(b"short"), "b.pt is not the one"),
        (lambda f: _edit(f, format=99), "format 99"),
        (lambda f: _edit(f, kind="reid"), "not a 'demo' one"),
        (lambda f: (f / BUNDLE_FILE).write_text("{"), "not readable"),
        (lambda f: _edit(f, files=None), "lists no weights files"),
    ],
)
def test_a_damaged_bundle_is_a_clear_error(tmp_path, weights, damage, message):
    write_bundle(tmp_path / "bundle", "demo", weights, {})
    folder = tmp_path / "copy"
    shutil.copytree(tmp_path / "bundle", folder)  # copies: damage them, not the run's files
    damage(folder)
    with pytest.raises(BundleError, match=message):
        read_bundle(folder, "demo")


def _edit(folder, **fields):
    record = json.loads((folder / BUNDLE_FILE).read_text())
    (folder / BUNDLE_FILE).write_text(json.dumps({**record, **fields}))


def test_no_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        read_bundle(tmp_path, "demo")


def test_data_made_with_other_settings_is_refused_naming_them(tmp_path):
    IngestFolder(tmp_path).claim(IngestConfig(frame_size=64, n_frames=12))
    needs = Bundle(tmp_path / "bundle", {"kind": "demo", "ingest": {"frame_size": 64}})
    needs.check_data(tmp_path)
    wrong = Bundle(tmp_path / "bundle", {"kind": "demo", "ingest": {"frame_size": 224}})
    with pytest.raises(BundleError, match=r"ingest\.frame_size: 64 there, 224 for the model"):
        wrong.check_data(tmp_path)
    with pytest.raises(LayoutError, match=r"has no ingest\.json"):
        needs.check_data(tmp_path / "elsewhere")
    (tmp_path / "ingest.json").write_text("{}")
    with pytest.raises(LayoutError, match=r"ingest\.json is damaged"):
        needs.check_data(tmp_path)


def test_one_load_for_every_kind_and_a_clear_error_for_others(tmp_path, weights):
    write_bundle(tmp_path / "bundle", "demo", weights, {})
    with pytest.raises(BundleError, match="'demo' bundle, which this usv_ray cannot load"):
        load(tmp_path)
    with pytest.raises(BundleError, match="not a 'reid' one"):
        load(tmp_path, "reid")
