"""The classify stage's entry checks: clear errors before any training, method names."""

import pytest

from usv_ray.classify.pipeline import (
    EQUAL,
    ClassifyError,
    equal_method,
    run_classify,
)
from usv_ray.config import Config
from usv_ray.io import rows_to_table, write_table
from usv_ray.schemas import VIDEOS


def test_equal_method_names():
    assert equal_method(12, 12) == EQUAL
    assert equal_method(10, 12) == f"{EQUAL} (N=10)"


def test_no_ingested_data_is_a_clear_error(tmp_path):
    with pytest.raises(ClassifyError, match="run `usv-ray ingest`"):
        run_classify(Config(), tmp_path, tmp_path / "out")
    rows = [
        {"video_id": "v", "patient_key": "p", "label": -1, "source": "x", "status": "ok"},
    ]
    write_table(rows_to_table(rows, VIDEOS), tmp_path / "videos.parquet")
    with pytest.raises(ClassifyError, match="benign/malignant label"):
        run_classify(Config(), tmp_path, tmp_path / "out")
