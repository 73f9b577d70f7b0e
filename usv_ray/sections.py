"""A stage's section of the report, described by the stage itself in ``report.json``.

Each stage ends its run by describing its output folder (``describe`` in its ``report``
module): the section's title and place among the others, where its results came from (the
data folder, counts from its own tables, its record's fingerprint), its settings, notes for
the report's header, and its items in order: tables, figures, texts, JSON files shown as
fields. :mod:`usv_ray.report` renders every ``report.json`` it finds and knows no stage.

Every path in a section is relative to the stage folder, so a folder moved or copied
elsewhere still renders. This module is the model and the machinery every stage shares
(listing a folder's tables and figures, flattening a record's settings, the general column
headings); a stage's own titles, headings and counts live in its ``report`` module. One
idea in one file, past 500 lines on purpose: the section model and its reader and writer
change together.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from usv_ray.errors import UsvRayError

FORMAT = 1  # of report.json: a renderer reads only the formats it knows
REPORT_NAME = "report.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
NO_RESULTS = "no results yet (the stage did not finish)"

# Column headings in words for the metrics every stage's tables share; a stage adds its
# own per table where one name means something else there. A column with a ``<name>_ci``
# partner gets " (95% CI)" and the interval in its cells when rendered.
HEADINGS = {
    "method": "Method",
    "n_videos": "Videos",
    "accuracy": "Accuracy, %",
    "precision": "PPV (precision), %",
    "sensitivity": "Sensitivity, %",
    "specificity": "Specificity, %",
    "f1": "F1, %",
    "roc_auc": "ROC AUC, %",
    "average_precision": "Average precision, %",
    "model": "Model",
    "split": "Patients",
    "pairs": "Pairs",
    "same": "Same-nodule pairs",
    "threshold": "Decision threshold",
    "ACC": "Accuracy, %",
    "SE": "Sensitivity, %",
    "SP": "Specificity, %",
    "AUC": "ROC AUC, %",
    "models": "Models",
    "p_value": "p",
}
# Cell values in words, per column, for every stage's tables.
VALUES = {"split": {"train": "training", "val": "validation", "test": "test"}}
# Titles of the per-method figures usv_ray.evaluate.plots draws, by file-name prefix.
PREFIX_TITLES = {
    "confusion_": "Confusion matrix: ",
    "probabilities_": "Predicted probabilities: ",
    "reliability_": "Reliability diagram: ",
}
# Figure order within a section: summary curves first, then per-method plots.
FIGURE_ORDER = (
    "roc", "pr", "roc_val", "roc_test", "confusion_", "probabilities_", "reliability_",
)  # fmt: skip


class ReportError(UsvRayError, ValueError):
    """The report cannot be written: no output folder, or a file it reads that is not what
    it should be (a record or a report.json that is not JSON, or not a section)."""


class FormatError(ReportError):
    """A report.json of a format this usv_ray does not read (a newer or older one wrote it)."""


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Table:
    """A table the stage wrote: its CSV (shown as a clinician reads it) and/or Markdown."""

    title: str
    csv: str | None  # relative to the stage folder, e.g. "tables/table4.csv"
    md: str | None  # the stage's own rendering, shown when there is no CSV
    headings: dict[str, str] = field(default_factory=dict)  # column -> heading in words
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # column -> cell words
    float_format: str = "auto"  # "auto" (two decimals; two digits under 0.1) or a spec


@dataclass(frozen=True)
class Figure:
    title: str
    path: str  # relative to the stage folder


@dataclass(frozen=True)
class Text:
    title: str
    path: str  # a file shown as it is (e.g. tune's best.yaml)


@dataclass(frozen=True)
class Fields:
    title: str
    path: str  # a JSON file (e.g. a summary.json) shown as a table of its fields, flattened


Item = Table | Figure | Text | Fields
ITEM_KINDS: dict[str, type] = {"table": Table, "figure": Figure, "text": Text, "fields": Fields}


@dataclass(frozen=True)
class Record:
    """The stage's record (``<stage>.json``: settings and fingerprint); ``path`` None when
    the stage keeps one and it is not there."""

    path: str | None  # relative to the stage folder
    fingerprint: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Note:
    """A row of the report's header that a section contributes (ingest: how its patients
    were keyed); ``not_demo`` is added when the report's folder is not a demo."""

    name: str
    text: str
    not_demo: str = ""


@dataclass(frozen=True)
class Section:
    """One stage's part of the report, as its ``report.json`` holds it."""

    title: str
    order: int  # sections are shown by order, then by folder
    status: str = ""  # "" when there are results, else why none are shown
    data: str | None = None  # the data folder the stage read; None: not recorded
    provenance: tuple[str, ...] = ()  # where the results came from, in full
    tags: tuple[str, ...] = ()  # the same, short: on every table and figure
    record: Record | None = None  # None: the stage keeps no record
    settings: tuple[tuple[str, str], ...] = ()  # the record's settings, flattened
    notes: tuple[Note, ...] = ()
    items: tuple[Item, ...] = ()


# ---------------------------------------------------------------------------- report.json


def to_json(section: Section) -> dict[str, Any]:
    """``section`` as report.json holds it (with its format)."""
    kinds = {kind: name for name, kind in ITEM_KINDS.items()}
    content = asdict(section)
    content["items"] = [{"kind": kinds[type(item)], **asdict(item)} for item in section.items]
    return {"format": FORMAT, **content}


def _build(kind: type, values: Any, where: Path) -> Any:
    if not isinstance(values, Mapping):
        raise ReportError(f"{where}: expected an object for {kind.__name__}, got {values!r}")
    names = {f.name for f in fields(kind)}
    try:
        return kind(**{k: v for k, v in values.items() if k in names})
    except TypeError as exc:
        raise ReportError(f"{where}: not a {kind.__name__}: {exc}") from exc


def _item(values: Any, where: Path) -> Item:
    kind = ITEM_KINDS.get(values.get("kind")) if isinstance(values, Mapping) else None
    if kind is None:
        raise ReportError(f"{where}: not an item of a known kind: {values!r}")
    item = _build(kind, values, where)
    if isinstance(item, Table):
        float_format(item.float_format)  # a bad one fails here, not halfway through a page
    return item


def from_json(content: Mapping[str, Any], where: Path) -> Section:
    """The section that ``to_json`` wrote; ``where`` names the file in errors.

    Raises:
        FormatError: another format than :data:`FORMAT`.
        ReportError: not a section.
    """
    if content.get("format") != FORMAT:
        raise FormatError(
            f"{where} is report.json format {content.get('format')!r}; this usv_ray reads "
            f"format {FORMAT}"
        )
    try:
        record = content.get("record")
        values = {
            **content,
            "provenance": tuple(str(line) for line in content.get("provenance", ())),
            "tags": tuple(str(tag) for tag in content.get("tags", ())),
            "record": None if record is None else _build(Record, record, where),
            "settings": tuple((str(k), str(v)) for k, v in content.get("settings", ())),
            "notes": tuple(_build(Note, note, where) for note in content.get("notes", ())),
            "items": tuple(_item(item, where) for item in content.get("items", ())),
        }
    except ReportError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a setting that is not a pair
        raise ReportError(f"{where} is not a report section: {exc!r}") from exc
    section = _build(Section, values, where)
    if not isinstance(section.title, str) or not isinstance(section.order, int):
        raise ReportError(f"{where} is not a report section: no title or order")
    return section


def write_section(section: Section, path: str | Path) -> Path:
    """Write ``section`` to ``path`` (a stage folder's report.json) atomically."""
    from usv_ray.io import write_json

    return write_json(to_json(section), path)


def read_section(path: str | Path) -> Section:
    """The section in ``path`` (a report.json).

    Raises:
        FormatError: written in another format.
        ReportError: missing, not JSON, or not a section.
    """
    content = read_json(Path(path))
    if content is None:
        raise ReportError(f"{path} not found")
    return from_json(content, Path(path))


# ---------------------------------------------------------------------------- cells


_INTERVAL = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s*-\s*(-?\d+(?:\.\d*)?)\s*$")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_interval(value: Any, low: Any = None, high: Any = None) -> str:
    """``74.3 (61.7–85.7)``: a value and its 95% interval, one decimal; ``n/a`` for none.

    ``low`` may be the stages' ``"61.70-85.71"`` string, with ``high`` left out.
    """
    if _is_missing(value):
        return "n/a"
    if isinstance(low, str) and high is None:
        match = _INTERVAL.match(low)
        if match is None:
            return f"{float(value):.1f} ({low})"
        low, high = (float(bound) for bound in match.groups())
    if _is_missing(low) or _is_missing(high):
        return f"{float(value):.1f}"
    return f"{float(value):.1f} ({float(low):.1f}\u2013{float(high):.1f})"


def p_value(value: Any) -> str:
    """A p-value as papers print it: two significant digits, ``< 0.001`` below that."""
    if _is_missing(value):
        return "n/a"
    value = float(value)
    if value < 0.001:
        return "< 0.001"
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def clinical_table(
    frame: pd.DataFrame,
    headings: Mapping[str, str] | None = None,
    values: Mapping[str, Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """A stage's CSV as a clinician reads it: each value with its 95% interval in one cell
    (a ``<name>_ci`` partner; DeLong's ``difference``, ``low``, ``high``), p-values as
    papers print them, columns named by ``headings`` and cells by ``values`` (column ->
    value -> words); a column neither names keeps its name."""
    headings, values = headings or {}, values or {}
    bounds = {"difference", "low", "high"} <= set(frame.columns)
    shown: dict[str, Any] = {}
    for column in frame.columns:
        partner = str(column)[:-3] if str(column).endswith("_ci") else None
        if (partner in frame.columns) or (bounds and column in ("low", "high")):
            continue  # shown in its value's cell
        name = headings.get(column, column)
        if f"{column}_ci" in frame.columns:
            intervals = frame[f"{column}_ci"].where(frame[f"{column}_ci"].notna(), None)
            cells = [with_interval(v, ci) for v, ci in zip(frame[column], intervals, strict=True)]
            shown[f"{name} (95% CI)"] = cells
        elif bounds and column == "difference":  # DeLong: an AUC difference in [-1, 1]
            cells = [
                with_interval(100 * d, 100 * lo, 100 * hi)
                for d, lo, hi in zip(frame["difference"], frame["low"], frame["high"], strict=True)
            ]
            shown["AUC difference, points (95% CI)"] = cells
        elif column == "p_value":
            shown[name] = [p_value(v) for v in frame[column]]
        elif column in values:
            shown[name] = [values[column].get(v, v) for v in frame[column]]
        else:
            shown[name] = frame[column]
    return pd.DataFrame(shown)


def number_text(value: float) -> str:
    """Two decimals; values under 0.1 (p-values, tau) with two significant digits; NaN as
    n/a."""
    if math.isnan(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.2g}"
    return f"{value:.2f}"


def float_format(spec: str) -> Callable[[float], str]:
    """A table's float format: "auto" (:func:`number_text`) or a format spec such as ".1f"."""
    if spec == "auto":
        return number_text
    try:
        format(1.0, spec)
    except ValueError as exc:
        raise ReportError(f"float format {spec!r} is not a format spec: {exc}") from exc
    return lambda value: "n/a" if math.isnan(value) else format(value, spec)


# ---------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing; a clear error when it is not JSON."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def videos_by_split(path: Path, splits: Sequence[str]) -> tuple[str, int] | None:
    """A splits table (video_id, patient_key, split) counted per split in words ("train 4
    videos of 2 patients; val ..."), and its number of videos; None when there is no table
    (yet)."""
    table = parquet_columns(path, ["patient_key", "split"])
    if table is None:
        return None
    words = "; ".join(
        f"{split} {int((table['split'] == split).sum())} videos of "
        f"{table.loc[table['split'] == split, 'patient_key'].nunique()} patients"
        for split in splits
    )
    return words, len(table)


def parquet_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    """``columns`` of a Parquet table, or None when there is no table (yet)."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    return pq.read_table(path, columns=list(columns)).to_pandas()


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists joined with commas."""
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}{key}."))
        return flat
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:.6g}"
    elif value is None or isinstance(value, bool):
        value = json.dumps(value)  # as the record spells it: null, true, false
    return {prefix.rstrip("."): str(value)}


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to the stage ``folder`` (``..`` where it lies above it)."""
    return Path(os.path.relpath(path, folder)).as_posix()


def stage_record(path: Path, folder: Path) -> tuple[Record, dict[str, Any]] | None:
    """The record a :class:`usv_ray.layout.StageRun` wrote at ``path`` (a JSON with a
    fingerprint), named relative to the stage ``folder``, and its content; None if none."""
    content = read_json(path)
    if content is None or "fingerprint" not in content:
        return None
    seconds = content.get("seconds")
    seconds = float(seconds) if isinstance(seconds, int | float) else None
    return Record(_relative(path, folder), str(content["fingerprint"]), seconds), content


def settings_of(content: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A record's settings, flattened: its config sections, inputs and summary."""
    kept = {k: v for k, v in content.items() if k not in ("fingerprint", "seconds", "data")}
    return tuple(flatten(kept).items())


def title_of(stem: str, titles: Mapping[str, str]) -> str:
    """A table's or figure's title: the stage's for ``stem``, by prefix, else the stem."""
    if stem in titles:
        return titles[stem]
    for prefix, title in PREFIX_TITLES.items():
        if stem.startswith(prefix):
            return title + stem[len(prefix) :]
    return stem


def tables(
    folder: Path,
    root: Path,
    titles: Mapping[str, str],
    headings: Mapping[str, Mapping[str, str]] | None = None,
    first: Sequence[str] = (),
    general: bool = True,
) -> list[Table]:
    """Every table in ``folder`` (a stem with a .csv and/or .md), ``first`` ones first, then
    by name; paths relative to the stage folder ``root``. A table's headings are the
    general :data:`HEADINGS` (unless ``general`` is False) and the stage's ``headings`` of
    its stem, kept to the columns its CSV has."""
    if not folder.is_dir():
        return []
    stems = sorted({p.stem for p in folder.iterdir() if p.suffix in (".csv", ".md")})
    stems.sort(key=lambda stem: first.index(stem) if stem in first else len(first))
    found = []
    for stem in stems:
        csv, md = folder / f"{stem}.csv", folder / f"{stem}.md"
        words = {**(HEADINGS if general else {}), **(headings or {}).get(stem, {})}
        values = dict(VALUES) if general else {}
        if csv.is_file():  # only the columns it has: report.json says what it shows
            columns = {str(c) for c in pd.read_csv(csv, nrows=0).columns}
            words = {k: v for k, v in words.items() if k in columns}
            values = {k: v for k, v in values.items() if k in columns}
        paths = [_relative(path, root) if path.is_file() else None for path in (csv, md)]
        found.append(Table(title_of(stem, titles), *paths, words, values))
    return found


def _figure_rank(path: Path) -> tuple[int, str]:
    for rank, key in enumerate(FIGURE_ORDER):
        if path.stem == key or (key.endswith("_") and path.stem.startswith(key)):
            return rank, path.stem
    return len(FIGURE_ORDER), path.stem


def figures(folder: Path, root: Path, titles: Mapping[str, str]) -> list[Figure]:
    """Every image in ``folder`` in :data:`FIGURE_ORDER`, relative to the stage folder."""
    if not folder.is_dir():
        return []
    paths = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_figure_rank
    )
    return [Figure(title_of(p.stem, titles), _relative(p, root)) for p in paths]


def fields_of(path: Path, root: Path, title: str) -> list[Fields]:
    """A JSON file (e.g. summary.json) as a table of its fields, when it is there."""
    return [Fields(title, _relative(path, root))] if path.is_file() else []


def stage_section(
    title: str,
    order: int,
    *,
    data: str | Path | None,
    counts: tuple[str, str] | None,
    record: tuple[Record, Mapping[str, Any]] | None,
    keeps_record: bool = True,
    items: Iterable[Item] = (),
) -> Section:
    """A stage's section from what its ``describe`` found.

    ``data``: the data folder it read, else the record's ``data`` entry; ``counts``: what
    it ran on, as a full line and a short tag; ``record``: :func:`stage_record`; a stage
    that ``keeps_record`` and has none says so. A section without items has no results.
    """
    content: Mapping[str, Any] = record[1] if record else {}
    recorded = content.get("data")
    if data is not None:
        data = str(Path(data).resolve())
    elif isinstance(recorded, str):
        data = recorded
    items = tuple(items)
    missing = Record(None) if keeps_record else None
    return Section(
        title,
        order,
        status="" if items else NO_RESULTS,
        data=data,
        provenance=(counts[0],) if counts else (),
        tags=(counts[1],) if counts else (),
        record=record[0] if record else missing,
        settings=settings_of(content) if record else (),
        items=items,
    )


def write_training_section(
    folder: Any,
    title: str,
    order: int,
    names: tuple[Mapping[str, str], Mapping[str, Mapping[str, str]], Sequence[str]],
    counts: tuple[str, str] | None,
    data: str | Path | None,
) -> Path:
    """Write the section of a training stage's folder (classify, re-ID, detect: a
    ``StageFolder``): its tables and plots, under ``names`` (the stage's titles, headings and
    first tables), what it ran on (``counts``), the data it read and its record."""
    titles, headings, first = names
    items = [
        *tables(folder.tables, folder.root, titles, headings, first),
        *figures(folder.plots, folder.root, titles),
    ]
    section = stage_section(
        title,
        order,
        data=data,
        counts=counts,
        record=stage_record(folder.record, folder.root),
        items=items,
    )
    return write_section(section, folder.report)


def write_summary_section(
    folder: Any,
    title: str,
    order: int,
    summary_title: str,
    counts: tuple[str, str] | None,
    data: str | Path | None,
) -> Path:
    """Write the section of a nightly stage's folder (predict, index): its ``summary.json``
    as fields under ``summary_title``, what it ran on (``counts``) and the data it read."""
    section = stage_section(
        title,
        order,
        data=data,
        counts=counts,
        record=None,
        keeps_record=False,
        items=fields_of(folder.summary, folder.root, summary_title),
    )
    return write_section(section, folder.report)
