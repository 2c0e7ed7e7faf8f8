"""Execution-based reranking: CodeT dual agreement and AlphaCode-style output clustering.

Everything here but ``run_matrix`` is a pure function over text or over the execution
matrix, so the ranking rules are testable without a model or a sandbox.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, Sequence

from assistant.runtime.prompts import FENCE_RE

# -- tests from text ---------------------------------------------------------------------------


def _calls(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node))


def _assert_nodes(code: str) -> list[ast.Assert]:
    """Asserts anywhere in ``code``; line by line when the whole does not parse (truncated output)."""
    try:
        return [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Assert)]
    except SyntaxError:
        pass
    found: list[ast.Assert] = []
    for line in code.splitlines():
        line = line.strip()
        if line.startswith("assert"):
            try:
                found.extend(n for n in ast.parse(line).body if isinstance(n, ast.Assert))
            except SyntaxError:
                continue
    return found


def extract_asserts(text: str, entry_point: str) -> list[str]:
    """Distinct ``assert`` statements that call ``entry_point``, normalized by ``ast.unparse``."""
    blocks = [m.group(2) for m in FENCE_RE.finditer(text)] or [text]
    out: list[str] = []
    for block in blocks:
        for node in _assert_nodes(block):
            if not _calls(node.test, entry_point):
                continue
            node.msg = None
            src = ast.unparse(node)
            if src not in out:
                out.append(src)
    return out


DOCTEST_RE = re.compile(r"^\s*>>>\s?(.*)\n((?:(?!\s*>>>)\s*\S.*\n?)+)", re.MULTILINE)


def doctest_asserts(prompt: str, entry_point: str) -> list[str]:
    """Docstring examples (``>>> f(x)`` followed by the expected value) as asserts."""
    out = []
    for m in DOCTEST_RE.finditer(prompt):
        call, expected = m.group(1).strip(), " ".join(m.group(2).split())
        if entry_point not in call:
            continue
        try:
            ast.parse(call, mode="eval")
            ast.parse(expected, mode="eval")
        except SyntaxError:
            continue
        src = ast.unparse(ast.parse(f"assert {call} == {expected}"))
        if src not in out:
            out.append(src)
    return out


def call_under_test(assert_src: str) -> str | None:
    """The call under test in ``assert f(x) == y`` (for clustering by outputs)."""
    try:
        node = ast.parse(assert_src).body[0]
    except (SyntaxError, IndexError):
        return None
    test = node.test if isinstance(node, ast.Assert) else None
    if isinstance(test, ast.Compare):
        return ast.unparse(test.left)
    if isinstance(test, ast.Call):
        return ast.unparse(test)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return ast.unparse(test.operand)
    return None


def assert_request(task: str, entry_point: str, m: int) -> str:
    """The chat message asking the model for tests of the same task."""
    return (
        f"{task.strip()}\n\nWrite {m} different assert statements that check a correct implementation of "
        f"`{entry_point}` on typical inputs and edge cases. Reply with one ```python code block containing "
        "only the assert statements, one per line."
    )


def completion_test_prompt(prompt: str, entry_point: str) -> str:
    """CodeT's completion-style test prompt: the stub, then the start of an assert."""
    return f"{prompt.rstrip()}\n    pass\n\n\n# check the correctness of {entry_point}\nassert {entry_point}("


# -- execution ---------------------------------------------------------------------------------

HARNESS = r'''
import io as _io, json as _json, signal as _signal, sys as _sys
_out = _sys.stdout
_sys.stdout = _io.StringIO()
def _alarm(*_a):
    raise TimeoutError("test timed out")
_signal.signal(_signal.SIGALRM, _alarm)
_signal.setitimer(_signal.ITIMER_REAL, {load_timeout})
try:
    exec(compile({solution!r}, "<candidate>", "exec"), globals())
    _loaded = None
except BaseException as _e:
    _loaded = type(_e).__name__
finally:
    _signal.setitimer(_signal.ITIMER_REAL, 0)
_rows = []
def _codet_timed(code, mode):
    """Run one test input or assert under its own alarm; returns (ok, value or exception name)."""
    _signal.setitimer(_signal.ITIMER_REAL, {per_test})
    try:
        value = (eval if mode == "eval" else exec)(code, dict(globals()))
        return True, value
    except BaseException as e:
        return False, "!" + type(e).__name__
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
for _src, _inp in {tests!r}:
    _row = {{"pass": False, "out": None}}
    if _loaded is None:
        if _inp:
            _ok, _val = _codet_timed(_inp, "eval")
            _row["out"] = repr(_val)[:1000] if _ok else _val
        _row["pass"] = _codet_timed(_src, "exec")[0]
    _rows.append(_row)
_sys.stdout = _out
print({marker!r} + _json.dumps({{"loaded": _loaded, "rows": _rows}}))
'''


@dataclass(frozen=True)
class CaseResult:
    passed: bool
    output: str | None  # repr of the test input's value, "!Exception" or None


def harness_program(solution: str, tests: Sequence[str], marker: str, per_test_s: float = 2.0) -> str:
    pairs = [(t, call_under_test(t)) for t in tests]
    return HARNESS.format(
        solution=solution, tests=pairs, marker=marker, per_test=per_test_s, load_timeout=max(per_test_s, 5.0)
    )


def parse_harness(stdout: str, marker: str, n_tests: int) -> list[CaseResult]:
    """The harness's result line, or all-failed rows if the candidate never got there."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker):
            data = json.loads(line[len(marker) :])
            return [CaseResult(r["pass"], r["out"]) for r in data["rows"]]
    return [CaseResult(False, None)] * n_tests


# The runner executes many programs and returns their stdout (the sandbox pool in practice).
ProgramRunner = Callable[[list[str]], list[str]]


def run_matrix(solutions: Sequence[str | None], tests: Sequence[str], runner: ProgramRunner) -> list[list[CaseResult]]:
    """Every candidate against every test, one sandboxed process per candidate."""
    marker = f"@@codet-{secrets.token_hex(8)}@@"
    idx = [i for i, s in enumerate(solutions) if s is not None]
    present = [s for s in solutions if s is not None]
    outs = runner([harness_program(s, tests, marker) for s in present]) if idx and tests else []
    rows: list[list[CaseResult]] = [[CaseResult(False, None)] * len(tests) for _ in solutions]
    for i, out in zip(idx, outs):
        rows[i] = parse_harness(out, marker, len(tests))
    return rows


# -- ranking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Candidates that behave alike: the same passed tests (CodeT) or the same outputs (cluster)."""

    members: tuple[int, ...]
    tests_passed: tuple[int, ...]
    score: int


@dataclass
class Ranking:
    method: str
    chosen: int
    groups: list[Group] = field(default_factory=list)


def codet_rank(matrix: Sequence[Sequence[CaseResult]], valid: Sequence[bool]) -> Ranking:
    """Dual execution agreement: score a consensus set by |candidates| x |tests passed|."""
    sets: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(matrix):
        if valid[i]:
            sets.setdefault(tuple(j for j, r in enumerate(row) if r.passed), []).append(i)
    groups = [Group(tuple(m), t, len(m) * len(t)) for t, m in sets.items()]
    groups.sort(key=lambda g: (-g.score, -len(g.members), g.members[0]))
    return Ranking("codet", groups[0].members[0] if groups else 0, groups)


def cluster_rank(matrix: Sequence[Sequence[CaseResult]], valid: Sequence[bool]) -> Ranking:
    """AlphaCode-style: cluster by outputs on the generated inputs; pick from the largest cluster."""
    sets: dict[tuple, list[int]] = {}
    for i, row in enumerate(matrix):
        if valid[i] and any(r.output is not None for r in row):
            sets.setdefault(tuple(r.output for r in row), []).append(i)
    groups = [Group(tuple(m), tuple(j for j, r in enumerate(matrix[m[0]]) if r.passed), len(m)) for m in sets.values()]
    groups.sort(key=lambda g: (-g.score, -len(g.tests_passed), g.members[0]))
    first_valid = next((i for i, v in enumerate(valid) if v), 0)
    return Ranking("cluster", groups[0].members[0] if groups else first_valid, groups)


RANKERS = {"codet": codet_rank, "cluster": cluster_rank}
