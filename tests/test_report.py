"""The demo's report: both files from a small fake output folder, missing stages, escaping,
and the HTML page rendered in headless Chromium (tables shown, every image decoded)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from usv_ray import sections
from usv_ray.classify import report as classify_report
from usv_ray.config import PrivacyConfig
from usv_ray.detect import report as detect_report
from usv_ray.evaluate.tables import write_table
from usv_ray.index import report as index_report
from usv_ray.ingest import report as ingest_report
from usv_ray.predict import report as predict_report
from usv_ray.pretrain import report as pretrain_report
from usv_ray.privacy import DEV_KEY, SECRET_ENV, key_check, record_keying
from usv_ray.reid import report as reid_report
from usv_ray.report import ReportError, clinical_table, with_interval, write_report
from usv_ray.score import report as score_report
from usv_ray.tune import report as tune_report

PATIENT_KEYS = [f"{i:032x}" for i in (0xA1, 0xB2, 0xC3, 0xD4)]  # what the tables would hold
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    """A tiny one-colour PNG (the browser test looks for its colour on the screenshot)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def _read_data(out: Path) -> Path | None:
    """The data folder a stage of ``out`` read: the demo's ``data/``, when there is one."""
    return out / "data" if (out / "data").is_dir() else None


# Each helper lays out a stage's folder as the stage does, and ends as the stage ends its
# run: by describing its section (report.json).


def _data(out: Path, key: bytes = DEV_KEY) -> None:
    record_keying(out / "data", PrivacyConfig(dev_key=key == DEV_KEY), key)
    videos = pd.DataFrame(
        {
            "patient_key": [PATIENT_KEYS[i // 3] for i in range(12)],
            "label": np.array([0, 1, -1] * 4, dtype=np.int8),
            "status": ["ok"] * 11 + ["error"],
        }
    )
    _parquet(out / "data" / "videos.parquet", videos)
    _parquet(out / "data" / "errors.parquet", pd.DataFrame({"stage": ["decode"]}))
    ingest_report.describe(out / "data")


def _classify(out: Path, method: str = "Variable-frame CNNLSTM") -> None:
    folder = out / "classify"
    table = pd.DataFrame(
        {"method": [method, "CNN_Aver"], "n_videos": [8, 8], "accuracy": [73.874, 65.77]}
    )
    table["accuracy_ci"] = ["64.41-83.33", "54.42-76.59"]
    write_table(table, folder / "tables" / "table4")
    write_table(table.iloc[:1], folder / "tables" / "table3")
    _png(folder / "plots" / "roc.png", RED)
    folds = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in range(8)],
            "patient_key": [PATIENT_KEYS[i // 2] for i in range(8)],
            "label": np.array([0, 1] * 4, dtype=np.int8),
            "fold": np.array([0, 0, 1, 1, 2, 2, 0, 0], dtype=np.int8),
        }
    )
    _parquet(folder / "folds.parquet", folds)
    settings = {"folds": 3, "cnn_lr": 0.0003, "video_models": ["C3D_BN", "R3D"]}
    _json(
        folder / "classify.json", {"fingerprint": "125bd5994e52" + "0" * 52, "classify": settings}
    )
    classify_report.describe(folder, _read_data(out))


def _reid(out: Path) -> None:
    folder = out / "reid"
    table = pd.DataFrame({"model": ["CM", "VM"], "split": ["test"] * 2, "AUC": [62.5, 38.64]})
    write_table(table, folder / "tables" / "table3")
    delong = pd.DataFrame({"split": ["test"], "models": ["CM vs VM"], "p_value": [0.00023]})
    write_table(delong, folder / "tables" / "delong")
    _png(folder / "plots" / "roc_test.png", BLUE)
    splits = pd.DataFrame(
        {
            "tracklet_id": [f"t{i}" for i in range(6)],
            "patient_key": [PATIENT_KEYS[i // 2] for i in range(6)],
            "nodule_id": ["n0", "n0", "n1", "n2", "n3", "n3"],
            "split": ["train", "train", "val", "val", "test", "test"],
        }
    )
    _parquet(folder / "splits.parquet", splits)
    _json(folder / "reid.json", {"fingerprint": "03dd4a3a4956" + "1" * 52, "reid": {"epochs": 3}})
    table = pd.DataFrame({"method": ["Algorithm 1", "DBSCAN"], "f_score": [0.81, 0.77]})
    write_table(table, folder / "tables" / "table4_clustering")
    reid_report.describe(folder, _read_data(out))


def _index(out: Path) -> None:
    folder = out / "index"
    summary = {
        "patients": 4,
        "tracklets": 6,
        "nodules": 5,
        "index_version": "cm-7f3a-8x32x16-tau0.7-algorithm1",
        "scores": {"precision": 0.875, "recall": 0.7},
    }
    _json(folder / "summary.json", summary)
    index_report.describe(folder, _read_data(out))


def _detect(out: Path) -> None:
    folder = out / "detect"
    table = pd.DataFrame({"split": ["val", "test"], "videos": [3, 3], "ap50": [91.4, 88.2]})
    write_table(table, folder / "tables" / "detection")
    splits = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in range(6)],
            "patient_key": [PATIENT_KEYS[i // 2] for i in range(6)],
            "split": ["train", "train", "val", "val", "test", "test"],
        }
    )
    _parquet(folder / "splits.parquet", splits)
    _json(folder / "detect.json", {"fingerprint": "0de7ec7" + "2" * 57, "detect": {"epochs": 6}})
    detect_report.describe(folder, _read_data(out))


def _pretrain(out: Path) -> None:
    folder = out / "pretrain"
    table = pd.DataFrame({"epoch": [1, 2], "val_loss": [2.31, 1.87], "best": [False, True]})
    write_table(table, folder / "tables" / "pretraining")
    splits = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in range(6)],
            "patient_key": [PATIENT_KEYS[i // 2] for i in range(6)],
            "split": ["train"] * 4 + ["val"] * 2,
        }
    )
    _parquet(folder / "splits.parquet", splits)
    _json(folder / "pretrain.json", {"fingerprint": "5e1f" + "3" * 60, "pretrain": {"epochs": 2}})
    pretrain_report.describe(folder, _read_data(out))


def _predict(out: Path) -> None:
    versions = {"diagnosis-abc": {"videos": 11, "errors": 1, "malignant": 4}}
    _json(out / "predict" / "summary.json", {"latest": "diagnosis-abc", "versions": versions})
    predict_report.describe(out / "predict", _read_data(out))


def _score(out: Path) -> None:
    folder = out / "score"
    table = pd.DataFrame({"videos": [5], "accuracy": [80.0], "accuracy_ci": ["40.00-100.00"]})
    write_table(table, folder / "tables" / "night_metrics")
    _json(folder / "summary.json", {"model_version": "diagnosis-abc", "night_videos": 5})
    score_report.describe(folder, _read_data(out))


def _tune(out: Path) -> None:
    folder = out / "tune" / "tau"
    results = pd.DataFrame({"tau": [0.0038, 0.7], "f_score": [0.70, 0.81]})
    write_table(results, folder / "results")
    (folder / "best.yaml").write_text("index:\n  tau: 0.7\n")
    _json(folder / "tune.json", {"fingerprint": "feedbeef" * 8, "tune": {"target": "tau"}})
    tune_report.describe(folder, _read_data(out))


def _archive(out: Path) -> None:
    """What synth leaves in a demo's folder (the report reads only that it is there)."""
    (out / "archive").mkdir(parents=True, exist_ok=True)
    (out / "archive" / "manifest.csv").write_text("video,patient_id\n")


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    """A fake demo output folder with every stage, as the stages lay it out."""
    out = tmp_path / "demo"
    _archive(out)
    _data(out)
    _pretrain(out)
    _classify(out)
    _reid(out)
    _detect(out)
    _predict(out)
    _index(out)
    _score(out)
    _tune(out)
    return out


def _section(text: str, title: str) -> str:
    """The Markdown of one ``## title`` section."""
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_both_files_hold_every_stage_labelled(full_run: Path) -> None:
    html_path, md_path = write_report(full_run)
    assert (html_path, md_path) == (full_run / "report.html", full_run / "report.md")
    page, md = html_path.read_text(), md_path.read_text()

    for text in (page, md):
        assert "not run" not in text
        assert "usv_ray version" in text and "keyed hash (HMAC-SHA256)" in text
        assert "usv-ray demo report" in text and "a `usv-ray demo` run" in text
        assert "keyed them with the public development key" in text
        # tables from their CSVs, as a clinician reads them: value and interval in a cell
        for value in ("73.9 (64.4\u201383.3)", "Accuracy, % (95% CI)", "38.64", "Algorithm 1"):
            assert value in text
        assert "0.81" in text and "Pairwise F, %" in text
        assert "Diagnosis per video: methods compared" in text
        assert "Table 3" not in text and "Table 4" not in text  # named by content
        # labels: data folder with its counts, config fingerprint, settings
        assert f"data: {(full_run / 'data').resolve()}" in text
        assert "8 videos of 4 patients, 3 folds" in text
        assert "6 tracklets of 3 patients" in text
        assert "config classify/classify.json 125bd5994e52" in text
        assert "config reid/reid.json 03dd4a3a4956" in text
        assert "index_version cm-7f3a-8x32x16-tau0.7-algorithm1" in text
        assert "classify.video_models" in text and "C3D_BN, R3D" in text
        assert "12 videos of 4 patients, 11 ingested ok, 1 failed" in text
        assert "tau: 0.7" in text  # best.yaml
        assert "0.0038" in text  # a small tau to two significant digits, not 0.00
        assert "scores.precision" in text  # the index summary, flattened
        # the night's stages: the detector's AP, the diagnoses by version, the night's score
        assert "AP at IoU 0.5, %" in text and "91.40" in text
        assert "versions.diagnosis-abc.malignant" in text  # the diagnoses summary
        assert "80.0 (40.0\u2013100.0)" in text  # tonight's accuracy with its interval
        assert "config detect/detect.json 0de7ec72222" in text
    # every table and figure carries its source and its stage's data/config label
    assert md.count("*source: ") == 14 and page.count('<p class="label">source: ') == 14
    roc_label = re.search(r"\*source: classify/plots/roc\.png · (.*)\*", md).group(1)
    assert "8 videos of 4 patients" in roc_label and "125bd5994e52" in roc_label
    assert "&lt; 0.001" in page and "&lt; 0.001" in md  # not rounded to 0.00; "<" escaped

    # HTML: self-contained (images embedded, no file reference), the PNG bytes intact
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {
        (full_run / "classify/plots/roc.png").read_bytes(),
        (full_run / "reid/plots/roc_test.png").read_bytes(),
    }
    assert page.count('<table class="dataframe data">') == 16  # 11 tables, 5 settings
    # Markdown: images linked relative to the report, and the links resolve
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["classify/plots/roc.png", "reid/plots/roc_test.png"]
    assert all((full_run / link).is_file() for link in links)
    # privacy: counts only, never a patient key
    assert not any(key in page or key in md for key in PATIENT_KEYS)


@pytest.mark.parametrize(
    ("stages", "not_run"),
    [
        (
            (),
            (
                "Data",
                "Self-supervised pretraining",
                "Classification",
                "Nodule re-identification",
                "Nodule detection",
                "Diagnoses",
                "Nodule index",
                "The night",
                "Tuning",
            ),
        ),
        (
            (_data, _classify),
            (
                "Self-supervised pretraining",
                "Nodule re-identification",
                "Nodule detection",
                "Diagnoses",
                "Nodule index",
                "The night",
                "Tuning sweeps",
            ),
        ),
        (
            (_data, _pretrain, _reid, _tune, _detect, _predict, _score),
            ("Classification", "Nodule index"),
        ),
    ],
)
def test_missing_stages_say_not_run(tmp_path: Path, stages, not_run) -> None:
    for stage in stages:
        stage(tmp_path)
    html_path, md_path = write_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    for title in not_run:
        assert "*not run (no " in _section(md, title)
    assert md.count("*not run (no ") == len(not_run)
    assert page.count('<p class="status">not run (no ') == len(not_run)


def test_stage_folder_without_results_and_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "reid").mkdir()  # a stage that crashed before its report.json
    _, md_path = write_report(tmp_path)
    assert "*no results yet (no report.json: the stage did not finish" in _section(
        md_path.read_text(), "Nodule re-identification"
    )
    with pytest.raises(ReportError, match="is not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "reid" / "reid.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"reid\.json is not valid JSON"):
        reid_report.describe(tmp_path / "reid")
    (tmp_path / "reid" / "report.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"reid/report\.json is not valid JSON"):
        write_report(tmp_path)


def test_a_stage_without_items_has_no_results_yet(tmp_path: Path) -> None:
    (tmp_path / "reid").mkdir()
    reid_report.describe(tmp_path / "reid")  # a run that wrote nothing yet
    _, md_path = write_report(tmp_path)
    assert "*no results yet (the stage did not finish)*" in _section(
        md_path.read_text(), "Nodule re-identification"
    )


def test_missing_record_and_tables_without_csv(tmp_path: Path) -> None:
    _classify(tmp_path)
    (tmp_path / "classify" / "classify.json").unlink()
    (tmp_path / "classify" / "tables" / "table4.csv").unlink()
    classify_report.describe(tmp_path / "classify")
    html_path, md_path = write_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "config: not recorded" in md and "config: not recorded" in page
    assert "source: classify/tables/table4.md" in md
    assert "<pre>| method | n_videos" in page  # the Markdown shown as text, not lost


def test_a_real_archives_run_says_what_it_is_and_how_it_was_keyed(tmp_path, monkeypatch):
    """Ingest and classify run by hand on a real archive, with a private key: no "demo"
    title, no claim of the development key; the key itself is nowhere."""
    secret = "a private key of the hospital, 32+ bytes long"
    monkeypatch.setenv(SECRET_ENV, secret)
    _data(tmp_path, key=secret.encode())
    _classify(tmp_path)
    html_path, md_path = write_report(tmp_path)
    page, md = html.unescape(html_path.read_text()), md_path.read_text()
    assert "<title>usv-ray report</title>" in page and md.startswith("# usv-ray report\n")
    for text in (page, md):
        assert "demo report" not in text and "a run on an archive's data" in text
        assert "keyed them with a private key (from USV_RAY_SECRET)" in text
        assert "development key" not in text and secret not in text
    record = json.loads((tmp_path / "data" / "keying.json").read_text())
    assert record == {
        "keys": ["private"],
        "sources": [SECRET_ENV],
        "check": key_check(secret.encode()),  # a keyed check value, never the key
    }


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ((), "is not recorded here"),
        ((DEV_KEY,), "This folder is not a demo"),
    ],
)
def test_the_privacy_line_follows_what_ingest_recorded(tmp_path, monkeypatch, keys, says):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    for key in keys:  # one ingest run each, into the same data folder
        cfg = PrivacyConfig(dev_key=key == DEV_KEY, key_file=None if key == DEV_KEY else "k")
        record_keying(tmp_path / "data", cfg, key)
    if keys:
        ingest_report.describe(tmp_path / "data")
    _classify(tmp_path)
    _, md_path = write_report(tmp_path)
    assert says in md_path.read_text()


def test_a_folder_an_older_usv_ray_keyed_with_two_keys_is_flagged(tmp_path):
    """Ingest now refuses a second key; a folder an older usv_ray keyed with both still
    says so on the report."""
    (tmp_path / "data").mkdir()
    record = {"keys": ["development", "private"], "sources": ["privacy.dev_key", "k"]}
    (tmp_path / "data" / "keying.json").write_text(json.dumps(record))
    ingest_report.describe(tmp_path / "data")
    _classify(tmp_path)
    _, md_path = write_report(tmp_path)
    assert "Warning: ingest runs" in md_path.read_text()


def test_results_page_holds_the_tables_and_no_path_or_time(full_run):
    write_report(full_run)
    results = (full_run / "results.md").read_text()
    assert results.startswith("# usv-ray demo: results\n")
    assert "### Diagnosis per video: methods compared" in results
    assert "73.9 (64.4\u201383.3)" in results and "| Method | Videos |" in results
    assert str(full_run.parent) not in results  # no absolute path: a committed page
    assert not re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", results)  # no time stamp
    assert "![" not in results  # tables only: no figure to link from docs/
    first = results
    write_report(full_run)
    assert (full_run / "results.md").read_text() == first  # same results, same page


@pytest.mark.parametrize(
    ("args", "cell"),
    [
        ((74.28, "61.70-85.71"), "74.3 (61.7\u201385.7)"),
        ((66.67, None), "66.7"),
        ((float("nan"), "1.00-2.00"), "n/a"),
        ((75.0, 26.0, 100.0), "75.0 (26.0\u2013100.0)"),
        ((50.0, float("nan"), float("nan")), "50.0"),
        ((3.0, "odd"), "3.0 (odd)"),
    ],
)
def test_a_value_and_its_interval_in_one_cell(args, cell):
    assert with_interval(*args) == cell


def test_clinical_table_merges_intervals_and_names_columns():
    frame = pd.DataFrame(
        {
            "split": ["val"],
            "models": ["CM vs VM"],
            "difference": [0.75],
            "low": [0.26],
            "high": [1.0],
            "p_value": [0.0027],
        }
    )
    shown = clinical_table(frame, sections.HEADINGS, sections.VALUES)
    assert list(shown.columns) == ["Patients", "Models", "AUC difference, points (95% CI)", "p"]
    assert shown.iloc[0].tolist() == ["validation", "CM vs VM", "75.0 (26.0\u2013100.0)", "0.0027"]


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_everything_from_files_is_escaped(tmp_path: Path) -> None:
    _classify(tmp_path, method=HOSTILE)
    _json(
        tmp_path / "classify" / "classify.json",
        {"fingerprint": "<b>fp</b>", "classify": {"note": HOSTILE}},
    )
    _png(tmp_path / "classify" / "plots" / 'confusion_<i>&"x".png', RED)
    classify_report.describe(tmp_path / "classify")
    _index(tmp_path)
    _json(tmp_path / "index" / "summary.json", {"index_version": HOSTILE, HOSTILE: 1})
    index_report.describe(tmp_path / "index")
    _tune(tmp_path)
    (tmp_path / "tune" / "tau" / "best.yaml").write_text(f"note: '</pre>{HOSTILE}'\n```\n")
    # a section from a stage this usv_ray does not know, with a hostile title and note
    note = sections.Note("privacy", HOSTILE)
    section = sections.Section(HOSTILE, 5, provenance=(HOSTILE,), notes=(note,))
    sections.write_section(section, tmp_path / "extra" / "report.json")
    html_path, md_path = write_report(tmp_path)
    page, md = html_path.read_text(), md_path.read_text()
    # best.yaml sits in a fence longer than the ``` it holds, so it cannot close early; a
    # fenced block is shown as text, so only the Markdown outside it must be escaped
    fenced = "````\nnote: '</pre>" + HOSTILE + "'\n```\n````"
    assert fenced in md
    for text in (page, md.replace(fenced, "")):
        assert "<script" not in text and "<img src=x" not in text and "<i>" not in text
        assert "&lt;script&gt;" in text
    assert page.count("<img ") == 2  # the two real figures, nothing injected
    assert "</pre><script" not in page
    # the image's file name is quoted in its Markdown link
    assert "(classify/plots/confusion_%3Ci%3E%26%22x%22.png)" in md


def test_rerun_rewrites_both_files(full_run: Path) -> None:
    write_report(full_run)
    shutil.rmtree(full_run / "tune")
    html_path, md_path = write_report(full_run)
    assert "*not run (no tune/ folder)*" in md_path.read_text()
    assert "best.yaml" not in html_path.read_text()
    assert sorted(p.name for p in full_run.iterdir() if p.is_file()) == [
        "report.html",
        "report.md",
        "results.md",
    ]  # no temporary file left beside them


def test_a_moved_folder_renders_the_same(full_run: Path, tmp_path: Path) -> None:
    """Paths in report.json are relative to the stage folder: a copy elsewhere renders the
    same tables and figures (the data line still names the data the stages read)."""
    write_report(full_run)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(full_run, moved)
    shutil.rmtree(full_run)
    write_report(moved)
    results = (moved / "results.md").read_text()
    assert "73.9 (64.4\u201383.3)" in results and "source: classify/tables/table4.csv" in results
    page = (moved / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2


def test_sections_in_the_order_their_stages_give(full_run: Path) -> None:
    _, md_path = write_report(full_run)
    titles = re.findall(r"^## (.*)$", md_path.read_text(), flags=re.M)
    assert titles == [
        "Data",
        pretrain_report.TITLE,
        classify_report.TITLE,
        reid_report.TITLE,
        detect_report.TITLE,
        predict_report.TITLE,
        index_report.TITLE,
        score_report.TITLE,
        "Tuning sweep: tau",
    ]


def test_a_section_the_renderer_cannot_read_says_why(full_run: Path) -> None:
    """A sweep that crashed has no report.json; a stage's report.json of a newer format
    is not shown; neither stops the report."""
    (full_run / "tune" / "crashed").mkdir()
    path = full_run / "score" / "report.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))
    _, md_path = write_report(full_run)
    md = md_path.read_text()
    assert "*no results yet (no report.json: the stage did not finish" in _section(
        md, "Tuning sweeps: crashed"
    )
    assert "report.json format 99; this usv_ray reads format 1" in _section(md, "The night")
    assert "Tuning sweep: tau" in md  # the other sweep is still shown


def test_a_file_gone_since_the_stage_described_it(full_run: Path) -> None:
    (full_run / "classify" / "plots" / "roc.png").unlink()
    html_path, md_path = write_report(full_run)
    assert "classify/plots/roc.png not found" in md_path.read_text()
    assert '<p class="status">classify/plots/roc.png not found</p>' in html_path.read_text()


def test_a_section_shows_files_of_the_output_folder_alone(full_run: Path) -> None:
    """A report.json naming a file above the output folder gets no copy of it in the page."""
    _png(full_run.parent / "secret.png", BLUE)
    items = (sections.Figure("Outside", "../../secret.png"),)
    sections.write_section(
        sections.Section("Extra", 5, items=items), full_run / "x" / "report.json"
    )
    html_path, md_path = write_report(full_run)
    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') == 2  # the two figures of the stages
    assert "../secret.png lies outside the output folder: not shown" in page
    assert "](../secret.png)" not in md_path.read_text()


# ---------------------------------------------------------------------------- browser

MARK_IMAGES = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    img.setAttribute("data-complete", String(img.complete));
  }
  document.body.setAttribute("data-checked", "yes");
});
</script>"""
# A deliberately broken image: proves the check can see one.
BROKEN = '<img id="control" src="data:image/png;base64,iVBORw0KGgoAAAAN">'


def _chromium() -> str:
    for name in (os.environ.get("USV_RAY_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail(
        "headless Chromium not found: install Debian's package (apt-get install -y chromium; "
        ".ci/run does) or set USV_RAY_CHROMIUM to the browser's path"
    )


def _run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # as root (CI containers) Chromium refuses to start with its sandbox
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",  # its own profile: parallel runs do not share a lock
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class _Elements(HTMLParser):
    """Every img's attributes and the number of tables in a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tables = 0
        self.checked = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables += 1
        elif tag == "body":
            self.checked = dict(attrs).get("data-checked") == "yes"


def test_chromium_shows_tables_and_images(full_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    html_path, _ = write_report(full_run)
    page = html_path.read_text()
    assert "<script" not in page  # the report has no script; the test adds its own marker
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", f"{BROKEN}{MARK_IMAGES}</body>"))

    # the DOM after load, each img marked with its decoded width
    dump = _run_chromium(
        tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()
    )
    elements = _Elements()
    elements.feed(dump.stdout)
    assert elements.checked, "the load handler did not run"
    control = [img for img in elements.images if img.get("id") == "control"]
    figures = [img for img in elements.images if img.get("id") != "control"]
    assert [img["data-natural-width"] for img in control] == ["0"]  # broken, and seen as such
    assert len(figures) == 2
    assert all(img["data-natural-width"] == "40" for img in figures), figures
    assert elements.tables >= 11  # the header, 10 data tables, settings

    # the page as a person sees it: the two figures (pure red, pure blue) are on screen
    shot = tmp_path / "report.png"
    _run_chromium(
        tmp_path / "profile", "--window-size=1280,3200", f"--screenshot={shot}", html_path.as_uri()
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))  # (H, W, 3)
    assert pixels.shape == (3200, 1280, 3)
    for color in (RED, BLUE):
        assert np.all(pixels == color, axis=-1).sum() > 10_000, f"no {color} image on screen"
    figure = np.all(pixels == RED, axis=-1) | np.all(pixels == BLUE, axis=-1)
    text_like = np.any(pixels < 100, axis=-1) & ~figure
    assert text_like.sum() > 5_000  # dark pixels: text and table borders, not a blank page
