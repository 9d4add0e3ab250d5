"""Structure: no import circle among the project's modules (imports inside functions count) and no
module over 500 lines, so the code stays readable part by part as features are added.

Read from the source with `ast`, not by importing, so an import hidden in a function body is
seen just like one at the top of a file. Imports under `if TYPE_CHECKING:` never run and are
left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "annotation", "napari_ctvqa")
MAX_LINES = 500
# Generated-style files that are long by nature (one alembic migration holds the whole schema).
SIZE_EXEMPT = ("annotation/migrations/",)
# The CLI defers every heavy import into its commands so `ctvqa --help` stays instant
# (docs/architecture.md); elsewhere a function-level import needs a comment saying why.
DEFERRED_IMPORT_FOLDERS = ("napari_ctvqa/cli/",)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return hidden


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function?) for every import `path` can run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = _type_checking_nodes(tree)
    top_level = {id(n) for n in tree.body} | {id(c) for n in tree.body if isinstance(n, ast.If | ast.Try)
                                             for c in ast.walk(n) if isinstance(c, ast.Import | ast.ImportFrom)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.split(".")[0] not in PACKAGES:
                continue
            while target not in modules and "." in target:  # `import a.b.attr` style names
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.append((target, node.lineno, id(node) not in top_level))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_files()
    return {name: {t for t, _, _ in imports_of(name, path, modules)} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    (tmp_path / "model").mkdir()
    source = tmp_path / "model" / "x.py"
    source.write_text("def f():\n    from model import y\n")
    found = imports_of("model.x", source, {"model": tmp_path / "model", "model.x": source, "model.y": source})
    assert ("model.y", 2, True) in found


def test_no_import_circle_in_the_project() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert cycles(graph) == [], "import circles (imports inside functions count)"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_500_lines(package: str) -> None:
    too_long = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and not rel.startswith(SIZE_EXEMPT):
            too_long[rel] = lines
    assert too_long == {}


def _explained(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or above the block of imports it belongs to."""
    if "#" in lines[index]:
        return True
    while index > 0 and (lines[index - 1].strip().startswith(("from ", "import ")) or not lines[index - 1].strip()):
        index -= 1
    return index > 0 and lines[index - 1].strip().startswith("#")


def test_function_level_project_imports_say_why() -> None:
    """An import of our own code inside a function hides a dependency; allowed only to defer a heavy
    module, with a comment on the line or the line above (the CLI defers by convention)."""
    modules = project_files()
    silent = []
    for name, path in modules.items():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(DEFERRED_IMPORT_FOLDERS):
            continue
        lines = path.read_text().splitlines()
        for _, line, in_function in imports_of(name, path, modules):
            if in_function and not _explained(lines, line - 1):
                silent.append(f"{rel}:{line}")
    assert sorted(set(silent)) == []
