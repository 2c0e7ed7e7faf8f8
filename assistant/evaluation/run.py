"""HumanEval-style pass@k evaluation: sample, sanitize, execute in the sandbox, rerank, resume.

Output directory (all JSON Lines are appended one finished problem at a time, so a killed
run loses at most the problem in flight and a rerun continues where it stopped):
  config.json     the settings that determine results (a rerun must match them)
  samples.jsonl   one line per sample: raw output, program, outcome
  problems.jsonl  one line per finished problem: counts, rerank choice
  summary.json    pass@k and counts over the finished problems
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from assistant.atomic import atomic_write_text
from assistant.codegen.codet import doctest_asserts
from assistant.codegen.rerank import generate_tests, rerank_many, sample_candidates
from assistant.errors import AssistantError, UsageError
from assistant.evaluation.humaneval import Problem, chat_request, hidden_test_program, load_problems, sanitize
from assistant.evaluation.passk import mean_pass_at_k
from assistant.runtime.engine import Engine, Sampling
from assistant.runtime.prompts import Request

# Codex-paper stops for completion prompts: anything back at column 0 ends the function.
COMPLETION_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
RERANKS = ("none", "codet", "cluster")


@dataclass(frozen=True)
class EvalConfig:
    n: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    prompt_style: str = "chat"
    rerank: str = "none"  # none, codet, cluster, or several joined by commas (one execution matrix)
    tests: int = 10
    seed: int = 0
    timeout_s: float = 10.0
    dataset: str = "humaneval"
    # Chat prompts: None keeps the chat template's own default system message. Measured on
    # SmolLM2-135M greedy: our code-assistant system message gave 7/164 (see docs/results.md).
    system: str | None = None

    def validate(self) -> None:
        if self.n < 1:
            raise UsageError("-n must be at least 1")
        if self.temperature == 0 and self.n > 1:
            raise UsageError(
                f"-n {self.n} with greedy decoding gives {self.n} identical samples",
                hint="set --temperature (e.g. 0.8)",
            )
        bad = [k for k in self.ks if k < 1 or k > self.n]
        if bad:
            raise UsageError(
                f"pass@k needs 1 <= k <= n={self.n}; got k={bad}", hint=f"pass -n {max(self.ks)} or fewer -k values"
            )
        if (not self.methods and self.rerank != "none") or any(m not in RERANKS[1:] for m in self.methods):
            raise UsageError(f"--rerank must be none, or codet and/or cluster joined by a comma, not {self.rerank!r}")
        if self.methods and self.n < 2:
            raise UsageError("reranking needs several candidates", hint="pass -n 5 or more with --temperature 0.8")
        if self.prompt_style not in ("chat", "completion"):
            raise UsageError("--prompt-style must be chat or completion")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.rerank.split(",") if m.strip() and m.strip() != "none")


@dataclass
class ProblemRecord:
    task_id: str
    n: int
    correct: int
    passed: list[bool]
    issues: dict[str, int] = field(default_factory=dict)
    reranks: dict[str, dict] = field(default_factory=dict)  # method -> {"choice": i, "passed": bool}
    tests_generated: int | None = None


def prompt_for(engine: Engine, problem: Problem, style: str, system: str | None = None) -> str:
    if style == "chat":
        return engine.render(Request(chat_request(problem)), style="chat", system=system)
    return problem.prompt


def _count(issues: dict[str, int], key: str, by: int = 1) -> None:
    if by:
        issues[key] = issues.get(key, 0) + by


def evaluate_problem(
    engine: Engine, problem: Problem, cfg: EvalConfig, run_programs
) -> tuple[ProblemRecord, list[dict]]:
    """Sample, sanitize and test one problem; rerank if asked. Never raises on bad model output."""
    prompt = prompt_for(engine, problem, cfg.prompt_style, cfg.system)
    stops = COMPLETION_STOPS if cfg.prompt_style == "completion" else ()
    sampling = Sampling(
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        stop=stops + engine.model.stop,
    )
    generations = sample_candidates(engine, prompt, cfg.n, sampling)
    solutions = [sanitize(problem, g.text, cfg.prompt_style) for g in generations]
    usable = [i for i, s in enumerate(solutions) if not s.problem]
    results = run_programs([hidden_test_program(problem, solutions[i].code) for i in usable], cfg.timeout_s)
    outcome = {i: r for i, r in zip(usable, results)}
    issues: dict[str, int] = {}
    samples = []
    for i, (g, s) in enumerate(zip(generations, solutions)):
        r = outcome.get(i)
        if s.problem:
            _count(issues, s.problem.replace(" ", "_"))
        elif r and not r.passed:
            _count(issues, r.outcome.value)
        _count(issues, "hit_max_tokens", g.finish_reason == "length")
        samples.append(
            {
                "task_id": problem.task_id,
                "sample": i,
                "seed": g.seed,
                "raw": g.text,
                "program": s.code,
                "sanitize_problem": s.problem or None,
                "outcome": r.outcome.value if r else "not run",
                "detail": r.detail if r else s.problem,
                "passed": bool(r and r.passed),
                "finish_reason": g.finish_reason,
                "generated_tokens": g.timings.generated_tokens,
            }
        )
    passed = [bool(s["passed"]) for s in samples]
    record = ProblemRecord(problem.task_id, cfg.n, sum(passed), passed, issues)
    if cfg.methods:
        # The bare prompt, not the "complete this function" wrapper: with the wrapper the
        # small model rewrites the function instead of writing asserts (measured).
        tests, used, failed = generate_tests(
            engine,
            problem.prompt,
            problem.entry_point,
            cfg.tests,
            sampling,
            seeds=doctest_asserts(problem.prompt, problem.entry_point),
        )
        _count(issues, "test_generations_without_asserts", failed)
        runner = lambda programs: [r.stdout for r in run_programs(programs, cfg.timeout_s)]
        ranked = rerank_many(cfg.methods, [s.code if not s.problem else None for s in solutions], tests, runner)
        record.reranks = {rr.method: {"choice": rr.chosen, "passed": passed[rr.chosen]} for rr in ranked}
        record.tests_generated = len(tests)
    return record, samples


@dataclass
class Summary:
    problems: int
    n: int
    pass_at_k: dict[str, float]
    rerank_pass_at_1: dict[str, float]
    issues: dict[str, int]
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(records: list[ProblemRecord], cfg: EvalConfig) -> Summary:
    counts = [(r.n, r.correct) for r in records]
    issues: dict[str, int] = {}
    for r in records:
        for k, v in r.issues.items():
            _count(issues, k, v)
    reranked = {m: [r.reranks[m]["passed"] for r in records if m in r.reranks] for m in cfg.methods}
    return Summary(
        problems=len(records),
        n=cfg.n,
        pass_at_k={f"pass@{k}": mean_pass_at_k(counts, k) for k in cfg.ks},
        rerank_pass_at_1={m: sum(v) / len(v) for m, v in reranked.items() if v},
        issues=issues,
        config=asdict(cfg),
    )


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class RunDir:
    """The output directory of one evaluation: config check, resume state, appends."""

    def __init__(self, path: Path, cfg: EvalConfig, model_sha256: str):
        self.path = path
        settings = {k: v for k, v in asdict(cfg).items() if k != "ks"}  # k only changes the summary
        self.config = json.loads(json.dumps({**settings, "model_sha256": model_sha256}))
        path.mkdir(parents=True, exist_ok=True)
        cfg_file = path / "config.json"
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            if diff:
                raise AssistantError(
                    f"{path} holds a run with different settings ({', '.join(diff)})",
                    hint="pass another --out, or delete that directory to start over",
                )
        else:
            atomic_write_text(cfg_file, json.dumps(self.config, indent=2) + "\n")
        self.records = [ProblemRecord(**r) for r in _read_jsonl(path / "problems.jsonl")]
        done = {r.task_id for r in self.records}
        # Samples of a problem that never finished are dropped: the rerun redoes that problem.
        samples = [s for s in _read_jsonl(path / "samples.jsonl") if s["task_id"] in done]
        atomic_write_text(path / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
        atomic_write_text(path / "problems.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in self.records))

    @property
    def done(self) -> set[str]:
        return {r.task_id for r in self.records}

    def append(self, record: ProblemRecord, samples: list[dict]) -> None:
        with open(self.path / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(s) + "\n" for s in samples))
        with open(self.path / "problems.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record)) + "\n")
        self.records.append(record)

    def write_summary(self, summary: Summary) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")


#: Called once per finished problem as (record, finished so far, problems in the run); the
#: problems a resumed run already holds come first, so a progress bar starts where it stopped.
Progress = Callable[[ProblemRecord, int, int], None]


def run_eval(
    engine: Engine,
    cfg: EvalConfig,
    out: Path,
    run_programs,
    *,
    dataset: Path | None = None,
    limit: int | None = None,
    on_problem: Progress | None = None,
) -> Summary:
    cfg.validate()
    problems = load_problems(dataset)[:limit] if limit else load_problems(dataset)
    run = RunDir(out, replace(cfg, dataset=str(dataset) if dataset else "humaneval"), engine.model.sha256)
    todo = [p for p in problems if p.task_id not in run.done]
    wanted = {p.task_id for p in problems}
    finished = [r for r in run.records if r.task_id in wanted]
    if on_problem:
        for i, record in enumerate(finished):
            on_problem(record, i + 1, len(problems))
    try:
        for problem in todo:
            record, samples = evaluate_problem(engine, problem, cfg, run_programs)
            run.append(record, samples)
            finished.append(record)
            if on_problem:
                on_problem(record, len(finished), len(problems))
    except KeyboardInterrupt:
        if not finished:
            raise KeyboardInterrupt(f"no problem finished, nothing saved in {out} but its config.json") from None
        raise KeyboardInterrupt(
            f"{len(finished)} of {len(problems)} problems are saved in {out}; "
            "run the same command again to resume from there"
        ) from None
    summary = summarize(finished, cfg)
    run.write_summary(summary)
    return summary
