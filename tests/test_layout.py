"""The data-folder layer: an ingest folder keeps one set of frame settings, every stage's
folder fingerprint leaves out how it runs and keeps what changes its output, and the
folders' reference in docs/ is the one the layer draws."""

import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from usv_ray.config import (
    LATER,
    RUNTIME,
    ClassifyConfig,
    DetectConfig,
    IngestConfig,
    ReidConfig,
    TuneConfig,
)
from usv_ray.io import FolderClaimed, file_record, write_json
from usv_ray.layout import DamagedDataError, IngestFolder, StageRun, fingerprint
from usv_ray.layout.reference import ENTRIES, reference

DOCS = Path(__file__).parents[1] / "docs" / "folders.md"


def test_an_ingest_folder_keeps_one_set_of_frame_settings(tmp_path):
    IngestFolder(tmp_path).claim(IngestConfig(frame_size=64))
    IngestFolder(tmp_path).claim(IngestConfig(frame_size=64, workers=3))  # not content
    assert IngestFolder(tmp_path).settings()["frame_size"] == 64
    with pytest.raises(FolderClaimed, match=r"ingest.frame_size=224 \(the folder has 64\)"):
        IngestFolder(tmp_path).claim(IngestConfig(frame_size=224))


def test_a_video_has_its_shards_where_the_layer_says(tmp_path):
    data = IngestFolder(tmp_path)
    assert data.frames("v1") == tmp_path / "frames" / "v1.parquet"
    assert data.tracklets("v1") == tmp_path / "tracklets" / "v1.parquet"
    with pytest.raises(FileNotFoundError, match="run `usv-ray ingest`"):
        data.read_videos()


def test_a_shard_is_trusted_only_as_the_journal_recorded_it(tmp_path):
    data = IngestFolder(tmp_path)
    for name in ("a", "b"):
        data.frames(name).parent.mkdir(exist_ok=True)
        data.frames(name).write_bytes(b"frames of " + name.encode())
        entry = {"shards": {"frames": file_record(data.frames(name)), "tracklets": None}}
        write_json(entry, data.journal(name))
    assert data.frame_shards(["b", "a"]) == [str(data.frames("a")), str(data.frames("b"))]

    data.frames("a").write_bytes(b"frames of A")  # same size, other bytes
    assert "damaged" in data.shard_problem("frames", "a")
    data.frames("b").unlink()
    assert data.shard_problem("frames", "b") == "its frames shard is missing"
    with pytest.raises(DamagedDataError, match=r"2 shards .* \(a: its frames shard is damaged"):
        data.frame_shards(["a", "b"])
    # a rerun of ingest trusts a shard of the recorded size and time without hashing it
    os.utime(data.frames("a"), ns=(0, data.journal_entry("a")["shards"]["frames"]["mtime_ns"]))
    assert data.shard_problem("frames", "a", trust_unchanged=True) is None
    assert data.shard_problem("frames", "a") is not None


def _fields(section, mark=None):
    """The fields of a config section: those with the metadata ``mark`` (None: neither)."""
    for f in dataclasses.fields(section):
        marked = f.metadata.get(RUNTIME) or f.metadata.get(LATER)
        if (mark is None and not marked) or (mark is not None and f.metadata.get(mark)):
            yield f


def _changed(section, field):
    value = getattr(section, field.name)
    if isinstance(value, bool):
        new = not value
    elif isinstance(value, int | float):
        new = value + 1
    elif value is None:
        new = "x"
    elif dataclasses.is_dataclass(value):
        first = dataclasses.fields(value)[0]
        new = dataclasses.replace(value, **{first.name: getattr(value, first.name) + 1})
    else:
        new = (*value, value[-1]) if isinstance(value, tuple) else value + "x"
    return dataclasses.replace(section, **{field.name: new})


SECTIONS = [ClassifyConfig(), ReidConfig(), DetectConfig(), IngestConfig(), TuneConfig()]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: type(s).__name__)
def test_how_a_stage_runs_never_changes_its_fingerprint(section):
    base = fingerprint({"s": section}, {}, "data")
    runtime = list(_fields(section, RUNTIME)) + list(_fields(section, LATER))
    assert runtime, "every stage has settings of how it runs"
    for field in runtime:
        assert fingerprint({"s": _changed(section, field)}, {}, "data") == base, field.name


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: type(s).__name__)
def test_what_changes_the_output_changes_the_fingerprint(section):
    base = fingerprint({"s": section}, {}, "data")
    for field in _fields(section):
        assert fingerprint({"s": _changed(section, field)}, {}, "data") != base, field.name
    assert fingerprint({"s": section}, {}, "other data") != base
    assert fingerprint({"s": section}, {"frame_size": 64}, "data") != base


def test_a_stage_run_resumes_its_folder_and_refuses_other_work(tmp_path):
    record = tmp_path / "classify.json"
    run = StageRun(record, {"classify": ClassifyConfig()}, data="videos")
    assert run.claim() is False and record.exists()
    faster = ClassifyConfig(cpus_per_worker=4, checkpoint_every_s=5)  # how it runs
    assert StageRun(record, {"classify": faster}, data="videos").claim() is True
    with pytest.raises(FolderClaimed, match="other settings or data"):
        StageRun(record, {"classify": ClassifyConfig(folds=3)}, data="videos").claim()
    with pytest.raises(FolderClaimed, match="other settings or data"):
        StageRun(record, {"classify": ClassifyConfig()}, data="more videos").claim()
    run.finish({"videos": 4})
    import json

    written = json.loads(record.read_text())
    assert written["summary"] == {"videos": 4} and written["seconds"] >= 0
    assert written["classify"]["folds"] == 5  # the whole section, for people to read


def test_the_folders_reference_in_docs_is_the_layers():
    assert DOCS.read_text() == reference(), (
        "run: python -m usv_ray.layout.reference > docs/folders.md"
    )


def _paths_of(folder_class) -> set[str]:
    """The first names of every path a folder class gives (its properties)."""
    folder = folder_class(Path("/root"))
    found = set()
    for name, member in inspect.getmembers(folder_class):
        value = getattr(folder, name) if isinstance(member, property) else None
        if isinstance(value, Path) and value != folder.root:
            found.add(value.relative_to(folder.root).parts[0])
    return found


@pytest.mark.parametrize("folder_class", list(ENTRIES), ids=lambda c: c.__name__)
def test_the_reference_lists_every_path_of_a_folder_and_no_other(folder_class):
    paths = [path for entry in ENTRIES[folder_class] for path in entry.path.split(", ")]
    listed = {re.sub(r"\.\{md,csv\}$", "", path.split("/")[0]) for path in paths}
    assert listed == _paths_of(folder_class)
