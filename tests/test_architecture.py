"""The architecture stays what the README says: layers point down, no import cycles, short files.

Layers, lowest first: the ground ``emoji3d`` (config schema, errors, texts,
safe image decoding) → ``storage`` → ``engine`` and ``bots`` (side by side)
→ the shell ``shell`` (CLI, commands, serve, scheduler, supervisor). A package
imports only packages below it. One deliberate exception: the bots validate
uploads with the engine's torch-free face front end and sticker verifier
(``engine.face`` and ``engine.stickers``); the engine never imports the bots.

Every import statement counts, including those inside functions, except the
ones under ``if TYPE_CHECKING:``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
RANK = {"emoji3d": 0, "storage": 1, "engine": 2, "bots": 2, "shell": 3}
SIDEWAYS_ALLOWED = {"bots": ("engine.face", "engine.stickers")}
MAX_LINES = 600
LONG_FILE_NOTE = "over 600 lines because"


def _module_files() -> dict[str, pathlib.Path]:
    out = {}
    for package in RANK:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _resolve(name: str) -> str | None:
    """The first-party module an import name refers to (longest existing prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names = [parent] + [f"{parent}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_packages_import_only_packages_below_them():
    wrong = []
    for module, targets in GRAPH.items():
        own = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other == own or RANK[other] < RANK[own]:
                continue
            if target.startswith(SIDEWAYS_ALLOWED.get(own, ())) and RANK[other] == RANK[own]:
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_between_modules():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_claim_to():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "storage.jobs" in GRAPH["storage.packs"]  # function-level and top-level imports are both seen
    assert "shell.scheduler" in GRAPH["shell.commands.serve"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_product_files_are_short_or_say_why(module):
    text = MODULES[module].read_text()
    lines = text.count("\n") + 1
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert LONG_FILE_NOTE in doc.lower(), (
            f"{MODULES[module].relative_to(REPO)} has {lines} lines; split it, or say in its docstring "
            f"why it is {LONG_FILE_NOTE} ...")
