"""Mine (focal code, test-method prefix, assertion) triples from Python test files on this machine.

The seed study (ATLAS-style assertion generation) gives a model the method under test and
the test method with one assertion masked, and asks for the assertion. We build the same
from real Python: the standard library's ``test`` package and the test folders of
site-packages. Everything is ``ast`` work on file text: no test or library module is
imported. The output is deterministic for the same files: examples sorted by a hash of
their id, a train/validation/test split fixed by a hash of the test file's key (so one
file's examples never straddle splits), and a manifest with counts and sha256 hashes.
Examples that share a long token run with HumanEval (prompt, solution or tests) are dropped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from assistant.errors import AssistantError, UsageError

DATASET_VERSION = 1
PLACEHOLDER = "<AssertPlaceHolder>"
SPLITS = ("train", "validation", "test")
DEFAULT_RATIOS = (80, 10, 10)  # percent of test files per split
NGRAM = 16  # tokens in a run shared with HumanEval that excludes an example
MAX_PER_FILE = 50  # examples from one test file (a few huge files would dominate)
MAX_FOCAL_CHARS = 2500
MAX_PREFIX_CHARS = 2000
MAX_PREFIX_LINES = 40
MAX_ASSERT_CHARS = 240
MAX_FILE_BYTES = 1_000_000
TEST_DIR_NAMES = ("test", "tests")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Source:
    """Where tests come from: an import root (a sys.path entry) and test folders under it."""

    name: str  # "stdlib", "site-packages" or a folder's name
    root: Path
    test_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class Example:
    id: str  # "<file key>::<Class.test_method>"
    file: str  # the test file's key, "<source>:<relative path>"
    split: str
    focal_file: str  # the focal module's key
    focal_name: str  # "wrap" or "TextWrapper.wrap"
    focal: str  # the focal function's source
    prefix: str  # the test method up to the masked assertion, which is PLACEHOLDER
    assertion: str  # the masked statement, normalized by ast.unparse

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)


@dataclass
class BuildStats:
    files: int = 0
    examples: Counter = field(default_factory=Counter)  # per split
    skipped: Counter = field(default_factory=Counter)  # per reason


# -- sources --------------------------------------------------------------------------------------


def default_sources() -> list[Source]:
    """The running interpreter's standard library tests and its site-packages test folders."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    out = []
    if (stdlib / "test").is_dir():
        out.append(Source("stdlib", stdlib, (stdlib / "test",)))
    site = Path(paths["purelib"])
    if site.is_dir():
        dirs = sorted(
            {
                p
                for p in site.rglob("*")
                if p.name in TEST_DIR_NAMES and p.is_dir() and not _inside_test_dir(p.parent, site)
            }
        )
        if dirs:
            out.append(Source("site-packages", site, tuple(dirs)))
    return out


def folder_source(root: Path) -> Source:
    """A project folder as a source: its test folders, with the folder as the import root."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", hint="pass a folder that holds test files")
    dirs = sorted(
        {p for p in root.rglob("*") if p.name in TEST_DIR_NAMES and p.is_dir() and not _inside_test_dir(p.parent, root)}
    )
    return Source(root.name, root, tuple(dirs) or (root,))


def _inside_test_dir(path: Path, root: Path) -> bool:
    try:
        return any(part in TEST_DIR_NAMES for part in path.relative_to(root).parts)
    except ValueError:
        return False


def test_files(source: Source) -> list[Path]:
    """``test_*.py`` and ``*_test.py`` under the source's test folders, sorted."""
    files = set()
    for d in source.test_dirs:
        for p in d.rglob("*.py"):
            if (p.name.startswith("test_") or p.name.endswith("_test.py")) and "__pycache__" not in p.parts:
                files.add(p)
    return sorted(files)


def split_of(file_key: str, ratios: Sequence[int] = DEFAULT_RATIOS) -> str:
    """The split of a test file, fixed by the sha256 of its key (stable across runs and machines)."""
    bucket = int(hashlib.sha256(file_key.encode()).hexdigest(), 16) % sum(ratios)
    for name, r in zip(SPLITS, ratios):
        if bucket < r:
            return name
        bucket -= r
    return SPLITS[-1]


# -- HumanEval decontamination ---------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    t = tokens(text)
    return {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}


def humaneval_ngrams(n: int = NGRAM) -> tuple[set[tuple[str, ...]], str]:
    """Every n-token run in HumanEval's prompts, solutions and tests, and the data's sha256."""
    from assistant.evaluation.humaneval import humaneval_path, load_problems

    path = humaneval_path()
    grams: set[tuple[str, ...]] = set()
    for p in load_problems(path):
        for text in (p.prompt, p.canonical_solution, p.test):
            grams |= ngrams(text, n)
    return grams, hashlib.sha256(path.read_bytes()).hexdigest()


# -- one test file ----------------------------------------------------------------------------------


@dataclass
class _Module:
    """A focal module's functions and methods: name -> source."""

    key: str
    functions: dict[str, str]
    methods: dict[str, dict[str, str]]  # method name -> {"Class.method": source}
    classes: set[str] = field(default_factory=set)


class _Modules:
    """Resolve dotted module names to files under a source root and index them (cached)."""

    def __init__(self, source: Source):
        self.source = source
        self.cache: dict[Path, _Module | None] = {}

    def find(self, dotted: str) -> Path | None:
        if not dotted or dotted.startswith("."):
            return None
        base = self.source.root.joinpath(*dotted.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file() and not _is_test_path(p, self.source.root):
                return p
        return None

    def load(self, path: Path) -> _Module | None:
        if path not in self.cache:
            self.cache[path] = _index_module(
                path, f"{self.source.name}:{path.relative_to(self.source.root).as_posix()}"
            )
        return self.cache[path]


def _is_test_path(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return any(part in TEST_DIR_NAMES or part == "testing" for part in rel[:-1]) or rel[-1].startswith("test_")


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return None


def _source_of(text: str, lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))]) - 1
    return textwrap.dedent("".join(lines[start : node.end_lineno])).rstrip() + "\n"


def _index_module(path: Path, key: str) -> _Module | None:
    text = _read(path)
    tree = _parse(text) if text is not None else None
    if text is None or tree is None:
        return None
    lines = text.splitlines(keepends=True)
    functions: dict[str, str] = {}
    methods: dict[str, dict[str, str]] = {}
    classes: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = _source_of(text, lines, node)
        elif isinstance(node, ast.ClassDef):
            classes.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not (item.name.startswith("__") and item.name != "__init__"):
                    methods.setdefault(item.name, {})[f"{node.name}.{item.name}"] = _source_of(text, lines, item)
    return _Module(key, functions, methods, classes)


def _package_of(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).parts[:-1])


def _resolve_relative(module: str | None, level: int, package: str) -> str:
    if not level:
        return module or ""
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return ""
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


@dataclass
class _Scope:
    """What a test file's imports bind: module aliases and imported functions."""

    modules: dict[str, Path] = field(default_factory=dict)  # alias -> module file
    functions: dict[str, tuple[Path, str]] = field(default_factory=dict)  # local name -> (module file, name)
    searched: list[Path] = field(default_factory=list)  # modules whose classes a method call may hit


def _scope(tree: ast.Module, path: Path, modules: _Modules) -> _Scope:
    scope = _Scope()
    package = _package_of(path, modules.source.root)
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                found = modules.find(a.name)
                if found:
                    scope.modules[a.asname or a.name] = found
                    scope.searched.append(found)
                if not a.asname and "." in a.name:  # import a.b binds a; a.b.f() goes through a
                    top = modules.find(a.name.split(".")[0])
                    if top:
                        scope.modules.setdefault(a.name.split(".")[0], top)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, package)
            base_file = modules.find(base)
            for a in node.names:
                if a.name == "*":
                    if base_file:
                        scope.searched.append(base_file)
                        mod = modules.load(base_file)
                        for name in mod.functions if mod else ():
                            scope.functions.setdefault(name, (base_file, name))
                    continue
                sub = modules.find(f"{base}.{a.name}" if base else a.name)
                if sub:
                    scope.modules[a.asname or a.name] = sub
                    scope.searched.append(sub)
                elif base_file:
                    scope.functions[a.asname or a.name] = (base_file, a.name)
                    if base_file not in scope.searched:
                        scope.searched.append(base_file)
    return scope


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *parts]
    return None


def _class_of(call: ast.AST, scope: _Scope, modules: _Modules) -> tuple[Path, str] | None:
    """(module file, class name) when ``call`` constructs a class of an imported module."""
    if not isinstance(call, ast.Call):
        return None
    dotted = _dotted(call.func)
    if not dotted:
        return None
    if len(dotted) == 1 and dotted[0] in scope.functions:
        path, name = scope.functions[dotted[0]]
    elif len(dotted) == 2 and dotted[0] in scope.modules:
        path, name = scope.modules[dotted[0]], dotted[1]
    else:
        return None
    mod = modules.load(path)
    return (path, name) if mod and name in mod.classes else None


def _local_types(method: ast.FunctionDef, scope: _Scope, modules: _Modules) -> dict[str, tuple[Path, str] | None]:
    """Names bound in a test method: to a library class when built by its constructor, else None."""
    bound: dict[str, tuple[Path, str] | None] = {}
    for node in ast.walk(method):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node is not method:
            bound[node.name] = None
        elif isinstance(node, ast.Assign):
            kind = _class_of(node.value, scope, modules)
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        bound[n.id] = kind if isinstance(t, ast.Name) and n.id not in bound else None
        elif isinstance(node, (ast.For, ast.comprehension, ast.withitem, ast.NamedExpr, ast.AugAssign, ast.AnnAssign)):
            target = getattr(node, "target", None) or getattr(node, "optional_vars", None)
            for n in ast.walk(target) if target is not None else ():
                if isinstance(n, ast.Name):
                    bound[n.id] = None
    return bound


def _resolve_call(
    call: ast.Call, scope: _Scope, modules: _Modules, local: dict | None = None
) -> tuple[str, str, str] | None:
    """(focal module key, focal name, source) of a call, if it reaches a library function.

    ``obj.m()`` resolves to the class that built ``obj`` in the test method; for receivers
    bound elsewhere (``self.x``, globals) to the one class among the imported modules that
    defines ``m``, if there is exactly one.
    """
    local = local or {}
    func = call.func
    if isinstance(func, ast.Name):
        hit = scope.functions.get(func.id)
        if hit:
            mod = modules.load(hit[0])
            if mod and hit[1] in mod.functions:
                return mod.key, hit[1], mod.functions[hit[1]]
        return None
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr.startswith("assert") or func.attr.startswith("fail"):
        return None
    dotted = _dotted(func)
    if dotted and dotted[0] in scope.modules:  # mod.f(...) or mod.sub.f(...)
        path = scope.modules[dotted[0]]
        for part in dotted[1:-1]:
            nxt = modules.find(_dotted_name(path, modules) + "." + part)
            if nxt is None:
                break
            path = nxt
        mod = modules.load(path)
        if mod and func.attr in mod.functions:
            return mod.key, func.attr, mod.functions[func.attr]
        return None
    if func.attr.startswith("_"):
        return None
    receiver = func.value
    built = _class_of(receiver, scope, modules)
    if isinstance(receiver, ast.Name) and receiver.id in local:
        built = local[receiver.id]
        if built is None:
            return None
    if built is not None:
        mod = modules.load(built[0])
        if mod is None:
            return None
        qual = f"{built[1]}.{func.attr}"
        src = mod.methods.get(func.attr, {}).get(qual)
        return (mod.key, qual, src) if src else None
    owners = []
    for path in scope.searched:  # obj.method(...): a method of a class in an imported module
        mod = modules.load(path)
        if mod is None:
            continue
        for qual, src in mod.methods.get(func.attr, {}).items():
            owners.append((mod.key, qual, src))
    if len({o[1] for o in owners}) == 1:
        return owners[0]
    return None


def _dotted_name(path: Path, modules: _Modules) -> str:
    rel = path.relative_to(modules.source.root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_assertion(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Assert):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        f = stmt.value.func
        return (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "self"
            and f.attr.startswith("assert")
        )
    return False


def _calls(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)]


def _test_methods(tree: ast.Module) -> Iterable[tuple[str, ast.FunctionDef]]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    yield f"{node.name}.{item.name}", item


def mine_file(
    path: Path, source: Source, modules: _Modules, stats: BuildStats
) -> list[tuple[str, str, str, str, str, str]]:
    """(name, focal key, focal name, focal source, prefix, assertion) for each usable test method."""
    text = _read(path)
    tree = _parse(text) if text is not None else None
    if text is None or tree is None:
        stats.skipped["unreadable test file"] += 1
        return []
    lines = text.splitlines(keepends=True)
    scope = _scope(tree, path, modules)
    out = []
    for name, method in _test_methods(tree):
        found = _mine_method(method, lines, scope, modules, stats)
        if found:
            out.append((name, *found))
        if len(out) >= MAX_PER_FILE:
            break
    return out


def _mine_method(method: ast.FunctionDef, lines: list[str], scope: _Scope, modules: _Modules, stats: BuildStats):
    body = method.body
    local = _local_types(method, scope, modules)
    for i, stmt in enumerate(body):
        if not _is_assertion(stmt):
            continue
        focal = None
        for call in _calls(stmt):
            focal = _resolve_call(call, scope, modules, local)
            if focal:
                break
        if focal is None:
            for prev in reversed(body[:i]):
                for call in _calls(prev):
                    focal = _resolve_call(call, scope, modules, local)
                    if focal:
                        break
                if focal:
                    break
        if focal is None:
            continue
        assertion = ast.unparse(stmt)
        start = min([method.lineno, *(d.lineno for d in method.decorator_list)]) - 1
        blank = re.match(r"[ \t]*", lines[stmt.lineno - 1])
        assert blank is not None  # [ \t]* matches at the start of every string
        indent = blank.group(0)
        raw = "".join(lines[start : stmt.lineno - 1]) + indent + PLACEHOLDER + "\n"
        prefix = textwrap.dedent(raw)
        if len(assertion) > MAX_ASSERT_CHARS or "\n" in assertion:
            stats.skipped["assertion too long"] += 1
        elif len(prefix) > MAX_PREFIX_CHARS or prefix.count("\n") > MAX_PREFIX_LINES:
            stats.skipped["prefix too long"] += 1
        elif len(focal[2]) > MAX_FOCAL_CHARS:
            stats.skipped["focal too long"] += 1
        else:
            return (*focal, prefix, assertion)
        return None
    stats.skipped["no assertion with a focal function"] += 1
    return None


# -- the whole dataset ------------------------------------------------------------------------------


def build_dataset(
    out: Path,
    sources: Sequence[Source] | None = None,
    *,
    ratios: Sequence[int] = DEFAULT_RATIOS,
    exclude: set[tuple[str, ...]] | None = None,
    exclude_sha256: str = "",
    on_file: Callable[[int, int], None] | None = None,
) -> dict:
    """Mine every source into ``out``: ``{train,validation,test}.jsonl`` and ``manifest.json``.

    ``exclude`` is a set of token n-grams (HumanEval's by default); an example any of whose
    parts contains one is dropped. Files are written atomically; the manifest last.
    """
    from assistant.atomic import atomic_write_text

    if len(ratios) != 3 or any(r < 0 for r in ratios) or not sum(ratios):
        raise UsageError(f"split ratios must be three non-negative numbers, not {tuple(ratios)}")
    sources = list(default_sources() if sources is None else sources)
    if not sources:
        raise AssistantError(
            "no test files to mine: this Python has no `test` package and no test folders in site-packages",
            hint="pass a folder with --source DIR",
        )
    if exclude is None:
        exclude, exclude_sha256 = humaneval_ngrams()
    n = len(next(iter(exclude))) if exclude else NGRAM
    stats = BuildStats()
    rows: dict[str, list[Example]] = {s: [] for s in SPLITS}
    files_meta = []
    all_files = [(s, p) for s in sources for p in test_files(s)]
    for k, (source, path) in enumerate(all_files):
        if on_file:
            on_file(k, len(all_files))
        key = f"{source.name}:{path.relative_to(source.root).as_posix()}"
        split = split_of(key, ratios)
        modules = _modules_for(source)
        mined = mine_file(path, source, modules, stats)
        stats.files += 1
        kept = 0
        for name, focal_key, focal_name, focal_src, prefix, assertion in mined:
            if exclude and any(g in exclude for part in (focal_src, prefix, assertion) for g in ngrams(part, n)):
                stats.skipped["shares a HumanEval n-gram"] += 1
                continue
            rows[split].append(
                Example(f"{key}::{name}", key, split, focal_key, focal_name, focal_src, prefix, assertion)
            )
            kept += 1
        if kept:
            files_meta.append(
                {"file": key, "split": split, "examples": kept, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            )
    out = Path(out)
    split_meta = {}
    for split in SPLITS:
        ordered = sorted(rows[split], key=lambda e: (hashlib.sha256(e.id.encode()).hexdigest(), e.id))
        text = "".join(e.to_json() + "\n" for e in ordered)
        atomic_write_text(out / f"{split}.jsonl", text)
        split_meta[split] = {
            "examples": len(ordered),
            "files": len({e.file for e in ordered}),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        stats.examples[split] = len(ordered)
    manifest = {
        "version": DATASET_VERSION,
        "placeholder": PLACEHOLDER,
        "ratios": dict(zip(SPLITS, ratios)),
        "split_rule": "sha256(test file key) mod sum(ratios), in the order train, validation, test",
        "sources": [{"name": s.name, "root": str(s.root), "test_dirs": len(s.test_dirs)} for s in sources],
        "test_files_scanned": stats.files,
        "splits": split_meta,
        "skipped": dict(sorted(stats.skipped.items())),
        "decontamination": {"against": "HumanEval", "ngram_tokens": n, "sha256": exclude_sha256},
        "files": files_meta,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


_MODULES_CACHE: dict[Source, _Modules] = {}


def _modules_for(source: Source) -> _Modules:
    if source not in _MODULES_CACHE:
        _MODULES_CACHE.clear()  # one source at a time: keep memory bounded
        _MODULES_CACHE[source] = _Modules(source)
    return _MODULES_CACHE[source]


def default_dataset_dir() -> Path:
    from assistant.store.paths import cache_dir

    return cache_dir() / "assert-dataset" / f"v{DATASET_VERSION}"


def load_split(directory: Path, split: str = "test", limit: int | None = None) -> list[Example]:
    """A split's examples in the file's (hash) order; ``limit`` takes the first N."""
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    path = Path(directory) / f"{split}.jsonl"
    if not (Path(directory) / "manifest.json").is_file() or not path.is_file():
        raise UsageError(
            f"{directory} holds no assertion dataset (manifest.json and {split}.jsonl)",
            hint="build one with `python -m assistant.asserts.dataset DIR`, or leave out --dataset",
        )
    out: list[Example] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            try:
                out.append(Example(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise UsageError(f"{path}:{i}: not an assertion example ({e})", hint="rebuild the dataset") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m assistant.asserts.dataset OUT [--source DIR ...]``: build and print the manifest's counts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m assistant.asserts.dataset", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        default=[],
        help="a folder to mine (default: stdlib and site-packages tests)",
    )
    args = parser.parse_args(argv)
    try:
        sources = [folder_source(s) for s in args.source] or None
        manifest = build_dataset(args.out, sources)
    except AssistantError as e:
        print(f"error: {e}")
        return e.exit_code
    print(json.dumps({"splits": manifest["splits"], "skipped": manifest["skipped"]}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
