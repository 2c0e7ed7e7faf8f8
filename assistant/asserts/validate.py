"""Check candidate assertions against the real module in the sandbox; render and confirm the test file.

Everything that runs the module happens here, in sandboxed processes: the module is copied
into the sandbox's directory, imported there under an alarm, and each candidate runs
against a fresh view of its globals. The rendered pytest file is then run as a whole,
as pytest would run it, and optionally under coverage.py.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from assistant.asserts.pipeline import (
    ERRORED, KEPT, AssertsConfig, Candidate, Coverage, FunctionReport, Verdict, free_names,
)
from assistant.errors import AssistantError, UsageError
from assistant.asserts.focal import import_root

MAX_PACKAGE_FILES = 400  # a package bigger than this is read in place, not copied to the sandbox
MAX_PACKAGE_BYTES = 8 * 1024 * 1024
TARGET_DIR = "_target"  # where the sandbox gets its copy of the module


@dataclass(frozen=True)
class Target:
    """How the sandbox and the generated test file import the module under test."""

    path: Path  # the real file, resolved
    dotted: str  # import name: "mod" or "pkg.sub.mod"
    depth: int  # package levels between the sys.path root and the file (0: a loose module)
    files: dict = field(default_factory=dict, hash=False)  # the sandbox's copy: relative name -> text
    sandbox_path: str = ""  # the module's path inside the sandbox
    extra_path: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        return self.path.parents[self.depth]


def make_target(path: Path) -> Target:
    """Copy the module (or its whole package, when small) for the sandbox.

    The copy goes into the sandbox's own directory because the program runs as an
    unprivileged user that may not be able to read the user's directories; sibling
    modules stay importable from the real directory where it can.
    """
    path = Path(path).resolve()
    root, dotted = import_root(path)
    depth = len(path.relative_to(root).parts) - 1
    if depth == 0:
        rel = path.name
        files = {f"{TARGET_DIR}/{rel}": path.read_text(encoding="utf-8")}
    else:
        top = root / path.relative_to(root).parts[0]
        sources = sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)
        if len(sources) > MAX_PACKAGE_FILES or sum(p.stat().st_size for p in sources) > MAX_PACKAGE_BYTES:
            return Target(path, dotted, depth, {}, str(path), (str(root),))
        files = {}
        for p in sources:
            try:
                files[f"{TARGET_DIR}/{p.relative_to(root).as_posix()}"] = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        rel = path.relative_to(root).as_posix()
    return Target(path, dotted, depth, files, f"{TARGET_DIR}/{rel}", (str(root),))


LOADER = '''
def _load_module():
    """Import the module under test from its file: it need not be on sys.path."""
    root = str(_MODULE_PATH.parents[_PACKAGE_DEPTH])
    if root not in _sys.path:
        _sys.path.insert(0, root)
    if _PACKAGE_DEPTH:
        module = _importlib.import_module(_MODULE_NAME)
        if _Path(module.__file__).resolve() != _MODULE_PATH:
            raise ImportError(f"{_MODULE_NAME} is already imported from {module.__file__}")
        return module
    name = _MODULE_NAME if _MODULE_NAME not in _sys.modules else _MODULE_NAME + "__under_test"
    spec = _importlib.util.spec_from_file_location(name, _MODULE_PATH)
    module = _importlib.util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
'''


def _loader_header(target: Target, path_expr: str) -> str:
    return (
        "import importlib as _importlib\nimport importlib.util\nimport sys as _sys\nfrom pathlib import Path as _Path\n\n"
        f"_MODULE_PATH = {path_expr}\n_MODULE_NAME = {target.dotted!r}\n_PACKAGE_DEPTH = {target.depth}\n\n"
        + LOADER
    )


HARNESS = r'''
import io as _io, json as _json, os as _os, signal as _signal, traceback as _tb
{header}
_real_out = _sys.stdout
_MARK = {marker!r}

def _emit(record):
    _real_out.write(_MARK + _json.dumps(record) + "\n")
    _real_out.flush()

class _CaseTimeout(BaseException):
    pass

def _alarm(*_a):
    raise _CaseTimeout()

def _one_line(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

def _safe_repr(value):
    try:
        return _one_line(repr(value), 120)
    except BaseException:
        return "<unprintable>"

_signal.signal(_signal.SIGALRM, _alarm)
_sys.stdout = _io.StringIO()
_signal.setitimer(_signal.ITIMER_REAL, {import_timeout})
try:
    _module = _load_module()
    _error = None
except _CaseTimeout:
    _error = "timeout: the import took longer than {import_timeout} s"
except BaseException as e:
    _error = _one_line(f"{{type(e).__name__}}: {{e}}")
finally:
    _signal.setitimer(_signal.ITIMER_REAL, 0)
if _error is not None:
    _emit({{"import": _error}})
    raise SystemExit(0)
_emit({{"import": None, "names": sorted(k for k in vars(_module) if not k.startswith("__"))}})
_file = _os.path.realpath(_module.__file__)
import copy as _copy
_globals = vars(_module)
_base = dict(_globals)
_deep = {{}}
for _k, _v in _base.items():
    if type(_v) in (list, dict, set, bytearray):
        try:
            _deep[_k] = _copy.deepcopy(_v)
        except BaseException:
            pass

def _restore():
    """Each case sees the module as imported: rebound globals and mutated containers are put back."""
    _globals.clear()
    _globals.update(_base)
    for k, saved in _deep.items():
        current = _base[k]
        fresh = _copy.deepcopy(saved)
        if isinstance(current, (list, bytearray)):
            current[:] = fresh
        else:
            current.clear()
            current.update(fresh)

for _code, _probe in {cases!r}:
    _restore()
    _ns = dict(vars(_module))
    _ns.setdefault({stem!r}, _module)
    _sys.stdout = _io.StringIO()
    _signal.setitimer(_signal.ITIMER_REAL, {case_timeout})
    try:
        exec(compile(_probe or _code, "<assertion>", "exec"), _ns)
        _row = ["kept", "", ""]
    except _CaseTimeout:
        _row = ["errored", "timeout", "took longer than {case_timeout} s"]
    except AssertionError as e:
        _got = ("returned " + _safe_repr(_ns["__actual__"])) if "__actual__" in _ns else _one_line(e)
        _row = ["failing", "AssertionError", _got]
    except BaseException as e:
        _frames = _tb.extract_tb(e.__traceback__)
        _inner = _frames[-1].filename if _frames else ""
        _where = _os.path.realpath(_inner) == _file if _inner and not _inner.startswith("<") else False
        _name = type(e).__name__
        _msg = _one_line(f"{{_name}}: {{e}}")
        _row = ["failing", "raises " + _name, _msg] if _where else ["errored", _name, _msg]
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    _emit(_row)
'''


def probe_code(c: Candidate) -> str | None:
    """``assert a == b`` rewritten to keep ``a``'s value, so a failure can say what came back."""
    node = ast.parse(c.test).body[0]
    t = node.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq):
        lines = [*c.setup, f"__actual__ = {ast.unparse(t.left)}", f"assert __actual__ == {ast.unparse(t.comparators[0])}"]
        return "\n".join(lines)
    return None


@dataclass(frozen=True)
class Validation:
    verdicts: list[Verdict]
    names: tuple[str, ...]  # the module's attributes (for the test file's imports)
    import_error: str | None = None


_LOST_REASONS = {"timeout": "timeout", "failed": "exited", "crashed": "crashed", "resource_limit": "resource limit"}


def _parse_records(stdout: str, marker: str) -> list:
    return [json.loads(line[len(marker):]) for line in stdout.splitlines() if line.startswith(marker)]


def validate(target: Target, stem: str, candidates: Sequence[Candidate], cfg: AssertsConfig) -> Validation:
    """Run every candidate against the real module in the sandbox, one process for all.

    Each case gets its own alarm; a case that takes the whole process down (a hang that
    ignores the alarm, a crash) is charged to that case and the rest run again.
    """
    from assistant.sandbox.runner import Limits, Outcome, run_program

    verdicts: list[Verdict | None] = [None] * len(candidates)
    pending = list(range(len(candidates)))
    names: tuple[str, ...] = ()
    while True:
        marker = f"@@asserts-{secrets.token_hex(8)}@@"
        cases = [(candidates[i].code, probe_code(candidates[i])) for i in pending]
        program = HARNESS.format(
            header=_loader_header(target, f"_Path({target.sandbox_path!r}).resolve()"), marker=marker, cases=cases,
            stem=stem, import_timeout=cfg.import_timeout_s, case_timeout=cfg.case_timeout_s,
        )
        limits = Limits(
            timeout_s=cfg.import_timeout_s + cfg.case_timeout_s * (len(pending) + 1) + 5,
            memory_mb=cfg.memory_mb, output_bytes=4 * 1024 * 1024,
        )
        r = run_program(program, limits, files=target.files, extra_path=target.extra_path)
        records = _parse_records(r.stdout, marker)
        if not records or not isinstance(records[0], dict):
            why = "timeout" if r.outcome is Outcome.TIMEOUT else r.outcome.value
            return Validation([Verdict(ERRORED, "import failed", f"{why}: {r.detail}")] * len(candidates), (), f"{why}: {r.detail}")
        head, rows = records[0], records[1:]
        if head.get("import") is not None:
            return Validation([Verdict(ERRORED, "import failed", head["import"])] * len(candidates), (), head["import"])
        names = tuple(head.get("names", ()))
        for i, row in zip(pending, rows):
            verdicts[i] = Verdict(*row)
        if len(rows) >= len(pending):
            break
        lost = pending[len(rows)]
        verdicts[lost] = Verdict(ERRORED, _LOST_REASONS.get(r.outcome.value, r.outcome.value), r.detail)
        pending = pending[len(rows) + 1 :]
        if not pending:
            break
    return Validation([v for v in verdicts if v is not None], names)


# -- the pytest file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    source: str
    lines: dict[int, int] = field(default_factory=dict, hash=False)  # line number -> candidate index


def _test_name(focal_name: str, taken: set[str]) -> str:
    base = "test_" + re.sub(r"\W", "_", focal_name.replace(".", "_"))
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def render_test_file(
    target: Target, stem: str, groups: Sequence[tuple[str, Sequence[Candidate]]], module_names: Sequence[str],
    path_expr: str, docstring: str = "",
) -> Rendered:
    """A pytest file: the loader, the module's names the assertions use, one test per function.

    ``groups`` holds (focal name, kept candidates) in order; ``lines`` maps each assert's
    line back to its position in the flattened candidate list.
    """
    available = set(module_names)
    used: set[str] = set()
    for _, cands in groups:
        for c in cands:
            used |= free_names(c)
    imported = sorted(used & available)
    out = [f'"""{docstring}"""\n\n' if docstring else "", _loader_header(target, path_expr).rstrip("\n"), "\n\n\n_module = _load_module()\n"]
    out.extend(f"{n} = _module.{n}\n" for n in imported)
    if stem in used and stem not in available and stem.isidentifier():
        out.append(f"{stem} = _module\n")
    text = "".join(out)
    lines: dict[int, int] = {}
    taken: set[str] = set()
    index = 0
    for name, cands in groups:
        if not cands:
            continue
        text += f"\n\ndef {_test_name(name, taken)}():\n"
        for c in cands:
            for stmt in c.setup:
                text += "".join(f"    {line}\n" for line in stmt.splitlines())
            line_no = text.count("\n") + 1
            text += "".join(f"    {line}\n" for line in c.test.splitlines())
            lines[line_no] = index
            index += 1
    return Rendered(text, lines)


CONFIRM = r'''
import signal as _signal, sys as _s, io as _io, json as _json, traceback as _tb
_real_out = _s.stdout
class _Late(BaseException):
    pass
def _alarm(*_a):
    raise _Late()
_signal.signal(_signal.SIGALRM, _alarm)
_s.stdout = _io.StringIO()
{coverage_start}
_ns = {{"__name__": "generated_test", "__file__": "generated_test.py"}}
_failed = []
try:
    exec(compile({source!r}, "<generated>", "exec"), _ns)
    _loaded = None
except BaseException as e:
    _loaded = type(e).__name__ + ": " + str(e)[:200]
if _loaded is None:
    for _name in [n for n in list(_ns) if n.startswith("test_") and callable(_ns[n])]:
        _signal.setitimer(_signal.ITIMER_REAL, {timeout})
        try:
            _ns[_name]()
        except BaseException as e:
            _lines = [f.lineno for f in _tb.extract_tb(e.__traceback__) if f.filename == "<generated>"]
            _failed.append([_name, _lines[-1] if _lines else None, type(e).__name__])
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
{coverage_stop}
_real_out.write({marker!r} + _json.dumps({{"loaded": _loaded, "failed": _failed, "coverage": _cov}}) + "\n")
'''

COVERAGE_START = """
import coverage as _coverage
_cov_obj = _coverage.Coverage(data_file=None, config_file=False, branch=False)
_cov_obj.start()
"""

COVERAGE_STOP = """
_cov_obj.stop()
_cov = None
if _loaded is None:
    _mod = _ns["_module"]
    _, _stmts, _, _missing, _ = _cov_obj.analysis2(_mod.__file__)
    _cov = [len(_stmts), list(_missing)]
"""


def run_test_file(target: Target, source: str, cfg: AssertsConfig, n_cases: int, coverage: bool = False) -> dict:
    """Run a rendered test file's tests in the sandbox, as pytest would: one process, in order."""
    from assistant.sandbox.runner import Limits, run_program

    marker = f"@@confirm-{secrets.token_hex(8)}@@"
    program = CONFIRM.format(
        source=source, marker=marker, timeout=cfg.case_timeout_s * (n_cases + 1),
        coverage_start=COVERAGE_START if coverage else "", coverage_stop=COVERAGE_STOP if coverage else "_cov = None",
    )
    limits = Limits(timeout_s=cfg.import_timeout_s + cfg.case_timeout_s * (n_cases + 2) + 10, memory_mb=cfg.memory_mb)
    r = run_program(program, limits, files=target.files, extra_path=target.extra_path)
    records = _parse_records(r.stdout, marker)
    if not records:
        return {"loaded": f"{r.outcome.value}: {r.detail}", "failed": [], "coverage": None}
    return records[0]


def confirm(
    target: Target, stem: str, reports: Sequence[FunctionReport], names: Sequence[str], cfg: AssertsConfig,
) -> None:
    """Run the kept assertions together, as the test file will; demote any that then fail.

    A case can pass alone and fail after another (shared module state). Each round drops
    the first failing assert of each failing test, until the whole file passes.
    """
    while True:
        flat = [(f, i) for f in reports for i, v in enumerate(f.verdicts) if v.status == KEPT]
        if not flat:
            return
        groups = [(f.name, f.kept()) for f in reports]
        rendered = render_test_file(target, stem, groups, names, f"_Path({target.sandbox_path!r}).resolve()")
        result = run_test_file(target, rendered.source, cfg, len(flat))
        if result["loaded"] is not None:
            for f, i in flat:
                f.verdicts[i] = Verdict(ERRORED, "test file failed", result["loaded"])
            return
        if not result["failed"]:
            return
        dropped = 0
        for test_name, line, exc in result["failed"]:
            idx = rendered.lines.get(line) if line else None
            if idx is None:  # a setup line failed: blame the next assert below it
                following = [ln for ln in sorted(rendered.lines) if line is not None and ln > line]
                idx = rendered.lines[following[0]] if following else None
            if idx is None:
                continue
            f, i = flat[idx]
            f.verdicts[i] = Verdict(ERRORED, "fails in the test file", f"{exc} after the tests before it")
            dropped += 1
        if not dropped:  # cannot place the failure: keep nothing rather than a failing file
            for f, i in flat:
                f.verdicts[i] = Verdict(ERRORED, "fails in the test file", "unplaced failure")
            return


def measure_coverage(target: Target, stem: str, reports: Sequence[FunctionReport], names: Sequence[str], cfg: AssertsConfig) -> Coverage:
    """Line coverage of the module by the kept assertions, measured with coverage.py in the sandbox."""
    import importlib.util

    if importlib.util.find_spec("coverage") is None:
        raise UsageError("--coverage needs coverage.py", hint="pip install coverage (or the project's dev extra)")
    path_expr = f"_Path({target.sandbox_path!r}).resolve()"
    found = []
    for groups in ([(f.name, f.kept()) for f in reports], []):  # the tests, then the import alone
        rendered = render_test_file(target, stem, groups, names, path_expr)
        result = run_test_file(target, rendered.source, cfg, sum(len(g) for _, g in groups), coverage=True)
        if not result.get("coverage"):
            raise AssistantError(f"coverage could not be measured: {result.get('loaded') or 'no result'}")
        found.append(result["coverage"])
    (statements, missing), (_, missing_import) = found
    return Coverage(statements, tuple(sorted(missing)), statements - len(missing_import))


def relative_path_expr(module: Path, out: Path | None) -> str:
    """How the test file finds the module: relative to itself when written, else absolute."""
    import os

    module = Path(module).resolve()
    if out is None:
        return f"_Path({str(module)!r})"
    try:
        rel = os.path.relpath(module, Path(out).resolve().parent)
    except ValueError:  # another drive
        return f"_Path({str(module)!r})"
    return f"(_Path(__file__).resolve().parent / {Path(rel).as_posix()!r}).resolve()"
