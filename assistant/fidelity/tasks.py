"""The two tasks `assistant fidelity` runs: HumanEval completion and masked-assertion generation.

A task turns its items into variants (the original input, then one per metamorphic relation
that applies), says what to ask a model, and judges outputs: a normalized form for exact
agreement (identifiers renamed back, docstrings and comments gone), a pass bit (hidden tests,
or the ground-truth assertion), and for code an execution signature (pass/fail and value of
every call the hidden tests make) for execution equivalence.

HumanEval variants are cut from a transformed *whole program*: the prompt, a marker line, then
the canonical solution. The relation sees real code, the transformed program must still pass
the hidden tests, and the model gets everything above the marker: a transformed prompt that
the transformed solution provably completes.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from assistant.codegen.codet import harness_program, parse_harness
from assistant.evaluation.humaneval import (
    DatasetError,
    Problem,
    chat_request,
    hidden_test_program,
    read_jsonl_objects,
    sanitize,
    truncate_body,
)
from assistant.fidelity.relations.registry import NotApplicable, apply_relation
from assistant.runtime.prompts import FENCE_RE

ORIGINAL = "original"
CUT = "__fidelity_cut__()"
CUT_LINE = re.compile(r"^[ \t]*__fidelity_cut__\(\)[ \t]*\n", re.MULTILINE)

# The runner: many programs in, one ExecResult-like object (``passed``, ``stdout``) per program out.
ProgramRunner = Callable[[list[str]], list]


@dataclass(frozen=True)
class Variant:
    """One input shown to both models: the original, or its image under one relation."""

    item_id: str
    relation: str
    text: str  # the model-facing input: a HumanEval prompt, or a test with its assertion masked
    renames: Mapping[str, str] = field(default_factory=dict)  # old identifier -> new
    problem: Problem | None = None  # completion: the problem as transformed (prompt, entry point)
    target: str | None = None  # asserts: the ground truth, in the original's identifiers
    verified: bool = True  # False when no test could check the transformation

    def inverse(self) -> dict[str, str]:
        return {new: old for old, new in self.renames.items()}


@dataclass(frozen=True)
class Skip:
    item_id: str
    relation: str
    reason: str  # not applicable / prompt unchanged / breaks the tests / does not fit the context


@dataclass(frozen=True)
class Judgement:
    normalized: str  # compared for exact agreement
    passed: bool  # hidden tests pass (completion) or equals the ground truth (asserts)
    signature: str | None  # execution signature (completion); None where execution does not apply
    issue: str = ""  # why there is no usable output (no code, syntax error, ...)


class Task(Protocol):
    name: str
    executes: bool  # whether judgements carry execution signatures

    def variants(self, relations: Sequence[str], seed: int) -> tuple[list[Variant], list[Skip]]: ...

    def request(self, variant: Variant, style: str) -> str: ...

    def stops(self, style: str) -> tuple[str, ...]: ...

    def judge(self, variants: Sequence[Variant], outputs: Sequence[str], style: str) -> list[Judgement]: ...


# -- normalization ----------------------------------------------------------------------------------


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: Mapping[str, str]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        if node.arg:
            node.arg = self.mapping.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def _named(self, node):
        if node.name:
            node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_ExceptHandler = _named

    def visit_alias(self, node: ast.alias) -> ast.AST:
        if node.asname:
            node.asname = self.mapping.get(node.asname, node.asname)
        return node


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]


def normalize_code(code: str, inverse: Mapping[str, str] | None = None) -> str:
    """Code compared for exact agreement: docstrings, comments and layout dropped, names mapped back."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        try:
            tree = ast.parse(textwrap.dedent(code))
        except (SyntaxError, ValueError):
            return " ".join(code.split())
    _strip_docstrings(tree)
    if inverse:
        _Renamer(inverse).visit(tree)
    return ast.unparse(tree)


_ASSERTION_START = ("assert", "self.assert", "self.fail")


def _is_assertion(stmt: ast.stmt) -> bool:
    """``assert ...`` or a unittest-style ``self.assertX(...)`` / ``self.fail(...)`` call."""
    if isinstance(stmt, ast.Assert):
        return True
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and (stmt.value.func.attr.startswith("assert") or stmt.value.func.attr == "fail")
    )


def first_assert(text: str, mask: str = "<AssertPlaceHolder>") -> str | None:
    """The first parseable assertion in the text (code blocks first), normalized by ``ast.unparse``."""
    blocks = [m.group(2) for m in FENCE_RE.finditer(text)] + [text]
    for block in blocks:
        lines = block.split("\n")
        for i, line in enumerate(lines):
            if not line.strip().startswith(_ASSERTION_START) or mask in line:
                continue
            for j in range(i + 1, min(i + 8, len(lines)) + 1):  # an assertion may span a few lines
                try:
                    tree = ast.parse(textwrap.dedent("\n".join(lines[i:j])))
                except (SyntaxError, ValueError):
                    continue
                if tree.body and _is_assertion(tree.body[0]):
                    return ast.unparse(tree.body[0])
    return None


def normalize_assert(text: str, inverse: Mapping[str, str] | None = None) -> str:
    try:
        tree = ast.parse(textwrap.dedent(text).strip())
    except (SyntaxError, ValueError):
        return " ".join(text.split())
    if inverse:
        _Renamer(inverse).visit(tree)
    return ast.unparse(tree)


# -- HumanEval completion ---------------------------------------------------------------------------


def _body_indent(problem: Problem) -> str:
    for line in problem.canonical_solution.split("\n"):
        if line.strip():
            return line[: len(line) - len(line.lstrip())]
    return "    "


def _prompt_lines(problem: Problem) -> str:
    return problem.prompt if problem.prompt.endswith("\n") else problem.prompt + "\n"


def marked_program(problem: Problem) -> str:
    """Prompt, marker line, canonical solution: what relations transform."""
    return _prompt_lines(problem) + _body_indent(problem) + CUT + "\n" + problem.canonical_solution


def split_marked(program: str) -> tuple[str, str] | None:
    """(prompt, program without the marker), or None when the marker did not survive exactly once."""
    found = list(CUT_LINE.finditer(program))
    if len(found) != 1:
        return None
    m = found[0]
    return program[: m.start()], program[: m.start()] + program[m.end() :]


def names_tests_use(problem: Problem) -> frozenset:
    """Identifiers the hidden tests use from the program (helpers called by name, keyword arguments)."""
    try:
        tree = ast.parse(problem.test)
    except SyntaxError:
        return frozenset()
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - {"candidate"}
    keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
    return frozenset(names | keywords)


def hidden_asserts(problem: Problem, entry_point: str) -> list[str]:
    """The hidden tests' asserts that call the candidate, as standalone asserts on ``entry_point``.

    Their call values make the execution signature; asserts inside loops (free loop variables)
    evaluate to the same NameError for every program and so do not separate any two.
    """
    try:
        tree = ast.parse(problem.test)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and any(
            isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(node.test)
        ):
            node.msg = None
            src = ast.unparse(_Renamer({"candidate": entry_point}).visit(node))
            if src not in out:
                out.append(src)
    return out


def _problem_of(variant: Variant) -> Problem:
    """A completion variant's problem: ``CompletionTask.variants`` gives every variant one."""
    assert variant.problem is not None, f"{variant.item_id}: a completion variant without its problem"
    return variant.problem


@dataclass
class CompletionTask:
    """HumanEval-schema problems; the models complete (or, in chat, rewrite) the function."""

    problems: Sequence[Problem]
    run_programs: ProgramRunner
    name: str = "completion"
    executes: bool = True

    def variants(self, relations: Sequence[str], seed: int) -> tuple[list[Variant], list[Skip]]:
        variants: list[Variant] = []
        skips: list[Skip] = []
        pending: list[tuple[Variant, str]] = []  # (variant, test program) to check in the sandbox
        for p in self.problems:
            variants.append(Variant(p.task_id, ORIGINAL, p.prompt, problem=p))
            has_solution = bool(p.canonical_solution.strip())
            source = marked_program(p) if has_solution else _prompt_lines(p) + "    " + CUT + "\n"
            keep = names_tests_use(p)
            for rel in relations:
                try:
                    t = apply_relation(rel, source, seed, keep)
                except NotApplicable:
                    skips.append(Skip(p.task_id, rel, "not applicable"))
                    continue
                parts = split_marked(t.source)
                if parts is None:
                    skips.append(Skip(p.task_id, rel, "not applicable"))
                    continue
                prompt, program = parts
                if prompt == _prompt_lines(p):
                    skips.append(Skip(p.task_id, rel, "prompt unchanged"))
                    continue
                entry = t.renames.get(p.entry_point, p.entry_point)
                problem = replace(p, prompt=prompt, entry_point=entry, canonical_solution=program[len(prompt) :])
                v = Variant(p.task_id, rel, prompt, dict(t.renames), problem=problem, verified=has_solution)
                if has_solution:
                    pending.append((v, hidden_test_program(problem, program)))
                else:
                    variants.append(v)
        results = self.run_programs([prog for _, prog in pending]) if pending else []
        for (v, _), r in zip(pending, results):
            if r.passed:
                variants.append(v)
            else:
                skips.append(Skip(v.item_id, v.relation, "breaks the tests"))
        order = {p.task_id: i for i, p in enumerate(self.problems)}
        rank = {r: i for i, r in enumerate((ORIGINAL, *relations))}
        variants.sort(key=lambda v: (order[v.item_id], rank[v.relation]))
        return variants, skips

    def request(self, variant: Variant, style: str) -> str:
        problem = _problem_of(variant)
        return chat_request(problem) if style == "chat" else problem.prompt

    def stops(self, style: str) -> tuple[str, ...]:
        from assistant.evaluation.run import COMPLETION_STOPS

        return COMPLETION_STOPS if style == "completion" else ()

    def judge(self, variants: Sequence[Variant], outputs: Sequence[str], style: str) -> list[Judgement]:
        marker = f"@@fidelity-{secrets.token_hex(8)}@@"
        jobs: list[tuple[int, str, str, int]] = []  # (index, hidden-test program, harness program, n asserts)
        solutions = []
        for i, (v, raw) in enumerate(zip(variants, outputs)):
            problem = _problem_of(v)
            sol = sanitize(problem, raw, style)
            solutions.append(sol)
            if not sol.problem:
                asserts = hidden_asserts(problem, problem.entry_point)
                jobs.append(
                    (
                        i,
                        hidden_test_program(problem, sol.code),
                        harness_program(sol.code, asserts, marker),
                        len(asserts),
                    )
                )
        programs = [prog for _, hidden, harness, _ in jobs for prog in (hidden, harness)]
        results = self.run_programs(programs) if programs else []
        ran: dict[int, tuple[bool, str]] = {}
        for k, (i, _, _, n) in enumerate(jobs):
            hidden, harness = results[2 * k], results[2 * k + 1]
            cases = parse_harness(harness.stdout, marker, n)
            signature = json.dumps([hidden.passed, [[c.passed, c.output] for c in cases]])
            ran[i] = (hidden.passed, signature)
        out = []
        for i, (v, raw, sol) in enumerate(zip(variants, outputs, solutions)):
            body = truncate_body(raw) if style == "completion" else sol.code
            normalized = normalize_code(body, v.inverse())
            if i in ran:
                passed, signature = ran[i]
                out.append(Judgement(normalized, passed, signature))
            else:
                out.append(Judgement(normalized, False, f"unusable: {sol.problem}", sol.problem))
        return out


# -- masked assertions ------------------------------------------------------------------------------

DEFAULT_MASK = "<AssertPlaceHolder>"
SENTINEL = "__fidelity_mask__"

ASSERT_INSTRUCTION = (
    "In the following Python test, one assert statement has been replaced by {mask}. Reply with "
    "only the missing assert statement, in one ```python code block.\n\n```python\n{code}\n```"
)


@dataclass(frozen=True)
class AssertItem:
    """One masked-assertion problem: test code with the assertion replaced by ``mask``, and the truth."""

    id: str
    prompt: str
    target: str
    mask: str = DEFAULT_MASK


def load_assert_items(path: Path) -> list[AssertItem]:
    """JSONL, one object a line: ``prompt`` (code holding the mask once), ``target`` (the assert),
    optional ``id`` and ``mask`` (default ``<AssertPlaceHolder>``). A directory is read as a
    dataset built by ``python -m assistant.asserts.dataset`` (its test split)."""
    if Path(path).is_dir():
        return _mined_items(Path(path))
    items, seen = [], set()
    for i, row in read_jsonl_objects(Path(path), "assertion dataset"):
        bad = [k for k in ("prompt", "target") if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            raise DatasetError(
                f"{path} line {i}: missing or empty fields {bad}",
                hint='each line needs "prompt" (test code with the assertion masked) and "target" (the assert statement)',
            )
        mask = row.get("mask", DEFAULT_MASK)
        if not isinstance(mask, str) or not mask or row["prompt"].count(mask) != 1:
            raise DatasetError(
                f"{path} line {i}: the prompt must hold the mask {mask!r} exactly once",
                hint='mask the assertion with <AssertPlaceHolder>, or name the mask in a "mask" field',
            )
        item_id = str(row.get("id", i))
        if item_id in seen:
            raise DatasetError(f"{path} line {i}: duplicate id {item_id!r}")
        seen.add(item_id)
        items.append(AssertItem(item_id, row["prompt"], row["target"], mask))
    if not items:
        raise DatasetError(f"{path} holds no items")
    return items


def _mined_items(directory: Path) -> list[AssertItem]:
    """The mined dataset's test split: focal function, then the test method with the mask."""
    from assistant.asserts.dataset import PLACEHOLDER, load_split

    return [
        AssertItem(ex.id, ex.focal.rstrip("\n") + "\n\n\n" + ex.prefix, ex.assertion, PLACEHOLDER)
        for ex in load_split(directory, "test")
    ]


@dataclass
class AssertTask:
    """Masked assertions: the models write the missing assert; passed = equals the ground truth."""

    items: Sequence[AssertItem]
    name: str = "asserts"
    executes: bool = False

    def __post_init__(self) -> None:
        self._masks = {i.id: i.mask for i in self.items}

    def variants(self, relations: Sequence[str], seed: int) -> tuple[list[Variant], list[Skip]]:
        variants: list[Variant] = []
        skips: list[Skip] = []
        for item in self.items:
            variants.append(Variant(item.id, ORIGINAL, item.prompt, target=item.target))
            source = item.prompt.replace(item.mask, SENTINEL)
            for rel in relations:
                try:
                    t = apply_relation(rel, source, seed)
                except NotApplicable:
                    skips.append(Skip(item.id, rel, "not applicable"))
                    continue
                if t.source.count(SENTINEL) != 1:
                    skips.append(Skip(item.id, rel, "not applicable"))
                    continue
                text = t.source.replace(SENTINEL, item.mask)
                variants.append(Variant(item.id, rel, text, dict(t.renames), target=item.target, verified=False))
        return variants, skips

    def _mask(self, variant: Variant) -> str:
        return self._masks.get(variant.item_id, DEFAULT_MASK)

    def request(self, variant: Variant, style: str) -> str:
        mask = self._mask(variant)
        if style == "chat":
            return ASSERT_INSTRUCTION.format(mask=mask, code=variant.text.strip("\n"))
        return variant.text[: variant.text.index(mask)]

    def stops(self, style: str) -> tuple[str, ...]:
        return ("\n",) if style == "completion" else ()

    def judge(self, variants: Sequence[Variant], outputs: Sequence[str], style: str) -> list[Judgement]:
        out = []
        for v, raw in zip(variants, outputs):
            if style == "completion":
                prefix = self.request(v, style)
                raw = prefix[prefix.rfind("\n") + 1 :] + raw
            found = first_assert(raw, self._mask(v))
            if found is None:
                out.append(Judgement(" ".join(raw.split()), False, None, "no assert"))
                continue
            normalized = normalize_assert(found, v.inverse())
            out.append(Judgement(normalized, normalized == normalize_assert(v.target or ""), None))
        return out
