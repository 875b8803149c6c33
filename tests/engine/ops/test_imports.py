"""engine.ops imports point one way (package -> op modules -> dispatch -> _build):
no module of the package imports, at any level (lazy imports inside functions
included), a module that leads back to itself."""
from __future__ import annotations

import ast
import pathlib

import engine.ops

PACKAGE_DIR = pathlib.Path(engine.ops.__file__).resolve().parent
SUBMODULES = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"}


def _imports(path: pathlib.Path) -> set[str]:
    """The engine.ops modules ``path`` imports ("__init__" for names taken from the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "engine.ops" else [
                f"engine.ops.{alias.name}" if alias.name in SUBMODULES else "engine.ops" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "engine.ops":
                found.add("__init__")
            elif name.startswith("engine.ops."):
                found.add(name.split(".")[2])
    return found


def test_the_import_graph_has_no_cycles():
    graph = {p.stem: _imports(p) - {p.stem} for p in PACKAGE_DIR.glob("*.py")}
    assert graph["upfirdn2d"] == {"dispatch"} and graph["dispatch"] == {"_build"}  # the graph is really read
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
