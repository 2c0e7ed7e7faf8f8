"""Step 3 of `assistant asserts`: check candidate assertions against the real module in the sandbox.

Everything that runs the module happens here and in ``render``, in sandboxed processes: the
module is copied into the sandbox's directory, imported there under an alarm, and each
candidate runs against a fresh view of its globals.
"""

from __future__ import annotations

import ast
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from assistant.asserts.candidates import AssertsConfig, Candidate
from assistant.asserts.focal import import_root

KEPT, FAILING, ERRORED = "kept", "failing", "errored"
MAX_PACKAGE_FILES = 400  # a package bigger than this is read in place, not copied to the sandbox
MAX_PACKAGE_BYTES = 8 * 1024 * 1024
TARGET_DIR = "_target"  # where the sandbox gets its copy of the module


@dataclass(frozen=True)
class Verdict:
    status: str  # kept, failing or errored
    reason: str = ""  # failing: "AssertionError" or "raises X"; errored: "NameError", "timeout", ...
    detail: str = ""  # one line: what the code returned, or the exception's message


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


def loader_header(target: Target, path_expr: str) -> str:
    return (
        "import importlib as _importlib\nimport importlib.util\nimport sys as _sys\nfrom pathlib import Path as _Path\n\n"
        f"_MODULE_PATH = {path_expr}\n_MODULE_NAME = {target.dotted!r}\n_PACKAGE_DEPTH = {target.depth}\n\n" + LOADER
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
    if not isinstance(node, ast.Assert):
        return None
    t = node.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq):
        lines = [
            *c.setup,
            f"__actual__ = {ast.unparse(t.left)}",
            f"assert __actual__ == {ast.unparse(t.comparators[0])}",
        ]
        return "\n".join(lines)
    return None


@dataclass(frozen=True)
class Validation:
    verdicts: list[Verdict]
    names: tuple[str, ...]  # the module's attributes (for the test file's imports)
    import_error: str | None = None


_LOST_REASONS = {"timeout": "timeout", "failed": "exited", "crashed": "crashed", "resource_limit": "resource limit"}


def parse_records(stdout: str, marker: str) -> list:
    return [json.loads(line[len(marker) :]) for line in stdout.splitlines() if line.startswith(marker)]


def validate(target: Target, stem: str, candidates: Sequence[Candidate], cfg: AssertsConfig) -> Validation:
    """Run every candidate against the real module in the sandbox, one process for all.

    Each case gets its own alarm; a case that takes the whole process down (a hang that
    ignores the alarm, a crash) is charged to that case and the rest run again.
    """
    from assistant.sandbox.limits import Limits
    from assistant.sandbox.outcomes import Outcome
    from assistant.sandbox.runner import run_program

    verdicts: list[Verdict | None] = [None] * len(candidates)
    pending = list(range(len(candidates)))
    names: tuple[str, ...] = ()
    while True:
        marker = f"@@asserts-{secrets.token_hex(8)}@@"
        cases = [(candidates[i].code, probe_code(candidates[i])) for i in pending]
        program = HARNESS.format(
            header=loader_header(target, f"_Path({target.sandbox_path!r}).resolve()"),
            marker=marker,
            cases=cases,
            stem=stem,
            import_timeout=cfg.import_timeout_s,
            case_timeout=cfg.case_timeout_s,
        )
        limits = Limits(
            timeout_s=cfg.import_timeout_s + cfg.case_timeout_s * (len(pending) + 1) + 5,
            memory_mb=cfg.memory_mb,
            output_bytes=4 * 1024 * 1024,
        )
        r = run_program(program, limits, files=target.files, extra_path=target.extra_path)
        records = parse_records(r.stdout, marker)
        if not records or not isinstance(records[0], dict):
            why = "timeout" if r.outcome is Outcome.TIMEOUT else r.outcome.value
            return Validation(
                [Verdict(ERRORED, "import failed", f"{why}: {r.detail}")] * len(candidates), (), f"{why}: {r.detail}"
            )
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
