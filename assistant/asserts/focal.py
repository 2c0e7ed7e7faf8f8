"""Find the functions a test generator should target in a Python file, with their context.

Pure ``ast`` work on the file's text: nothing here imports or runs the module (its import
side effects and slow code only ever run inside the sandbox).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from assistant.errors import UsageError

MAX_SOURCE_CHARS = 4000  # a focal function's source in a prompt; longer bodies are cut
MAX_INIT_CHARS = 1500  # a class's __init__ shown as context for its methods


@dataclass(frozen=True)
class Focal:
    """One function or method under test and what the model needs to know about it."""

    name: str  # "add" or "Stack.push": what --function selects and the table shows
    attr: str  # the name a test calls: "add" or "push"
    class_name: str | None
    lineno: int
    signature: str  # "def add(a, b)" / "def push(self, item)"
    docstring: str | None
    source: str  # decorators, signature, docstring and body
    class_context: str = ""  # for methods: the class line, its docstring and __init__
    is_property: bool = False  # read as ``obj.name``, never called

    @property
    def is_method(self) -> bool:
        return self.class_name is not None


@dataclass(frozen=True)
class ModuleInfo:
    """A parsed module: its path, import name, top-level imports and focal functions."""

    path: Path
    name: str  # the file's stem
    source: str
    imports: str  # the module's top-level import statements, one per line
    focal: tuple[Focal, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        return [f.name for f in self.focal]


def read_module(path: Path) -> str:
    """The file's text, or a one-line error saying what is wrong with the path."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="pass the path of a Python file")
    if path.is_dir():
        raise UsageError(f"{path} is a directory", hint="pass one Python file, e.g. pkg/module.py")
    if path.suffix != ".py":
        raise UsageError(f"{path} is not a .py file", hint="pass the path of a Python source file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})", hint="save it as UTF-8") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def parse_module(path: Path, source: str | None = None) -> ModuleInfo:
    """Parse ``path`` (or ``source``) and collect its public functions and methods."""
    path = Path(path)
    source = read_module(path) if source is None else source
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise UsageError(
            f"{path}:{e.lineno}: syntax error: {e.msg}",
            hint="fix the file so that Python can parse it, then run again",
        ) from None
    except ValueError as e:  # null bytes
        raise UsageError(f"{path}: cannot parse: {e}") from None
    imports = "\n".join(
        ast.get_source_segment(source, n) or ast.unparse(n)
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
    )
    focal: list[Focal] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            focal.append(_focal(source, node, None, ""))
        elif isinstance(node, ast.ClassDef):
            context = _class_context(source, node)
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    focal.append(_focal(source, item, node.name, context))
    return ModuleInfo(path, path.stem, source, imports, tuple(focal))


def select(info: ModuleInfo, wanted: Sequence[str] = ()) -> list[Focal]:
    """Public functions and methods of public classes, or those named (``f``, ``C.m`` or ``C``).

    An async function cannot be called from an ``assert``; it is never selected.
    """
    if not wanted:
        chosen = [f for f in info.focal if _public(f)]
        if not chosen:
            raise UsageError(
                f"{info.path} defines no public function or method",
                hint="name private ones with --function NAME",
            )
        return chosen
    chosen, unknown = [], []
    for w in wanted:
        matches = [f for f in info.focal if f.name == w or (f.class_name == w and not f.attr.startswith("_"))]
        if not matches:
            unknown.append(w)
        chosen.extend(m for m in matches if m not in chosen)
    if unknown:
        available = ", ".join(f.name for f in info.focal) or "none"
        raise UsageError(
            f"{info.path} has no function or method named {', '.join(map(repr, unknown))}",
            hint=f"choose from: {available}",
        )
    return chosen


def _public(f: Focal) -> bool:
    return not f.attr.startswith("_") and not (f.class_name or "").startswith("_")


def _focal(source: str, node: ast.FunctionDef, class_name: str | None, context: str) -> Focal:
    text = _segment(source, node)
    if len(text) > MAX_SOURCE_CHARS:
        text = text[:MAX_SOURCE_CHARS].rsplit("\n", 1)[0] + "\n    ...  # (cut)\n"
    args = ast.unparse(node.args)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return Focal(
        name=f"{class_name}.{node.name}" if class_name else node.name,
        attr=node.name,
        class_name=class_name,
        lineno=node.lineno,
        signature=f"def {node.name}({args}){returns}",
        docstring=ast.get_docstring(node),
        source=text,
        class_context=context,
        is_property=any(ast.unparse(d).split(".")[-1] in ("property", "cached_property") for d in node.decorator_list),
    )


def _segment(source: str, node: ast.stmt) -> str:
    """The node's source with its decorators, dedented to column 0."""
    import textwrap

    lines = source.splitlines(keepends=True)
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))]) - 1
    return textwrap.dedent("".join(lines[start : node.end_lineno])).rstrip() + "\n"


def _class_context(source: str, cls: ast.ClassDef) -> str:
    """``class C(Base):``, its docstring and its ``__init__``: how to build an instance."""
    bases = ", ".join(ast.unparse(b) for b in [*cls.bases, *cls.keywords])
    head = f"class {cls.name}({bases}):\n" if bases else f"class {cls.name}:\n"
    doc = ast.get_docstring(cls)
    if doc:
        head += '    """' + doc.replace('"""', "'''").replace("\n", "\n    ") + '"""\n'
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        text = _segment(source, init)
        if len(text) > MAX_INIT_CHARS:
            text = text[:MAX_INIT_CHARS].rsplit("\n", 1)[0] + "\n    ...  # (cut)\n"
        head += "".join("    " + line if line.strip() else line for line in text.splitlines(keepends=True))
    elif not doc:
        head += "    ...\n"
    return head


def import_root(path: Path) -> tuple[Path, str]:
    """(the sys.path entry, the dotted import name) of a file, walking up through packages.

    ``pkg/sub/mod.py`` with ``__init__.py`` in ``pkg`` and ``sub`` is ``pkg.sub.mod`` under
    ``pkg``'s parent, so that its relative imports work; a loose file is just its stem.
    """
    path = Path(path).resolve()
    parts = [path.stem]
    parent = path.parent
    while (parent / "__init__.py").is_file() and parent.name.isidentifier() and parent.parent != parent:
        parts.insert(0, parent.name)
        parent = parent.parent
    if path.stem == "__init__":
        parts.pop()
    return parent, ".".join(parts)
