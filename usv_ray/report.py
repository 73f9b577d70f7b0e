"""The report of a run: one HTML page and two Markdown files from the stages' sections.

``write_report(out)`` reads an output folder laid out as ``usv-ray demo`` lays it out
(``data/``, ``classify/``, ``reid/``, ``detect/``, ``predict/``, ``index/``, ``score/``,
``tune/<target>/``: a demo's, or a real archive's stages run by hand into one folder) and
writes ``out/report.html``, a single self-contained page (images embedded as base64 data
URIs, so the file can be mailed), ``out/report.md`` (images linked relative to ``out``) and
``out/results.md``, the tables alone with no path or time in them (``make demo`` copies it
to ``docs/demo-results.md``). A rerun rewrites all three.

It knows no stage: each stage described its own section at the end of its run, in its
folder's ``report.json`` (:mod:`usv_ray.sections`: title, order, provenance, settings,
header notes, and its tables, figures and texts with their titles and column headings).
This module finds those files, orders the sections and renders them. Only the names of
the folders a run is expected to hold are known here, so that a missing one says "not
run", and one without a ``report.json`` (a stage that crashed, or an older usv_ray) says so.

The header says what the folder is (a demo on a synthetic archive, or a run on an
archive's data) and how its patients were keyed (the note ingest's section carries).
Tables read as a clinician reads them: each value with its 95% interval in one cell,
"74.3 (61.7–85.7)", columns named by what they hold. Every table and figure is labelled
with its source, the data it came from and its stage's record (the settings'
fingerprint). Everything read from a file is HTML-escaped before it reaches either page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import mimetypes
import posixpath
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from usv_ray.io import atomic_path
from usv_ray.layout import RunFolder
from usv_ray.sections import (
    REPORT_NAME,
    Fields,
    Figure,
    FormatError,
    ReportError,
    Section,
    Table,
    clinical_table,
    flatten,
    float_format,
    number_text,
    p_value,
    read_json,
    read_section,
    with_interval,
)

__all__ = [
    "RESULTS_NAME",
    "ReportError",
    "clinical_table",
    "p_value",
    "report_text",
    "with_interval",
    "write_report",
]

HTML_NAME = "report.html"
MD_NAME = "report.md"
RESULTS_NAME = "results.md"
KEYED = (
    "Patients appear only as patient_key, a keyed hash (HMAC-SHA256) of the patient ID; no "
    "table, figure or file name here holds a raw identifier. "
)
UNRECORDED_KEY = (
    "Which key ingest used is not recorded here (no data/keying.json: no data/ folder, or "
    "ingested by an older usv-ray); check it before sharing these results."
)
# Header rows that sections fill with their notes: what the row always begins with, and
# what it says when no section gave a note.
HEADER_ROWS = {"privacy": (KEYED, UNRECORDED_KEY)}
NO_SECTION = (
    f"no results yet (no {REPORT_NAME}: the stage did not finish, or an older usv_ray wrote "
    "this folder; rerun the stage)"
)


@dataclass(frozen=True)
class Placed:
    """A section and where its stage folder lies, relative to the report's folder."""

    folder: str  # e.g. "classify", "tune/tau"
    section: Section
    stamp: float | None = None  # when its report.json was written


@dataclass(frozen=True)
class Shown:
    """An item read for showing: a table's frame (or its Markdown), a figure, a text."""

    title: str
    source: str  # relative to the report's folder
    kind: str  # "table", "figure", "text" or "missing"
    frame: pd.DataFrame | None = None
    text: str = ""  # a table's own Markdown, a text's content, why a file is missing
    image: Path | None = None
    number: Callable[[float], str] | None = None


# ---------------------------------------------------------------------------- reading


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _found(out: Path, folder: Path, title: str, order: int) -> Placed:
    """The section in ``folder``, or one that says why there is none (``title``, ``order``)."""
    name = folder.relative_to(out).as_posix()
    path = folder / REPORT_NAME
    if not path.is_file():
        return Placed(name, Section(title, order, NO_SECTION))
    try:
        section = read_section(path)
    except FormatError as exc:  # one stage's newer file need not stop the report
        section = Section(title, order, f"not shown: {exc}; rerun the stage with this usv_ray")
    return Placed(name, section, path.stat().st_mtime)


def find_sections(out: Path) -> list[Placed]:
    """Every section in ``out``: each subfolder's report.json, and each of a folder of
    sections (``tune/<target>/``); the expected folders missing say "not run". By order,
    then by folder."""
    expected = {part.folder: part for part in RunFolder.PARTS}
    placed = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        known = expected.get(folder.name)
        inner = sorted(p for p in folder.iterdir() if p.is_dir())
        if (folder / REPORT_NAME).is_file() or (known is not None and not known.each):
            title = known.title if known else folder.name
            placed.append(_found(out, folder, title, known.order if known else 1000))
        elif known is not None:  # a folder of sections: every subfolder is one
            placed += [_found(out, p, f"{known.title}: {p.name}", known.order) for p in inner]
            if not inner:
                status = f"not run ({folder.name}/ holds no {known.each})"
                placed.append(Placed(folder.name, Section(known.title, known.order, status)))
        else:  # an unexpected folder of sections (a stage newer than this list)
            placed += [_found(out, p, p.name, 1000) for p in inner if (p / REPORT_NAME).is_file()]
    for e in RunFolder.PARTS:
        if not (out / e.folder).is_dir():
            status = f"not run (no {e.folder}/ folder)"
            placed.append(Placed(e.folder, Section(e.title, e.order, status)))
    return sorted(placed, key=lambda p: (p.section.order, p.folder))


def _source(placed: Placed, path: str) -> str:
    """A path of a section (relative to its folder) relative to the report's folder."""
    return posixpath.normpath(f"{placed.folder}/{path}")


def _provenance(placed: Placed, out: Path, portable: bool = False) -> tuple[list[str], list[str]]:
    """``(lines, tags)``: the section's data folder, what it says of itself, its record.
    ``portable`` leaves out the data folder's (local, absolute) path."""
    section = placed.section
    data = f"data: {section.data}" if section.data else "data: not recorded"
    lines, tags = [data, *section.provenance], [data, *section.tags]
    record = section.record
    if record is not None and record.path is None:
        lines.append(f"config: no record (JSON with a fingerprint) in {placed.folder}")
        tags.append("config: not recorded")
    elif record is not None:
        path, fingerprint = _source(placed, record.path), str(record.fingerprint)[:12]
        line = f"config: {path}, fingerprint {fingerprint}"
        if (out / path).is_file():
            line += f", written {_stamp((out / path).stat().st_mtime)}"
        if record.seconds is not None:
            line += f", took {_duration(record.seconds)}"
        lines.append(line)
        tags.append(f"config {path} {fingerprint}")
    return lines, tags[1:] if portable else tags


def _shown(placed: Placed, out: Path) -> list[Shown]:
    """The section's items, read from the files they name."""
    shown = []
    for item in placed.section.items:
        paths = [item.csv, item.md] if isinstance(item, Table) else [item.path]
        present = [p for p in paths if p is not None and (out / _source(placed, p)).is_file()]
        source = _source(placed, present[0] if present else next((p for p in paths if p), "."))
        file = out / source
        if source.split("/")[0] == "..":  # the report embeds files of its folder alone
            text = f"{source} lies outside the output folder: not shown"
            shown.append(Shown(item.title, source, "missing", text=text))
        elif not present:
            shown.append(Shown(item.title, source, "missing", text=f"{source} not found"))
        elif isinstance(item, Table) and item.csv in present:
            frame = clinical_table(pd.read_csv(file), item.headings, item.values)
            number = float_format(item.float_format)
            shown.append(Shown(item.title, source, "table", frame, number=number))
        elif isinstance(item, Table):
            text = file.read_text(encoding="utf-8").strip()
            shown.append(Shown(item.title, source, "table", text=text))
        elif isinstance(item, Fields):
            flat = flatten(read_json(file))
            frame = pd.DataFrame({"field": list(flat), "value": list(flat.values())})
            shown.append(Shown(item.title, source, "table", frame, number=number_text))
        elif isinstance(item, Figure):
            shown.append(Shown(item.title, source, "figure", image=file))
        else:
            shown.append(Shown(item.title, source, "text", text=file.read_text(encoding="utf-8")))
    return shown


# ---------------------------------------------------------------------------- rendering


def _md_text(text: str) -> str:
    """File text in Markdown prose or tables: raw HTML is escaped, so it shows as text."""
    return html.escape(text, quote=False)


def _md_fence(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _md_table(frame: pd.DataFrame, number: Callable[[float], str] = number_text) -> str:
    from usv_ray.evaluate.tables import to_markdown

    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            continue
        shown[column] = shown[column].map(lambda v: _md_text(str(v)) if isinstance(v, str) else v)
    return to_markdown(shown, float_format=number)  # as the HTML page shows them


def _md_item(item: Shown) -> str:
    """A table's Markdown: from its CSV (as a clinician reads it), else the stage's own."""
    if item.frame is not None:
        return _md_table(item.frame, item.number or number_text)
    return _md_fence(item.text) if item.kind == "text" else _md_text(item.text)


def _settings(section: Section) -> pd.DataFrame:
    names = [name for name, _ in section.settings]
    return pd.DataFrame({"setting": names, "value": [value for _, value in section.settings]})


def render_markdown(
    sections: list[Placed],
    header: list[tuple[str, str]],
    out: Path,
    title: str,
    tables_only: bool = False,
) -> str:
    """The Markdown report, images linked relative to ``out``; ``tables_only``: the tables
    alone, with no absolute path and no time in them (results.md: a page that a rerun with
    the same results leaves unchanged, so ``make demo`` commits it)."""
    lines = [f"# {_md_text(title)}", ""]
    lines += [f"- **{name}**: {_md_text(value)}" for name, value in header]
    for placed in sections:
        section = placed.section
        items = _shown(placed, out) if not section.status else []
        if tables_only:
            items = [item for item in items if item.kind == "table"]
            if not items and not section.status:
                continue
        lines += ["", f"## {_md_text(section.title)}", ""]
        if section.status:
            lines += [f"*{_md_text(section.status)}*"]
            continue
        provenance, tags = _provenance(placed, out, portable=tables_only)
        if not tables_only:
            lines += [f"- {_md_text(line)}" for line in provenance]
        if section.settings and not tables_only:
            lines += ["", "<details><summary>settings</summary>", ""]
            lines += [_md_table(_settings(section)), "", "</details>"]
        for item in items:
            label = " · ".join([f"source: {item.source}", *tags])
            if lines[-1]:  # one blank line before every heading
                lines += [""]
            lines += [f"### {_md_text(item.title)}", "", f"*{_md_text(label)}*", ""]
            if item.kind == "figure":
                alt = _md_text(item.title).replace("]", "\\]").replace("[", "\\[")
                lines += [f"![{alt}]({urllib.parse.quote(item.source)})"]
            else:
                lines += [_md_item(item)]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.header td { padding: .1em 1em .1em 0; vertical-align: top; }
.header td:first-child { white-space: nowrap; }
.label { color: #555; font-size: .85em; margin: .2em 0 .6em; }
.status { color: #a40; font-style: italic; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-size: .85em; }
table.data th, table.data td { border: 1px solid #ccc; padding: .2em .5em; }
table.data td { text-align: right; white-space: nowrap; }
table.data td:first-child { text-align: left; } table.data th { background: #f2f2f2; }
figure { display: inline-block; width: 48%; margin: .5em 0; vertical-align: top; }
figure img { width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _html_table(frame: pd.DataFrame, number: Callable[[float], str] = number_text) -> str:
    # to_html escapes every cell and header (escape=True is its default; said for the reader)
    return frame.to_html(
        index=False, escape=True, na_rep="n/a", float_format=number, border=0, classes="data"
    )


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_item(item: Shown, label: str) -> str:
    e = html.escape
    if item.kind == "figure":
        return (
            f'<figure><img src="{_data_uri(item.image)}" alt="{e(item.title)}">'
            f"<figcaption><b>{e(item.title)}</b>{label}</figcaption></figure>"
        )
    if item.kind == "table" and item.frame is not None:
        body = f'<div class="scroll">{_html_table(item.frame, item.number or number_text)}</div>'
    elif item.kind == "missing":
        body = f'<p class="status">{e(item.text)}</p>'
    else:  # a text, or a table's own Markdown: shown as it is
        body = f"<pre>{e(item.text)}</pre>"
    return f"<h3>{e(item.title)}</h3>{label}{body}"


def render_html(
    sections: list[Placed], header: list[tuple[str, str]], out: Path, title: str
) -> str:
    """The HTML report: one self-contained page, images embedded as data URIs."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<table class="header">',
        *(f"<tr><td><b>{e(name)}</b></td><td>{e(value)}</td></tr>" for name, value in header),
        "</table>",
    ]
    for placed in sections:
        section = placed.section
        parts.append(f"<section><h2>{e(section.title)}</h2>")
        if section.status:
            parts.append(f'<p class="status">{e(section.status)}</p></section>')
            continue
        provenance, tags = _provenance(placed, out)
        parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in provenance) + "</ul>")
        if section.settings:
            table = _html_table(_settings(section))
            parts.append(f"<details><summary>settings</summary>{table}</details>")
        for item in _shown(placed, out):
            label = " · ".join([f"source: {item.source}", *tags])
            parts.append(_html_item(item, f'<p class="label">{e(label)}</p>'))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- entry point


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("usv_ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _notes(sections: list[Placed], demo: bool) -> list[tuple[str, str]]:
    """The header rows the sections' notes fill (the first section's note of a name)."""
    rows = {name: lead + default for name, (lead, default) in HEADER_ROWS.items()}
    given: set[str] = set()
    for placed in sections:
        for note in placed.section.notes:
            if note.name in given:
                continue
            given.add(note.name)
            lead = HEADER_ROWS.get(note.name, ("", ""))[0]
            rows[note.name] = lead + note.text + ("" if demo else note.not_demo)
    return list(rows.items())


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``out/report.html``, ``out/report.md`` and ``out/results.md`` from the stages'
    sections in ``out``.

    Sections: every ``report.json`` of a subfolder (and of ``tune/<target>/``), by their
    order; an expected stage without a folder is "not run". Returns ``(html_path,
    md_path)``; results.md (the tables alone, with no path or time in them) lies beside
    them. All three are written atomically.
    """
    from usv_ray.layout import RunFolder

    out = Path(out)
    if not out.is_dir():
        raise ReportError(
            f"{out} is not a folder: give the folder that `usv-ray demo --out` or the "
            "stages (data/, classify/, reid/, ...) wrote"
        )
    sections = find_sections(out)
    stamps = [placed.stamp for placed in sections if placed.stamp is not None]
    # a demo is what `usv-ray demo` writes: synth's archive beside the stages' folders
    manifest = RunFolder(out).archive / "manifest.csv"
    demo = manifest.is_file()
    if demo:
        title = "usv-ray demo report"
        what = "a `usv-ray demo` run: every stage on a synthetic archive that synth wrote"
    else:
        title = "usv-ray report"
        what = "a run on an archive's data: the stages' folders found in this output folder"
    notes = _notes(sections, demo)
    archive = [("archive", f"{manifest.resolve()} (synthetic, written by synth)")] if demo else []
    header = [
        ("folder", what),
        ("run", _stamp(max(stamps)) if stamps else "no stage section (report.json) found"),
        ("report written", _stamp(dt.datetime.now().timestamp())),
        ("usv_ray version", _version()),
        ("output folder", str(out.resolve())),
        *archive,
        *notes,
    ]
    portable = [("folder", what), ("usv_ray version", _version()), *notes]
    html_path, md_path = out / HTML_NAME, out / MD_NAME
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(sections, header, out, title), encoding="utf-8")
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(sections, header, out, title), encoding="utf-8")
    results_title = title.replace(" report", ": results")
    with atomic_path(out / RESULTS_NAME) as tmp:
        results = render_markdown(sections, portable, out, results_title, tables_only=True)
        tmp.write_text(results, encoding="utf-8")
    return html_path, md_path


def report_text(html_path: Path, md_path: Path) -> str:
    """What ``usv-ray report`` prints: where the three files are."""
    return (
        f"report: {html_path} (self-contained; Markdown: {md_path}; the tables alone: "
        f"{html_path.parent / RESULTS_NAME})"
    )
