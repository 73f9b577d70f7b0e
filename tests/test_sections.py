"""A stage's report section: report.json written and read back, the tables and figures of a
folder with their titles and headings, a record's settings, and the cells of a table."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from usv_ray import sections
from usv_ray.evaluate.tables import write_table
from usv_ray.sections import (
    FORMAT,
    Fields,
    Figure,
    FormatError,
    Note,
    Record,
    ReportError,
    Section,
    Table,
    Text,
)

PACKAGE = Path(sections.__file__).parent
STAGES = ("ingest", "classify", "reid", "detect", "predict", "index", "score", "tune", "synth")

FULL = Section(
    "Classification",
    10,
    data="/data",
    provenance=("cross-validated: 8 videos",),
    tags=("8 videos",),
    record=Record("classify.json", "125bd5994e52" + "0" * 52, 12.5),
    settings=(("classify.folds", "3"), ("classify.cnn.epochs", "2")),
    notes=(Note("privacy", "keyed", " not a demo"),),
    items=(
        Table("Methods", "tables/table4.csv", "tables/table4.md", {"method": "Method"},
              {"split": {"val": "validation"}}, ".1f"),
        Figure("ROC curves", "plots/roc.png"),
        Text("Best configuration", "best.yaml"),
        Fields("Summary", "summary.json"),
    ),
)  # fmt: skip


@pytest.mark.parametrize(
    "section",
    [
        FULL,
        Section("Data", 0),
        Section("Reid", 20, status=sections.NO_RESULTS, record=Record(None)),
        Section("Tuning sweep: tau", 70, record=Record("../tune.json", "ab", None)),
    ],
    ids=["full", "bare", "status", "record above"],
)
def test_a_section_reads_back_as_written(tmp_path: Path, section: Section) -> None:
    path = sections.write_section(section, tmp_path / "stage" / sections.REPORT_NAME)
    assert json.loads(path.read_text())["format"] == FORMAT
    assert sections.read_section(path) == section


def test_settings_keep_their_order_in_report_json(tmp_path: Path) -> None:
    """write_json sorts keys: the settings are pairs, so they stay in the record's order."""
    path = sections.write_section(FULL, tmp_path / sections.REPORT_NAME)
    assert sections.read_section(path).settings == FULL.settings


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"format": FORMAT + 1}, FormatError, "format 2; this usv_ray reads format 1"),
        ({"format": None}, FormatError, "format None"),
        ({"items": [{"kind": "video", "path": "x.mp4"}]}, ReportError, "known kind"),
        ({"items": ["table"]}, ReportError, "known kind"),
        ({"items": [{"kind": "figure"}]}, ReportError, "not a Figure"),
        ({"items": [{"kind": "table", "title": "t", "csv": None, "md": None,
                     "float_format": "q"}]}, ReportError, "not a format spec"),
        ({"settings": [["a"]]}, ReportError, "not a report section"),
        ({"record": "classify.json"}, ReportError, "expected an object for Record"),
        ({"title": None}, ReportError, "no title or order"),
        ({"order": "first"}, ReportError, "no title or order"),
    ],
)  # fmt: skip
def test_what_is_not_a_section_is_refused(tmp_path: Path, change, error, match) -> None:
    path = tmp_path / sections.REPORT_NAME
    path.write_text(json.dumps({**sections.to_json(FULL), **change}))
    with pytest.raises(error, match=match):
        sections.read_section(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list, expected an object")],
)
def test_a_file_that_is_not_a_json_object(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / sections.REPORT_NAME
    path.write_text(text)
    with pytest.raises(ReportError, match=match):
        sections.read_section(path)
    assert sections.read_json(tmp_path / "missing.json") is None
    with pytest.raises(ReportError, match="not found"):
        sections.read_section(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("value", "flat"),
    [
        ({"a": {"b": 1}}, {"a.b": "1"}),
        ({"models": ["C3D_BN", "R3D"]}, {"models": "C3D_BN, R3D"}),
        ({"lr": 0.000312345678}, {"lr": "0.000312346"}),
        ({"x": None, "y": True, "z": False}, {"x": "null", "y": "true", "z": "false"}),
        ({"a": {"b": {"c": "d"}}, "e": 2}, {"a.b.c": "d", "e": "2"}),
    ],
)
def test_flatten(value, flat) -> None:
    assert sections.flatten(value) == flat


def test_a_record_names_itself_relative_to_the_stage_folder(tmp_path: Path) -> None:
    record = {
        "fingerprint": "f" * 64,
        "classify": {"folds": 3, "cnn": {"epochs": 2}},
        "inputs": {"n_frames": 16},
        "data": "/somewhere/data",
        "seconds": 42,
    }
    (tmp_path / "tune.json").write_text(json.dumps(record))
    sweep = tmp_path / "tau"
    found, content = sections.stage_record(tmp_path / "tune.json", sweep)
    assert found == Record("../tune.json", "f" * 64, 42.0)
    assert sections.settings_of(content) == (
        ("classify.folds", "3"),
        ("classify.cnn.epochs", "2"),
        ("inputs.n_frames", "16"),
    )  # fingerprint, data and seconds are shown elsewhere
    assert sections.stage_record(tmp_path / "missing.json", sweep) is None
    (tmp_path / "other.json").write_text(json.dumps({"settings": {}}))
    assert sections.stage_record(tmp_path / "other.json", sweep) is None  # no fingerprint


def test_tables_first_ones_first_titled_and_headed_by_their_columns(tmp_path: Path) -> None:
    folder = tmp_path / "tables"
    write_table(pd.DataFrame({"method": ["a"], "accuracy": [1.0], "split": ["val"]}), folder / "b")
    write_table(pd.DataFrame({"method": ["a"], "f_score": [0.5]}), folder / "table4")
    write_table(pd.DataFrame({"x": [1]}), folder / "a")
    (folder / "a.csv").unlink()  # a table the stage wrote as Markdown alone
    found = sections.tables(
        folder,
        tmp_path,
        {"table4": "Methods compared"},
        {"table4": {"f_score": "Pairwise F, %"}, "b": {"accuracy": "Share right, %"}},
        first=("table4",),
    )
    assert [t.title for t in found] == ["Methods compared", "a", "b"]
    methods, markdown, other = found
    assert (methods.csv, methods.md) == ("tables/table4.csv", "tables/table4.md")
    assert methods.headings == {"method": "Method", "f_score": "Pairwise F, %"}
    assert methods.values == {}  # no split column
    assert (markdown.csv, markdown.md) == (None, "tables/a.md")
    assert markdown.headings == {**sections.HEADINGS}  # no CSV: every general heading
    assert other.headings == {"method": "Method", "accuracy": "Share right, %", "split": "Patients"}
    assert other.values == {"split": sections.VALUES["split"]}
    own = sections.tables(folder, tmp_path, {}, {"table4": {"f_score": "F"}}, general=False)
    assert [t.headings for t in own] == [{}, {}, {"f_score": "F"}]
    assert sections.tables(tmp_path / "none", tmp_path, {}) == []


def test_figures_in_figure_order_titled_by_stem_or_prefix(tmp_path: Path) -> None:
    folder = tmp_path / "plots"
    folder.mkdir()
    names = ["reliability_cnn.png", "zeta.svg", "confusion_lstm.png", "pr.png", "roc.png"]
    for name in [*names, "notes.txt"]:
        (folder / name).write_bytes(b"")
    found = sections.figures(folder, tmp_path, {"roc": "ROC curves"})
    assert found == [
        Figure("ROC curves", "plots/roc.png"),
        Figure("pr", "plots/pr.png"),
        Figure("Confusion matrix: lstm", "plots/confusion_lstm.png"),
        Figure("Reliability diagram: cnn", "plots/reliability_cnn.png"),
        Figure("zeta", "plots/zeta.svg"),
    ]
    assert sections.figures(tmp_path / "none", tmp_path, {}) == []


def test_stage_section(tmp_path: Path) -> None:
    (tmp_path / "reid.json").write_text(json.dumps({"fingerprint": "ab", "data": "/recorded"}))
    record = sections.stage_record(tmp_path / "reid.json", tmp_path)
    counts = ("split by patient: ...", "6 tracklets")
    items = [Figure("ROC", "plots/roc.png")]
    section = sections.stage_section("Reid", 20, data=None, counts=counts, record=record,
                                     items=items)  # fmt: skip
    assert section.data == "/recorded" and section.status == ""
    assert (section.provenance, section.tags) == ((counts[0],), (counts[1],))
    given = sections.stage_section("Reid", 20, data=tmp_path, counts=None, record=record)
    assert given.data == str(tmp_path.resolve())  # the folder it was given, over the record's
    assert given.status == sections.NO_RESULTS  # nothing to show
    assert given.provenance == given.tags == ()
    missing = sections.stage_section("Reid", 20, data=None, counts=None, record=None)
    assert missing.record == Record(None) and missing.data is None
    night = sections.stage_section("Index", 50, data=None, counts=None, record=None,
                                   keeps_record=False)  # fmt: skip
    assert night.record is None


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.00023, "< 0.001"), (0.0027, "0.0027"), (0.049, "0.05"), (0.5, "0.50"), (None, "n/a"),
     (float("nan"), "n/a"), (1.0, "1.00")],
)  # fmt: skip
def test_p_value(value, text) -> None:
    assert sections.p_value(value) == text


@pytest.mark.parametrize(
    ("spec", "value", "text"),
    [("auto", 0.0038, "0.0038"), ("auto", 12.345, "12.35"), ("auto", 0.0, "0.00"),
     ("auto", math.nan, "n/a"), (".1f", 12.345, "12.3"), (".3g", 0.012345, "0.0123"),
     (".1f", math.nan, "n/a")],
)  # fmt: skip
def test_float_format(spec, value, text) -> None:
    assert sections.float_format(spec)(value) == text


def test_clinical_table_words_cells_and_keeps_unknown_columns() -> None:
    frame = pd.DataFrame(
        {"split": ["val", "other"], "auc": [0.7, 0.8], "auc_ci": ["60.00-80.00", None]}
    )
    shown = sections.clinical_table(frame, {"auc": "AUC, %"}, sections.VALUES)
    assert list(shown.columns) == ["split", "AUC, % (95% CI)"]  # "split" named by no heading
    assert shown["split"].tolist() == ["validation", "other"]
    assert shown["AUC, % (95% CI)"].tolist() == ["0.7 (60.0\u201380.0)", "0.8"]


@pytest.mark.parametrize("module", ["sections.py", "report.py"])
def test_the_renderer_and_its_model_import_no_stage(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    stages = {name for name in imported for stage in STAGES if name.startswith(f"usv_ray.{stage}")}
    assert not stages, f"{module} imports {sorted(stages)}"
