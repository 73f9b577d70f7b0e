"""The docs a newcomer reads match the tree: the layout table names every top-level part of
the package and only paths that exist, the README stays a guide one reads through, and no
file cites one the project does not contain."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _layout_rows() -> list[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    table = text[text.index("## Layout") :]
    return [line for line in table.splitlines() if line.startswith("| `")]


def test_the_layout_table_names_every_part_of_the_package():
    named = set()
    for row in _layout_rows():
        cell = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", cell)
        base = Path(paths[0]).parent if "/" in paths[0] else Path()
        for path in paths:
            full = Path(path) if "/" in path else base / path
            assert (ROOT / full).exists(), f"docs/development.md names {full}, not in the tree"
            named.add(str(full))
    parts = {
        f"usv_ray/{p.name}"
        for p in (ROOT / "usv_ray").iterdir()
        if p.name != "__init__.py" and not p.name.startswith(("_", "."))
    }
    missing = parts - named
    assert not missing, f"docs/development.md's layout table leaves out {sorted(missing)}"


def test_the_readme_is_read_through_in_under_350_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) < 350


def test_no_file_cites_a_file_the_project_does_not_contain():
    cited = re.compile(r"\b(RAY|DESIGN|METHODS|STYLE)\.md\b")
    for path in [
        *ROOT.glob("usv_ray/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("benchmarks/*.py"),
    ]:
        if path.name == "test_docs.py":
            continue
        for match in cited.finditer(path.read_text()):
            assert (ROOT / match.group(0)).exists(), f"{path} cites {match.group(0)}"
