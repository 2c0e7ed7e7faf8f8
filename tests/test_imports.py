"""The layout's rules, checked: every module imports, no import circles, wings never import the CLI."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("assistant", "distill", "export")


def project_modules() -> dict[str, Path]:
    modules = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its body (functions included: a
    deferred import is still a dependency, and a circle through one is still a circle)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_entry_points_import_the_cli():
    offenders = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        if not name.startswith("assistant.cli") and not name.endswith("__main__")
        for dep in deps
        if dep == "assistant.cli" or dep.startswith("assistant.cli.")
    ]
    assert offenders == []


def test_stages_do_not_import_each_other_except_the_pipeline():
    graph = import_graph()
    offenders = [
        f"{name} imports {dep}"
        for name, deps in graph.items()
        for dep in deps
        if name.split(".")[0] in ("distill", "export")
        and dep.split(".")[0] in ("distill", "export")
        and dep.split(".")[0] != name.split(".")[0]
        and name != "distill.pipeline"
        and not name.endswith(".cli")  # the stage CLIs may share argument types
    ]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(n for n in project_modules() if not n.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_every_wing_says_what_it_owns():
    for init in sorted((REPO / "assistant").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "\n" not in doc.strip(), f"{init.relative_to(REPO)} needs a one-line docstring"


def test_help_imports_no_heavy_module():
    code = (
        "import sys\nfrom assistant.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('llama_cpp', 'torch', 'transformers', 'numpy', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
