"""usv_ray.evaluate.tables: values equal the metrics on pooled rows, order, Markdown, CSV."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from usv_ray.evaluate.metrics import METRICS, THRESHOLD_METRICS, MetricWarning, summarize
from usv_ray.evaluate.tables import (
    METHOD_ORDER,
    method_table,
    table_columns,
    to_markdown,
    write_table,
)

N_BOOT = 50


def make_predictions(methods: list[str], n_patients: int = 30, seed: int = 0) -> pd.DataFrame:
    """A ``predictions`` table: 1-3 videos per patient, 5 folds by patient, every method."""
    rng = np.random.default_rng(seed)
    videos = []
    for patient in range(n_patients):
        label = int(rng.random() < 0.5)
        for video in range(int(rng.integers(1, 4))):
            videos.append((f"p{patient:03d}_v{video}", f"p{patient:03d}", patient % 5, label))
    rows = []
    for strength, method in enumerate(methods):
        for video_id, patient_key, fold, label in videos:
            prob = float(np.clip(rng.normal(0.4 + 0.1 * strength * label, 0.25), 0.0, 1.0))
            rows.append((video_id, patient_key, fold, method, prob, label))
    return pd.DataFrame(
        rows, columns=["video_id", "patient_key", "fold", "method", "prob", "label"]
    )


# Deliberately shuffled, with two methods the paper does not name.
METHODS = ["Variable-frame CNNLSTM", "Zeta_Net", "R(2+1)D", "CNN_Vote", "Alpha_Net"]
EXPECTED_ORDER = ["R(2+1)D", "CNN_Vote", "Variable-frame CNNLSTM", "Alpha_Net", "Zeta_Net"]


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    frame = make_predictions(METHODS)
    # Row order must not matter: shuffle so the methods' rows interleave.
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.fixture(scope="module")
def table(predictions) -> pd.DataFrame:
    return method_table(predictions, n_boot=N_BOOT, seed=7)


def test_method_order_constant_matches_the_paper():
    assert METHOD_ORDER == (
        "R(2+1)D",
        "C3D_BN",
        "R3D",
        "Key_Frame",
        "CNN_Vote",
        "CNN_Aver",
        "Equal-frame CNNLSTM",
        "Variable-frame CNNLSTM",
    )


def test_rows_follow_method_order_then_alphabetical(table):
    assert table["method"].tolist() == EXPECTED_ORDER


def test_columns(table):
    assert table.columns.tolist() == table_columns()
    assert table_columns()[:2] == ["method", "n_videos"]
    assert table_columns()[2::2] == list(METRICS)
    assert table_columns()[3::2] == [f"{name}_ci" for name in METRICS]


@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_values_equal_metrics_on_pooled_rows(predictions, threshold):
    table = method_table(predictions, threshold=threshold, n_boot=N_BOOT, seed=3)
    for row in table.itertuples(index=False):
        pooled = predictions[predictions["method"] == row.method]
        assert row.n_videos == len(pooled)
        y_true, y_prob = pooled["label"].to_numpy(), pooled["prob"].to_numpy()
        for name, metric in METRICS.items():
            kwargs = {"threshold": threshold} if name in THRESHOLD_METRICS else {}
            assert getattr(row, name) == pytest.approx(100.0 * metric(y_true, y_prob, **kwargs))


def test_intervals_are_summarize_with_patient_groups(predictions, table):
    """Every method's bootstrap from the table's seed: the CI strings are summarize's."""
    for _, row in table.iterrows():
        pooled = predictions[predictions["method"] == row["method"]]
        summary = summarize(
            pooled["label"].to_numpy(),
            pooled["prob"].to_numpy(),
            pooled["patient_key"].to_numpy(),
            n_boot=N_BOOT,
            rng=np.random.default_rng(7),
        )
        for name, stats in summary.items():
            low, high = row[f"{name}_ci"].split("-")
            assert float(low) == pytest.approx(100.0 * stats["low"], abs=0.005)
            assert float(high) == pytest.approx(100.0 * stats["high"], abs=0.005)
            assert float(low) <= float(high)


def test_a_methods_row_is_the_same_whatever_else_is_in_its_table(predictions, table):
    # Table 3 and Table 4 share the variable-frame CNN-LSTM: one row, one interval
    alone = predictions[predictions["method"] == "Variable-frame CNNLSTM"]
    row = method_table(alone, n_boot=N_BOOT, seed=7).iloc[0]
    shared = table[table["method"] == "Variable-frame CNNLSTM"].iloc[0]
    pd.testing.assert_series_equal(row, shared, check_names=False)


def test_missing_methods_are_absent():
    frame = make_predictions(["CNN_Aver", "Key_Frame"])
    table = method_table(frame, n_boot=N_BOOT, seed=0)
    assert table["method"].tolist() == ["Key_Frame", "CNN_Aver"]


@pytest.mark.parametrize(
    "empty",
    [
        pd.DataFrame(columns=["video_id", "patient_key", "fold", "method", "prob", "label"]),
        pd.DataFrame(),
    ],
)
def test_empty_predictions_give_empty_table(tmp_path, empty):
    table = method_table(empty, n_boot=N_BOOT, seed=0)
    assert len(table) == 0
    assert table.columns.tolist() == table_columns()
    lines = to_markdown(table).splitlines()
    assert len(lines) == 2
    md_path, csv_path = write_table(table, tmp_path / "empty")
    assert md_path.read_text().count("\n") == 2
    assert pd.read_csv(csv_path).columns.tolist() == table_columns()


def test_missing_columns_raise():
    frame = make_predictions(["CNN_Vote"]).drop(columns=["patient_key"])
    with pytest.raises(ValueError, match="patient_key"):
        method_table(frame, n_boot=N_BOOT, seed=0)


def test_one_class_method_gives_nan_not_an_error():
    frame = make_predictions(["CNN_Vote"])
    frame = frame[frame["label"] == 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = method_table(frame, n_boot=N_BOOT, seed=0)
    assert any(issubclass(w.category, MetricWarning) for w in caught)
    row = table.iloc[0]
    assert math.isnan(row["specificity"]) and math.isnan(row["roc_auc"])
    assert isinstance(row["specificity_ci"], float) and math.isnan(row["specificity_ci"])
    assert row["sensitivity"] >= 0.0
    assert "n/a" in to_markdown(table)


def test_markdown_has_header_and_one_row_per_method(table):
    lines = to_markdown(table).splitlines()
    assert len(lines) == 2 + len(table)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == table_columns()
    assert set(lines[1].strip("|").split("|")) <= {"---", "---:"}
    for line, method in zip(lines[2:], table["method"], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert cells[0] == method
        assert cells[2] == f"{table.loc[table['method'] == method, 'accuracy'].item():.2f}"


def test_markdown_escapes_pipes():
    frame = pd.DataFrame({"method": ["a|b"], "value": [1.234567]})
    assert to_markdown(frame).splitlines()[2] == "| a\\|b | 1.23 |"


def test_write_table_round_trips(tmp_path, table):
    md_path, csv_path = write_table(table, tmp_path / "out" / "table3.v2")
    assert md_path == tmp_path / "out" / "table3.v2.md"
    assert csv_path == tmp_path / "out" / "table3.v2.csv"
    assert md_path.read_text(encoding="utf-8") == to_markdown(table) + "\n"
    pd.testing.assert_frame_equal(pd.read_csv(csv_path), table)
