"""Step 2 of `assistant asserts`: propose candidate assertions for a focal function.

Candidates come from two places: the docstring's doctest examples, and the model, prompted
with the function's source and continued line by line. Extraction is pure ``ast`` work on
the text: each ``assert`` with the few setup statements it needs, deduplicated. Nothing here
runs the module; the next step (``validate``) does, in the sandbox.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from assistant.asserts.focal import Focal, ModuleInfo, import_root
from assistant.errors import UsageError
from assistant.runtime.prompts import FENCE_RE

MAX_SETUP = 12  # statements before one assert; longer scripts are not a test case
LINE_TOKENS = 64  # one line of a reply at most; a longer one is a runaway and ends the reply


@dataclass(frozen=True)
class AssertsConfig:
    per_function: int = 5  # model candidates wanted per focal function
    tries: int = 2  # generations per function at most: greedy first, then sampled
    temperature: float = 0.8  # for the tries after the first
    seed: int = 0
    case_timeout_s: float = 2.0  # one assertion, setup included
    import_timeout_s: float = 10.0  # importing the module (side effects, slow code)
    memory_mb: int = 1024

    def validate(self) -> None:
        if self.per_function < 1:
            raise UsageError("--per-function must be at least 1")
        if self.tries < 1:
            raise UsageError("--tries must be at least 1")
        if self.case_timeout_s <= 0:
            raise UsageError("--timeout must be positive")


@dataclass(frozen=True)
class Candidate:
    """One test case: setup statements (maybe none) and the assert that checks the result."""

    focal: str  # Focal.name
    setup: tuple[str, ...]
    test: str  # "assert f(1) == 2", normalized by ast.unparse
    origin: str  # "doctest" or "model"

    @property
    def code(self) -> str:
        return "\n".join((*self.setup, self.test))


@dataclass
class Generation:
    """What asking the model for one function cost."""

    generations: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


# -- candidates from text (pure) ----------------------------------------------------------------


def _names_loaded(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _names_bound(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def free_names(c: Candidate) -> set[str]:
    """Names a test case reads but does not bind itself: they must come from the module."""
    bound: set[str] = set()
    free: set[str] = set()
    for stmt in ast.parse(c.code).body:
        free |= _names_loaded(stmt) - bound
        if not isinstance(stmt, ast.Expr):
            bound |= _names_bound(stmt)
    return free


def _exercises(node: ast.AST, focal: Focal) -> bool:
    """Whether ``node`` calls the focal function (reads it, for a property).

    ``assert f`` or ``assert f is not None`` pass without running a line of ``f``: such
    vacuous checks are no test, whatever the sandbox says.
    """
    for n in ast.walk(node):
        if focal.is_property and isinstance(n, ast.Attribute) and n.attr == focal.attr:
            return True
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr == focal.attr:
                return True
            if not focal.is_method and isinstance(f, ast.Name) and f.id == focal.attr:
                return True
    return False


def _imports_target(stmt: ast.stmt, module_names: set[str]) -> bool:
    if isinstance(stmt, ast.ImportFrom):
        return (stmt.module or "") in module_names or (stmt.module or "").split(".")[-1] in module_names
    if isinstance(stmt, ast.Import):
        return any(a.name in module_names or a.name.split(".")[-1] in module_names for a in stmt.names)
    return False


_SETUP_TYPES = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Import, ast.ImportFrom)


def _statements(block: str) -> list[ast.stmt]:
    """The block's statements; a truncated or garbled block keeps what parses.

    Model output often ends mid-line or turns into prose: keep the longest prefix that
    parses, then any later line that parses on its own.
    """
    lines = block.splitlines()
    end = len(lines)
    while end > 0:
        try:
            stmts = ast.parse("\n".join(lines[:end])).body
            break
        except SyntaxError as e:
            end = min(end - 1, max(0, (e.lineno or end) - 1))
        except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
            end -= 1
    else:
        stmts = []
    for line in lines[end:]:
        try:
            stmts.extend(ast.parse(line.strip()).body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return stmts


def extract_candidates(
    text: str, focal: Focal, module_names: Sequence[str] = (), origin: str = "model"
) -> list[Candidate]:
    """Distinct test cases for ``focal`` in model output: each assert with the setup it needs.

    Setup is the earlier simple statements (assignments, calls, imports) that bind or mutate
    a name the assert uses, found backwards by data dependence, so every case runs alone.
    Imports of the module under test are dropped: its names come from the module itself.
    """
    targets = set(module_names)
    blocks = [m.group(2) for m in FENCE_RE.finditer(text)] or [text]
    out: list[Candidate] = []
    seen: set[str] = set()

    def emit(setup: list[ast.stmt], node: ast.Assert) -> None:
        node = ast.Assert(test=node.test, msg=None)
        if isinstance(node.test, ast.Constant):
            return
        needed = _names_loaded(node)
        chosen: list[ast.stmt] = []
        for stmt in reversed(setup):
            bound = _names_bound(stmt) if not isinstance(stmt, ast.Expr) else set()
            used = _names_loaded(stmt)
            if bound & needed or (isinstance(stmt, (ast.Expr, ast.AugAssign)) and used & needed):
                chosen.insert(0, stmt)
                needed |= used
        if len(chosen) > MAX_SETUP:
            return
        if not any(_exercises(n, focal) for n in [node, *chosen]):
            return
        cand = Candidate(focal.name, tuple(ast.unparse(s) for s in chosen), ast.unparse(node), origin)
        if cand.code not in seen:
            seen.add(cand.code)
            out.append(cand)

    def walk(stmts: list[ast.stmt], outer: list[ast.stmt]) -> None:
        setup = list(outer)
        for s in stmts:
            if isinstance(s, ast.Assert):
                emit(setup, s)
            elif isinstance(s, _SETUP_TYPES):
                if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
                    continue  # a docstring or a bare string
                if not _imports_target(s, targets):
                    setup.append(s)
            elif (isinstance(s, ast.FunctionDef) and s.name.startswith("test") and not s.args.args) or (
                isinstance(s, ast.If) and "__name__" in ast.unparse(s.test)
            ):
                walk(s.body, setup)

    for block in blocks:
        walk(_statements(block), [])
    return out


def doctest_code(focal: Focal) -> str:
    """The docstring's examples as code: ``>>> f(x)`` with output ``y`` becomes ``assert f(x) == y``."""
    import doctest

    if not focal.docstring:
        return ""
    try:
        examples = doctest.DocTestParser().get_examples(focal.docstring)
    except ValueError:
        return ""
    lines = []
    for ex in examples:
        src, want = ex.source.strip(), ex.want.strip()
        if not want:
            lines.append(src)
            continue
        if want.startswith("Traceback (most recent call last)"):
            continue
        try:
            ast.parse(src, mode="eval")
            ast.parse(want, mode="eval")
        except (SyntaxError, ValueError):
            continue
        lines.append(f"assert {src} == {' '.join(want.split())}")
    return "\n".join(lines)


def doctest_candidates(focal: Focal, module_names: Sequence[str] = ()) -> list[Candidate]:
    return extract_candidates(doctest_code(focal), focal, module_names, origin="doctest")


# -- prompting ----------------------------------------------------------------------------------


def instance_name(class_name: str) -> str:
    """``TextWrapper`` -> ``text_wrapper``: the variable a test builds an instance in."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", class_name).lower().lstrip("_")
    return snake if snake.isidentifier() and snake != class_name else "obj"


def _init_needs_args(focal: Focal) -> bool:
    m = re.search(r"def __init__\(([^)]*)\)", focal.class_context)
    if not m:
        return False
    params = [p.strip() for p in m.group(1).split(",") if p.strip()]
    return any("=" not in p and not p.startswith("*") for p in params[1:])


def build_prompt(info: ModuleInfo, focal: Focal, k: int, seeds: Sequence[Candidate] = ()) -> tuple[str, str]:
    """(user message, start of the reply): the reply is pre-filled to go straight to asserts.

    A 135M model asked for asserts tends to rewrite the function first; opening the
    ``python`` block and the first ``assert`` for it halves the tokens and the junk
    (docs/asserts.md has the measurements behind the exact form).
    """
    context = f"{info.imports}\n\n\n" if info.imports else ""
    if focal.is_method:
        body = "".join("    " + line if line.strip() else line for line in focal.source.splitlines(keepends=True))
        code = f"{context}{focal.class_context.rstrip()}\n\n{body}"
        what = f"the method `{focal.attr}` of the class `{focal.class_name}`"
    else:
        code = context + focal.source
        what = f"the function `{focal.attr}`"
    message = (
        f"Here is Python code from the module `{info.name}`:\n\n```python\n{code.rstrip()}\n```\n\n"
        f"Write {k} different assert statements that test {what} on typical inputs and edge cases. "
        "Reply with one ```python code block that contains only the assert statements, one per line."
    )
    reply = "```python\n" + "".join(f"{c.code}\n" for c in list(seeds)[:3])
    if focal.class_name is not None:  # focal.is_method
        var = instance_name(focal.class_name)
        if not any(line.startswith(f"{var} = ") for line in reply.splitlines()):
            reply += f"{var} = {focal.class_name}(" + ("" if _init_needs_args(focal) else ")\n")
    else:
        reply += f"assert {focal.attr}"  # no "(": measured, the model then breaks the line far less
    return message, reply


def generate_candidates(
    engine, info: ModuleInfo, focal: Focal, cfg: AssertsConfig, seeds: Sequence[Candidate] = ()
) -> tuple[list[Candidate], Generation]:
    """The model's distinct candidates for one function (seeds excluded), over up to ``cfg.tries`` replies.

    The first reply is greedy, later ones sampled; each is generated a line at a time
    (see ``reply_lines``) and stops as soon as it holds enough new candidates.
    """
    from assistant.runtime.engine import Sampling
    from assistant.runtime.prompts import Request

    message, reply = build_prompt(info, focal, cfg.per_function, seeds)
    prompt = engine.render(Request(message), style="chat", system=None)
    targets = target_names(info)
    report = Generation()
    known = {c.code for c in seeds}
    found: list[Candidate] = []

    def new_ones(text: str) -> list[Candidate]:
        return [c for c in extract_candidates(text, focal, targets) if c.code not in known]

    for attempt in range(cfg.tries):
        if len(found) >= cfg.per_function:
            break
        sampling = Sampling(temperature=0.0 if attempt == 0 else cfg.temperature, seed=cfg.seed + attempt)
        enough = lambda text: len(new_ones(text)) >= cfg.per_function - len(found)
        text, tokens, seconds = reply_lines(engine, prompt, reply, sampling, 3 * cfg.per_function + 6, enough)
        report.generations += 1
        report.generated_tokens += tokens
        report.seconds += seconds
        for c in new_ones(text):
            if len(found) < cfg.per_function:
                known.add(c.code)
                found.append(c)
    return found, report


def reply_lines(
    engine, prompt: str, reply: str, sampling, max_lines: int, enough: Callable[[str], bool]
) -> tuple[str, int, float]:
    """Continue ``reply`` one line per generation: (text, tokens generated, seconds).

    A small model's reply tends to run away (one assert repeated, or one line that never
    ends); line by line we stop at the end of the code block, at a line longer than
    LINE_TOKENS (dropped), at the second repeat, or as soon as ``enough(text)`` holds.
    The prompt's prefix is reused by the engine, so each line costs only its own tokens.
    """
    from dataclasses import replace

    stops = tuple(dict.fromkeys(("\n", *engine.model.stop)))
    line_sampling = replace(sampling, max_tokens=LINE_TOKENS, stop=stops)
    text, tokens, seconds = reply, 0, 0.0
    seen = {line.strip() for line in reply.splitlines() if line.strip()}
    repeats = blanks = 0
    for _ in range(max_lines):
        g = engine.generate(prompt + text, line_sampling)
        tokens += g.timings.generated_tokens
        seconds += g.timings.total_s
        if g.finish_reason == "length":
            break
        line = (text.rsplit("\n", 1)[-1] + g.text).strip()  # with the pre-filled start of the line
        if line.startswith("```"):
            break
        if not line:
            blanks += 1
            if blanks >= 2:  # the end of the answer, or nothing more to say
                break
            continue
        blanks = 0
        if line in seen:
            repeats += 1
            if repeats >= 2:
                break
        seen.add(line)
        text += g.text + "\n"
        if enough(text):
            break
    return text, tokens, seconds


def target_names(info: ModuleInfo) -> list[str]:
    return [info.name, import_root(info.path)[1]]
