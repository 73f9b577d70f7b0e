"""Ingest's report section: the counts of its folder, and the privacy note from keying.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from usv_ray import sections
from usv_ray.ingest.report import NOT_DEMO, describe


@pytest.mark.parametrize(
    ("keying", "says", "not_demo"),
    [
        ({"keys": ["development"], "sources": ["privacy.dev_key"]}, "public development key",
         NOT_DEMO),
        ({"keys": ["private"], "sources": ["USV_RAY_SECRET"]},
         "a private key (from USV_RAY_SECRET)", ""),
        ({"keys": ["development", "private"], "sources": ["a", "b"]},
         "Warning: ingest runs", ""),
        ({"keys": ["private"]}, "(from not recorded)", ""),
        ({"keys": ["quantum"], "sources": []}, "these kinds of key: quantum", ""),
    ],
)  # fmt: skip
def test_the_privacy_note_follows_keying_json(tmp_path: Path, keying, says, not_demo) -> None:
    (tmp_path / "keying.json").write_text(json.dumps(keying))
    section = sections.read_section(describe(tmp_path))
    (note,) = section.notes
    assert note.name == "privacy" and says in note.text and note.not_demo == not_demo


def test_an_empty_data_folder_still_describes_itself(tmp_path: Path) -> None:
    section = sections.read_section(describe(tmp_path))
    assert section.title == "Data" and section.status == "" and section.notes == ()
    assert section.data == str(tmp_path.resolve()) and section.provenance == ()


def test_counts_from_the_tables(tmp_path: Path) -> None:
    videos = {"patient_key": ["a", "a", "b"], "label": [1, 0, -1], "status": ["ok"] * 2 + ["error"]}
    pd.DataFrame(videos).to_parquet(tmp_path / "videos.parquet")
    pd.DataFrame({"stage": ["decode", "manifest"]}).to_parquet(tmp_path / "errors.parquet")
    section = sections.read_section(describe(tmp_path))
    assert section.provenance == (
        "videos.parquet: 3 videos of 2 patients, 2 ingested ok, 1 failed; 1 malignant, "
        "1 benign, 0 unlabelled",
        "errors.parquet: 2 error rows",
    )
    assert section.items == ()  # ingest writes no table of its own
