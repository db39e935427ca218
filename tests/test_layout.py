"""The package's layout: no import cycle (a test walks every module's imports with ast), package
imports at the top of each module (only the modules in `DEFERRED_ADEPT_IMPORTS` import package
modules inside functions, each for the reason given there), and no module over `MAX_MODULE_LINES`
lines, so each one stays a page of the method a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "adept"
MAX_MODULE_LINES = 450  # issue #32: split a module by responsibility before it grows past this

# Module -> why it may import other package modules inside functions (issue #32); every other
# module imports them at the top.
DEFERRED_ADEPT_IMPORTS = {
    "cli": "each handler imports its stage runner, so `adept --help` imports neither torch nor transformers",
}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions alike."""
    modules = {path.stem for path in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adept":
                parts = node.module.split(".")
                deps |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                deps |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("adept.")}
        graph[path.stem] = (deps & modules) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "packing" in import_graph()["training"]


def deferred_adept_imports(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Module -> ``"line: module"`` for each package import inside a function body, for modules with any."""
    found = {}
    for path in sorted(package.glob("*.py")):
        hits = set()
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "adept"):
                    hits.add((node.lineno, "." * node.level + (node.module or "")))
                elif isinstance(node, ast.Import):
                    hits |= {(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "adept"}
        if hits:
            found[path.stem] = [f"{line}: {module}" for line, module in sorted(hits)]
    return found


def test_package_imports_sit_at_the_top_of_each_module():
    deferred = deferred_adept_imports()
    misplaced = {module: hits for module, hits in deferred.items() if module not in DEFERRED_ADEPT_IMPORTS}
    assert not misplaced, "package imports inside functions (move them to the top of the module): " + "; ".join(
        f"{module}.py {', '.join(hits)}" for module, hits in misplaced.items()
    )
    stale = set(DEFERRED_ADEPT_IMPORTS) - set(deferred)
    assert not stale, f"DEFERRED_ADEPT_IMPORTS lists modules that defer no package import: {sorted(stale)}"


def test_the_deferred_import_finder_finds_imports_in_functions(tmp_path):
    (tmp_path / "top.py").write_text("from adept.config import load_config\nimport torch\n")
    (tmp_path / "inner.py").write_text(
        "def f():\n    import json\n    from adept.config import load_config\n\n"
        "class C:\n    def g(self):\n        import adept.training\n"
    )
    assert deferred_adept_imports(tmp_path) == {"inner": ["3: adept.config", "7: adept.training"]}


def oversized_modules(package: Path = PACKAGE, limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    """Module file name -> its line count (as ``wc -l`` counts them), for every module over ``limit``."""
    counts = {path.name: path.read_bytes().count(b"\n") for path in sorted(package.glob("*.py"))}
    return {name: count for name, count in counts.items() if count > limit}


def test_no_module_is_over_the_line_limit():
    oversized = oversized_modules()
    assert not oversized, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): " + ", ".join(
        f"{name} ({count} lines)" for name, count in oversized.items()
    )


def test_the_size_check_names_the_module_and_its_count(tmp_path):
    (tmp_path / "small.py").write_text("x = 1\n" * 3)
    (tmp_path / "big.py").write_text("x = 1\n" * 5)
    assert oversized_modules(tmp_path, limit=4) == {"big.py": 5}
