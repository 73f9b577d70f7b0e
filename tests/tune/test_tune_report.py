"""A sweep's report section: its results, best.yaml, and its record (or tune/'s)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from usv_ray import sections
from usv_ray.evaluate.tables import write_table
from usv_ray.tune.report import BEST_TITLE, describe


def _sweep(folder: Path) -> None:
    write_table(
        pd.DataFrame({"tau": [0.5], "f_score": [0.8], "accuracy": [1.0]}), folder / "results"
    )
    (folder / "best.yaml").write_text("index:\n  tau: 0.5\n")


def test_a_sweep_describes_its_results_and_best_yaml(tmp_path: Path) -> None:
    sweep = tmp_path / "tune" / "tau"
    _sweep(sweep)
    record = {"fingerprint": "ab" * 32, "tune": {"target": "tau"}, "data": "/data", "seconds": 3}
    (sweep / "tune.json").write_text(json.dumps(record))
    section = sections.read_section(describe(sweep))
    assert section.title == "Tuning sweep: tau" and section.data == "/data"
    assert section.record == sections.Record("tune.json", "ab" * 32, 3.0)
    assert ("tune.target", "tau") in section.settings
    results, best = section.items
    assert (results.title, results.csv) == ("Sweep results, one row per trial", "results.csv")
    # its own names, no general headings ("accuracy" stays), but for tau's pairwise scores
    assert results.headings == {"f_score": "Pairwise F"}
    assert best == sections.Text(BEST_TITLE, "best.yaml")


def test_a_sweep_without_its_own_record_names_tunes(tmp_path: Path) -> None:
    sweep = tmp_path / "tune" / "tau"
    _sweep(sweep)
    (tmp_path / "tune" / "tune.json").write_text(json.dumps({"fingerprint": "cd" * 32}))
    section = sections.read_section(describe(sweep, tmp_path / "data"))
    assert section.record == sections.Record("../tune.json", "cd" * 32, None)
    assert section.data == str((tmp_path / "data").resolve())
