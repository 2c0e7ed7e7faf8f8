"""HumanEval infilling (the HumanEval-Infilling construction): mask lines of canonical solutions.

Single-line tasks mask one non-blank line of a problem's canonical solution, multi-line tasks
a span of two or more consecutive lines (first and last non-blank); the model sees the
prompt plus the solution's lines before the gap as prefix and the lines after it as suffix.
A task passes when prefix + the model's middle + suffix passes the problem's hidden tests in
the sandbox. The FIM route uses the model's FIM tokens; the chat route asks the chat template
for the missing lines at a marker, to show what FIM buys. Tasks are drawn per problem with a
seeded RNG, so a run is reproducible and ``--per-problem`` scales it towards the full set.
Single-line answers are cut at their first newline on both routes (the bigcode harness's rule).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant.errors import UsageError
from assistant.evaluation.humaneval import Problem, hidden_test_program
from assistant.runtime.prompts import FENCE_RE, Request

KINDS = ("single", "multi")
ROUTES = ("fim", "chat")
MARKER = "<FILL_HERE>"
CHAT_INSTRUCTION = (
    "The Python code below has a gap marked {marker}: one or more lines are missing there. Reply with only "
    "the missing line(s), in one ```python code block, indented as they would be in the file. Do not repeat "
    "the code around the gap.\n\n```python\n{code}```"
)


@dataclass(frozen=True)
class InfillTask:
    task_id: str  # e.g. HumanEval/0/single/3 (the first masked line of the solution)
    problem_id: str
    kind: str
    prefix: str
    middle: str
    suffix: str

    @property
    def indent(self) -> str:
        first = self.middle.split("\n", 1)[0]
        return first[: len(first) - len(first.lstrip())]


def spans(solution: str, kind: str) -> list[tuple[int, int]]:
    """Every maskable [i, j) line span of a solution for the kind (HumanEval-Infilling's candidates)."""
    lines = solution.splitlines(keepends=True)
    solid = [i for i, line in enumerate(lines) if line.strip()]
    if kind == "single":
        return [(i, i + 1) for i in solid]
    return [(i, j + 1) for a, i in enumerate(solid) for j in solid[a + 1 :]]


def build_tasks(problems: Sequence[Problem], kind: str, per_problem: int = 1, seed: int = 0) -> list[InfillTask]:
    if kind not in KINDS:
        raise UsageError(f"infilling kind must be one of {', '.join(KINDS)}, not {kind!r}")
    tasks = []
    for p in problems:
        if not p.canonical_solution.strip():
            continue
        lines = p.canonical_solution.splitlines(keepends=True)
        cands = spans(p.canonical_solution, kind)
        rng = random.Random(f"{seed}:{p.task_id}:{kind}")
        for i, j in sorted(rng.sample(cands, min(per_problem, len(cands)))):
            tasks.append(
                InfillTask(
                    f"{p.task_id}/{kind}/{i}",
                    p.task_id,
                    kind,
                    p.prompt + "".join(lines[:i]),
                    "".join(lines[i:j]),
                    "".join(lines[j:]),
                )
            )
    return tasks


def fill(task: InfillTask, middle: str) -> str:
    """The solution with the model's middle in the gap (a missing final newline is added)."""
    if middle and not middle.endswith("\n"):
        middle += "\n"
    return task.prefix + middle + task.suffix


CHAT_SLACK = 64  # chat-route tokens beyond the gap and the code around it (fences, a sentence)
CONTEXT_LINES = 3  # lines of prefix (suffix) a reply must repeat to count as repeating the file


def _find(keys: list[str], window: list[str], start: int = 0) -> int:
    """Index of the first run of ``window`` in ``keys`` at or after ``start``, else -1."""
    n = len(window)
    for i in range(start, len(keys) - n + 1):
        if keys[i : i + n] == window:
            return i
    return -1


def _solid(text: str) -> list[str]:
    return [k for k in (line.strip() for line in text.splitlines()) if k]


def between_context(task: InfillTask, code: str) -> str:
    """The lines of a reply that fill the gap, when the model repeated the code around it.

    Instruct models often answer with the whole function instead of the missing lines: the
    gap's lines are then the ones after the prefix's last lines and before the suffix's first
    (non-blank lines, compared stripped). A reply that repeats neither is the middle as it is.
    """
    lines = [line for line in code.splitlines(keepends=True) if MARKER not in line]
    solid = [i for i, line in enumerate(lines) if line.strip()]  # reply line index of each non-blank line
    keys = [lines[i].strip() for i in solid]
    pre, suf = _solid(task.prefix)[-CONTEXT_LINES:], _solid(task.suffix)[:CONTEXT_LINES]
    first = _find(keys, pre) if pre else -1
    first = first + len(pre) if first >= 0 else 0
    last = _find(keys, suf, first) if suf else -1
    start = solid[first - 1] + 1 if first > 0 else 0
    end = solid[last] if last >= 0 else len(lines)
    return "".join(lines[start:end])


def chat_middle(task: InfillTask, answer: str) -> str:
    """The missing lines from a chat answer: its first code block, without repeated context, re-indented to the gap."""
    blocks = [m.group(2) for m in FENCE_RE.finditer(answer)]
    code = blocks[0] if blocks else answer
    code = between_context(task, code).strip("\n")
    if not code.strip():
        return ""
    return reindent(code, len(task.indent)) + "\n"


def reindent(code: str, width: int) -> str:
    """Shift every line so that the first non-blank one starts at column ``width`` (relative nesting kept)."""
    lines = code.expandtabs(4).splitlines(keepends=True)
    first = next(line for line in lines if line.strip())
    shift = width - (len(first) - len(first.lstrip()))
    return "".join(
        " " * max(0, len(line) - len(line.lstrip()) + shift) + line.lstrip() if line.strip() else line for line in lines
    )


def chat_request(task: InfillTask) -> str:
    code = task.prefix + task.indent + MARKER + "\n" + task.suffix
    return CHAT_INSTRUCTION.format(marker=MARKER, code=code)


@dataclass
class TaskResult:
    task_id: str
    kind: str
    route: str
    passed: bool
    outcome: str
    middle: str
    finish_reason: str
    generated_tokens: int
    seconds: float
    reply: str = ""  # the model's text as generated (the chat route's middle is cut out of it)


@dataclass
class InfillSummary:
    model: str
    sha256: str
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # kind -> route -> stats

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InfillConfig:
    kinds: tuple[str, ...] = KINDS
    routes: tuple[str, ...] = ROUTES
    per_problem: int = 1
    seed: int = 0
    limit: int | None = None
    max_tokens_single: int = 48
    max_tokens_multi: int = 160
    timeout_s: float = 10.0

    def validate(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise UsageError(f"--kind {k!r} is not one of {', '.join(KINDS)}")
        for r in self.routes:
            if r not in ROUTES:
                raise UsageError(f"--route {r!r} is not one of {', '.join(ROUTES)}")
        if not self.kinds or not self.routes:
            raise UsageError("pass at least one --kind and one --route")


RunPrograms = Callable[[list[str], float], list]
BATCH = 16  # tasks generated, then scored and saved together: a stopped run loses at most one batch


def identity(model_sha256: str, cfg: InfillConfig) -> dict:
    """What a saved row depends on: a rerun resumes only when all of it is the same."""
    keep = ("per_problem", "seed", "max_tokens_single", "max_tokens_multi", "timeout_s")
    return {"model_sha256": model_sha256, **{k: getattr(cfg, k) for k in keep}}


def load_done(out: Path, ident: dict) -> list[TaskResult]:
    """Rows of an earlier run of the same identity in ``out`` (none when the identity differs)."""
    try:
        saved = json.loads((out / "run.json").read_text())
        lines = (out / "results.jsonl").read_text().splitlines()
    except (OSError, ValueError):
        return []
    if saved != ident:
        raise UsageError(
            f"{out} holds an infilling run with other settings or another model ({out / 'run.json'})",
            hint="pass another --out, or delete that directory to start again",
        )
    return [TaskResult(**json.loads(line)) for line in lines if line.strip()]


def run_infilling(
    engine,
    problems: Sequence[Problem],
    cfg: InfillConfig,
    run_programs: RunPrograms,
    out: Path,
    on_task: Callable[[TaskResult], None] | None = None,
) -> InfillSummary:
    """Generate and score every task for each kind and route; writes results.jsonl and summary.json.

    Rows are saved after every batch; a rerun with the same model and settings skips the tasks
    already scored, so a long run can stop and resume.
    """
    from assistant.atomic import atomic_write_text
    from assistant.runtime.engine import Sampling
    from assistant.runtime.fim import InfillRequest, infill, require_fim

    cfg.validate()
    fim = require_fim(engine) if "fim" in cfg.routes else None
    by_id = {p.task_id: p for p in problems}
    ident = identity(engine.model.sha256, cfg)
    rows = load_done(out, ident)
    done = {(r.task_id, r.route) for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run.json", json.dumps(ident, indent=2) + "\n")

    def generate(task: InfillTask, kind: str, route: str) -> tuple[str, Any]:
        budget = cfg.max_tokens_single if kind == "single" else cfg.max_tokens_multi
        # single-line tasks end at the first newline, as in the bigcode harness and editors' one-line mode
        stops = ("\n",) if kind == "single" else ()
        if route == "fim":
            sampling = Sampling(max_tokens=budget, temperature=0.0, seed=cfg.seed, stop=stops)
            r = infill(engine, InfillRequest(task.prefix, task.suffix), sampling, fim=fim)
            return r.text, r.generation
        prompt = engine.render(Request(chat_request(task)), style="chat", system=None)
        # room to repeat the code around the gap, which instruct models often do despite the instruction
        room = budget + len(engine.tokenize(task.prefix + task.suffix)) + CHAT_SLACK
        gen = engine.generate(prompt, Sampling(max_tokens=room, temperature=0.0, seed=cfg.seed, stop=engine.model.stop))
        middle = chat_middle(task, gen.text)
        if kind == "single":
            middle = middle.split("\n", 1)[0] + "\n" if middle.strip() else middle
        return middle, gen

    for kind in cfg.kinds:
        tasks = build_tasks(problems, kind, cfg.per_problem, cfg.seed)[: cfg.limit]
        for route in cfg.routes:
            todo = [t for t in tasks if (t.task_id, route) not in done]
            for start in range(0, len(todo), BATCH):
                programs, partial = [], []
                for task in todo[start : start + BATCH]:
                    t0 = time.perf_counter()
                    middle, gen = generate(task, kind, route)
                    programs.append(hidden_test_program(by_id[task.problem_id], fill(task, middle)))
                    partial.append((task, middle, gen, time.perf_counter() - t0))
                outcomes = run_programs(programs, cfg.timeout_s)
                for (task, middle, gen, secs), res in zip(partial, outcomes, strict=True):
                    row = TaskResult(
                        task.task_id,
                        kind,
                        route,
                        bool(res.passed),
                        res.outcome.value,
                        middle,
                        gen.finish_reason,
                        gen.timings.generated_tokens,
                        secs,
                        gen.text,
                    )
                    rows.append(row)
                    if on_task:
                        on_task(row)
                atomic_write_text(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows))
    wanted = {
        (t.task_id, route)
        for kind in cfg.kinds
        for t in build_tasks(problems, kind, cfg.per_problem, cfg.seed)[: cfg.limit]
        for route in cfg.routes
    }
    rows = [r for r in rows if (r.task_id, r.route) in wanted]
    summary = InfillSummary(engine.model.name, engine.model.sha256)
    for kind in cfg.kinds:
        for route in cfg.routes:
            mine = [r for r in rows if r.kind == kind and r.route == route]
            if mine:
                summary.results.setdefault(kind, {})[route] = {
                    "tasks": len(mine),
                    "passed": sum(r.passed for r in mine),
                    "pass@1": sum(r.passed for r in mine) / len(mine),
                    "mean_seconds": sum(r.seconds for r in mine) / len(mine),
                }
    atomic_write_text(out / "summary.json", json.dumps({**summary.to_dict(), "config": asdict(cfg)}, indent=2) + "\n")
    return summary
