"""``usv-ray export`` before the night's stages ran: one line naming the stage to run."""

from __future__ import annotations

import json

import pytest

from usv_ray.config import Config, PrivacyConfig
from usv_ray.export.pipeline import ExportError, run_export


def _cfg() -> Config:
    return Config(privacy=PrivacyConfig(dev_key=True))


def test_without_predict_or_index_the_export_says_which_stage_to_run(tmp_path):
    args = (tmp_path / "data", tmp_path / "predict", tmp_path / "index", [], tmp_path / "out")
    with pytest.raises(ExportError, match="usv-ray predict"):
        run_export(_cfg(), *args)
    (tmp_path / "predict").mkdir()
    (tmp_path / "predict" / "summary.json").write_text(json.dumps({"latest": "diagnosis-x"}))
    import pyarrow.parquet as pq

    from usv_ray.schemas import DIAGNOSES

    pq.write_table(DIAGNOSES.empty_table(), tmp_path / "predict" / "diagnoses.parquet")
    with pytest.raises(ExportError, match="usv-ray index"):
        run_export(_cfg(), *args)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are all there
