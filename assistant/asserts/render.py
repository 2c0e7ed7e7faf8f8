"""Step 4 of `assistant asserts`: render the kept assertions as a pytest file, confirm it, measure coverage.

The rendered file is run as a whole in the sandbox, as pytest would run it (a case can pass
alone and fail after another), and optionally under coverage.py.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from assistant.asserts.candidates import AssertsConfig, Candidate, free_names
from assistant.asserts.focal import ModuleInfo
from assistant.asserts.validate import ERRORED, FAILING, KEPT, Target, Verdict, loader_header, parse_records
from assistant.errors import AssistantError, UsageError


@dataclass
class FunctionReport:
    name: str
    candidates: list[Candidate] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    generations: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    note: str = ""  # why the model was not asked, if it was not

    def count(self, status: str, origin: str | None = None) -> int:
        return sum(
            v.status == status and (origin is None or c.origin == origin)
            for c, v in zip(self.candidates, self.verdicts)
        )

    @property
    def generated(self) -> int:
        return len(self.candidates)

    def kept(self) -> list[Candidate]:
        return [c for c, v in zip(self.candidates, self.verdicts) if v.status == KEPT]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "generated": self.generated,
            "kept": self.count(KEPT),
            "failing": self.count(FAILING),
            "errored": self.count(ERRORED),
            "from_model": sum(c.origin == "model" for c in self.candidates),
            "kept_from_model": self.count(KEPT, "model"),
            "generations": self.generations,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            "candidates": [
                {"code": c.code, "origin": c.origin, **asdict(v)} for c, v in zip(self.candidates, self.verdicts)
            ],
        }


@dataclass(frozen=True)
class Coverage:
    """Line coverage of the module; ``import_only`` is what importing it alone covers (def lines...)."""

    statements: int
    missing: tuple[int, ...]
    import_only: int = 0  # statements covered by the import alone

    @property
    def covered(self) -> int:
        return self.statements - len(self.missing)

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.statements if self.statements else 100.0

    def to_dict(self) -> dict:
        return {
            "statements": self.statements,
            "covered": self.covered,
            "percent": round(self.percent, 2),
            "import_only": self.import_only,
            "missing_lines": list(self.missing),
        }


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
    target: Target,
    stem: str,
    groups: Sequence[tuple[str, Sequence[Candidate]]],
    module_names: Sequence[str],
    path_expr: str,
    docstring: str = "",
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
    out = [
        f'"""{docstring}"""\n\n' if docstring else "",
        loader_header(target, path_expr).rstrip("\n"),
        "\n\n\n_module = _load_module()\n",
    ]
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


CONFIRM = r"""
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
"""

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
    from assistant.sandbox.limits import Limits
    from assistant.sandbox.runner import run_program

    marker = f"@@confirm-{secrets.token_hex(8)}@@"
    program = CONFIRM.format(
        source=source,
        marker=marker,
        timeout=cfg.case_timeout_s * (n_cases + 1),
        coverage_start=COVERAGE_START if coverage else "",
        coverage_stop=COVERAGE_STOP if coverage else "_cov = None",
    )
    limits = Limits(timeout_s=cfg.import_timeout_s + cfg.case_timeout_s * (n_cases + 2) + 10, memory_mb=cfg.memory_mb)
    r = run_program(program, limits, files=target.files, extra_path=target.extra_path)
    records = parse_records(r.stdout, marker)
    if not records:
        return {"loaded": f"{r.outcome.value}: {r.detail}", "failed": [], "coverage": None}
    return records[0]


def confirm(
    target: Target,
    stem: str,
    reports: Sequence[FunctionReport],
    names: Sequence[str],
    cfg: AssertsConfig,
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
        for _test_name, line, exc in result["failed"]:
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


def measure_coverage(
    target: Target, stem: str, reports: Sequence[FunctionReport], names: Sequence[str], cfg: AssertsConfig
) -> Coverage:
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


def file_docstring(info: ModuleInfo, model_name: str, command: str) -> str:
    return (
        f"Regression assertions for {info.path.name}, generated by `assistant asserts` with {model_name}.\n\n"
        "Each assertion passed against the module when this file was written: together they pin\n"
        "its current behaviour, bugs included, not its intended one. Candidates that failed are\n"
        f"not here (see the command's report). Regenerate with:\n\n    {command}\n"
    )
