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
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def chat_middle(task: InfillTask, answer: str) -> str:
    """The missing lines from a chat answer: its first code block, re-indented to the gap."""
    blocks = [m.group(2) for m in FENCE_RE.finditer(answer)]
    code = blocks[0] if blocks else answer
    code = code.strip("\n")
    if not code.strip():
        return ""
    body = textwrap.dedent(code)
    return "".join(task.indent + line if line.strip() else line for line in body.splitlines(keepends=True)) + "\n"


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


def run_infilling(
    engine,
    problems: Sequence[Problem],
    cfg: InfillConfig,
    run_programs: RunPrograms,
    out: Path,
    on_task: Callable[[TaskResult], None] | None = None,
) -> InfillSummary:
    """Generate and score every task for each kind and route; writes results.jsonl and summary.json."""
    from assistant.atomic import atomic_write_text
    from assistant.runtime.engine import Sampling
    from assistant.runtime.fim import InfillRequest, infill, require_fim

    cfg.validate()
    fim = require_fim(engine) if "fim" in cfg.routes else None
    by_id = {p.task_id: p for p in problems}
    rows: list[TaskResult] = []
    for kind in cfg.kinds:
        tasks = build_tasks(problems, kind, cfg.per_problem, cfg.seed)[: cfg.limit]
        budget = cfg.max_tokens_single if kind == "single" else cfg.max_tokens_multi
        for route in cfg.routes:
            programs, partial = [], []
            for task in tasks:
                t0 = time.perf_counter()
                # single-line tasks end at the first newline, as in the bigcode harness and editors' one-line mode
                stops = ("\n",) if kind == "single" else ()
                sampling = Sampling(max_tokens=budget, temperature=0.0, seed=cfg.seed, stop=stops)
                if route == "fim":
                    r = infill(engine, InfillRequest(task.prefix, task.suffix), sampling, fim=fim)
                    gen, middle = r.generation, r.text
                else:
                    prompt = engine.render(Request(chat_request(task)), style="chat", system=None)
                    gen = engine.generate(
                        prompt, Sampling(max_tokens=budget + 64, temperature=0.0, seed=cfg.seed, stop=engine.model.stop)
                    )
                    middle = chat_middle(task, gen.text)
                    if kind == "single":
                        middle = middle.split("\n", 1)[0] + "\n" if middle.strip() else middle
                programs.append(hidden_test_program(by_id[task.problem_id], fill(task, middle)))
                partial.append((task, route, middle, gen, time.perf_counter() - t0))
            outcomes = run_programs(programs, cfg.timeout_s)
            for (task, route_, middle, gen, secs), res in zip(partial, outcomes, strict=True):
                row = TaskResult(
                    task.task_id,
                    kind,
                    route_,
                    bool(res.passed),
                    res.outcome.value,
                    middle,
                    gen.finish_reason,
                    gen.timings.generated_tokens,
                    secs,
                )
                rows.append(row)
                if on_task:
                    on_task(row)
            out.mkdir(parents=True, exist_ok=True)  # after each batch: a long run that stops keeps what it scored
            atomic_write_text(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows))
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
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps({**summary.to_dict(), "config": asdict(cfg)}, indent=2) + "\n")
    return summary
