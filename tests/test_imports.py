"""The house rules of the package's imports: stages meet at the layer, the schemas and the
bundles, never in each other's modules, and nothing imports in a circle.

Three layers: the base (configuration, layout, schemas, bundles, models, the runner,
evaluation, ...) imports no stage; a stage (``synth``, ``ingest``, ``classify``, ``reid``,
``detect``, ``predict``, ``index``, ``export``) imports the base only; a driver (``tune``,
``score``, ``demo``, ``cli``: what runs stages) may import stages. Every import counts, those inside
functions too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "usv_ray"
STAGES = {"synth", "ingest", "classify", "reid", "detect", "predict", "index", "export"}
DRIVERS = {"tune", "score", "demo", "cli"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The usv_ray modules ``path`` imports (``from usv_ray.x import y``: ``usv_ray.x.y``
    when that is a module, else ``usv_ray.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("usv_ray")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("usv_ray"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _layer(module: str) -> str:
    top = _top(module)
    return "stage" if top in STAGES else "driver" if top in DRIVERS else "base"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_from_the_layers_below_or_its_own_stage(module):
    layer, top = _layer(module), _top(module)
    for imported in sorted(GRAPH[module]):
        other = _layer(imported)
        if layer == "base":
            assert other == "base", f"{module} (base) imports the {other} {imported}"
        elif layer == "stage":
            assert other == "base" or _top(imported) == top, (
                f"{module} imports {imported}: stages meet at the layer, the schemas and "
                "the bundles, not in each other's modules"
            )


def test_no_module_imports_in_a_circle():
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(GRAPH.get(module, ())):
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported) :], imported]
                pytest.fail("an import cycle: " + " -> ".join(cycle))
            if imported in GRAPH and state.get(imported) is None:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(GRAPH):
        if state.get(module) is None:
            visit(module, [module])


def test_the_layers_cover_every_top_level_module():
    tops = {_top(m) for m in MODULES} - {""}
    assert tops >= STAGES | DRIVERS, "a stage or driver of this test is gone from the package"
