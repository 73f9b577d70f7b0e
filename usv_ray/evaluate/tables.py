"""The per-method results table (the paper's Tables 3 and 4) with patient-bootstrap 95% CIs.

``method_table`` pools a ``predictions`` table (video_id, patient_key, fold, method, prob,
label) over folds and summarises every method with :func:`usv_ray.evaluate.metrics.summarize`;
``to_markdown`` and ``write_table`` turn the result into a Markdown and a CSV file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from usv_ray.evaluate.metrics import METRICS, summarize

__all__ = ["METHOD_ORDER", "method_table", "table_columns", "to_markdown", "write_table"]

# Row order of the paper's Tables 3 and 4; methods not listed follow, alphabetically.
METHOD_ORDER: tuple[str, ...] = (
    "R(2+1)D",
    "C3D_BN",
    "R3D",
    "Key_Frame",
    "CNN_Vote",
    "CNN_Aver",
    "Equal-frame CNNLSTM",
    "Variable-frame CNNLSTM",
)
REQUIRED_COLUMNS = ("patient_key", "method", "prob", "label")


def table_columns() -> list[str]:
    """``method, n_videos``, then ``<metric>`` (percent) and ``<metric>_ci`` for each metric."""
    columns = ["method", "n_videos"]
    for name in METRICS:
        columns += [name, f"{name}_ci"]
    return columns


def _method_sort_key(method: str) -> tuple[int, str]:
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), ""
    return len(METHOD_ORDER), method


def ci_text(low: float, high: float) -> str | float:
    """``"91.20-95.40"`` in percent; NaN (not a string) when the interval is undefined."""
    if math.isnan(low) or math.isnan(high):
        return float("nan")
    return f"{100.0 * low:.2f}-{100.0 * high:.2f}"


def method_table(
    predictions: pd.DataFrame,
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int,
) -> pd.DataFrame:
    """One row per method, pooled over folds, each metric in percent with a 95% CI string.

    Columns (see ``table_columns``): ``method``; ``n_videos``, the number of prediction
    rows of the method; then for every metric of ``METRICS``, in its order, the value in
    percent (float, unrounded) and ``<metric>_ci``, the patient-bootstrap 95% interval as
    ``"low-high"`` in percent with two decimals (NaN where undefined). Threshold metrics
    use ``threshold``. The bootstrap resamples ``patient_key`` groups (see ``summarize``).

    Rows follow ``METHOD_ORDER``; unknown methods come after, alphabetically; methods
    without predictions are absent. Every method's bootstrap starts from ``seed``, so a
    method's intervals do not depend on which other methods share its table. An empty
    ``predictions`` gives an empty table with these columns. Undefined metrics (e.g. a
    method with one class) are NaN and emit a ``MetricWarning``.
    """
    columns = table_columns()
    if len(predictions) == 0:
        empty = pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
        metric_columns = list(METRICS)
        return empty.astype({"n_videos": np.int64, **dict.fromkeys(metric_columns, np.float64)})
    missing = [column for column in REQUIRED_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lacks the columns {missing}")

    rows = []
    for method in sorted(predictions["method"].unique(), key=_method_sort_key):
        pooled = predictions[predictions["method"] == method]  # every fold of the method
        summary = summarize(
            pooled["label"].to_numpy(),
            pooled["prob"].to_numpy(),
            pooled["patient_key"].to_numpy(),
            threshold=threshold,
            n_boot=n_boot,
            rng=np.random.default_rng(seed),
        )
        row: dict[str, object] = {"method": str(method), "n_videos": len(pooled)}
        for name, stats in summary.items():
            row[name] = 100.0 * stats["value"]
            row[f"{name}_ci"] = ci_text(stats["low"], stats["high"])
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"n_videos": np.int64, **dict.fromkeys(METRICS, np.float64)})


FloatFormat = str | Callable[[float], str]  # "{:.2f}", or a function of the value


def _cell(value: object, float_format: FloatFormat) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float | np.floating):
        return float_format(value) if callable(float_format) else float_format.format(value)
    # A pipe would end the cell; a newline would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame, *, float_format: FloatFormat = "{:.2f}") -> str:
    """A GitHub-flavoured Markdown table: header, separator, one line per row.

    Floats are written with ``float_format`` (a format string or a function), missing
    values as ``n/a``; numeric columns are right-aligned. The string ends without a newline.
    """
    header = [_cell(str(column), float_format) for column in table.columns]
    separator = [
        "---:" if pd.api.types.is_numeric_dtype(dtype) else "---" for dtype in table.dtypes
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(separator) + "|"]
    for values in table.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(value, float_format) for value in values) + " |")
    return "\n".join(lines)


def write_table(
    table: pd.DataFrame, stem: str | Path, *, float_format: str = "{:.2f}"
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (``to_markdown`` with ``float_format``) and ``<stem>.csv`` (full
    precision, no index).

    ``stem`` is a path without suffix (``results/table3``); its folder is created.
    Returns ``(md_path, csv_path)``.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # Appended, not with_suffix: a stem like "table.v2" keeps its dot.
    md_path = stem.parent / f"{stem.name}.md"
    csv_path = stem.parent / f"{stem.name}.csv"
    md_path.write_text(to_markdown(table, float_format=float_format) + "\n", encoding="utf-8")
    table.to_csv(csv_path, index=False)
    return md_path, csv_path
