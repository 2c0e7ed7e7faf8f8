"""Sample candidates, ask the same model for tests, and rerank by execution (CodeT / cluster)."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from assistant.codegen.codet import (
    RANKERS,
    CaseResult,
    ProgramRunner,
    Ranking,
    assert_request,
    extract_asserts,
    run_matrix,
)
from assistant.runtime.engine import Engine, Generation, Sampling
from assistant.runtime.prompts import Request

TEST_TRIES = 3


@dataclass
class RerankResult:
    method: str
    chosen: int
    tests: list[str]
    matrix: list[list[CaseResult]]
    ranking: Ranking
    test_generations: int = 0
    test_parse_failures: int = 0  # test generations that yielded no usable assert

    def explain_rows(self) -> list[dict]:
        return [
            {"members": list(g.members), "tests_passed": len(g.tests_passed), "score": g.score}
            for g in self.ranking.groups
        ]


def sample_candidates(engine: Engine, prompt: str, n: int, sampling: Sampling) -> list[Generation]:
    """n samples of one prompt with seeds seed, seed+1, ...; the prompt's KV prefix is reused."""
    base = sampling.seed if sampling.seed is not None else 0
    return [engine.generate(prompt, replace(sampling, seed=base + i)) for i in range(n)]


def generate_tests(
    engine: Engine, task: str, entry_point: str, m: int, sampling: Sampling, seeds: Sequence[str] = ()
) -> tuple[list[str], int, int]:
    """Up to m distinct asserts for ``entry_point``: the given seeds (e.g. doctests), then the model's.

    The first request is greedy; later ones sample, so a model that repeats itself still
    gets a few chances. Returns (tests, generations used, generations with no usable assert).
    """
    tests = list(dict.fromkeys(seeds))
    prompt = engine.render(Request(assert_request(task, entry_point, m)), style="chat")
    used = failures = 0
    for attempt in range(TEST_TRIES):
        if len(tests) >= m + len(seeds):
            break
        s = replace(
            sampling,
            temperature=0.0 if attempt == 0 else max(sampling.temperature, 0.8),
            seed=(sampling.seed or 0) + 1000 + attempt,
        )
        found = extract_asserts(engine.generate(prompt, s).text, entry_point)
        used += 1
        failures += not found
        for t in found:
            if t not in tests:
                tests.append(t)
    return tests[: m + len(seeds)], used, failures


def rerank_many(
    methods: Sequence[str],
    solutions: Sequence[str | None],
    tests: list[str],
    runner: ProgramRunner,
    *,
    test_generations: int = 0,
    test_parse_failures: int = 0,
) -> list[RerankResult]:
    """Run every valid solution (None = unusable) against every test once; rank by each method."""
    matrix = run_matrix(solutions, tests, runner)
    valid = [s is not None for s in solutions]
    out = []
    for method in methods:
        ranking = RANKERS[method](matrix, valid)
        out.append(RerankResult(method, ranking.chosen, tests, matrix, ranking, test_generations, test_parse_failures))
    return out


def rerank(
    method: str, solutions: Sequence[str | None], tests: list[str], runner: ProgramRunner, **counts
) -> RerankResult:
    return rerank_many([method], solutions, tests, runner, **counts)[0]


def sandbox_runner(limits) -> ProgramRunner:
    """Run harness programs in the sandbox pool and hand back their stdout."""
    from assistant.sandbox.pool import run_many

    return lambda programs: [r.stdout for r in run_many(programs, limits)]


def main_function(codes: Sequence[str | None]) -> str | None:
    """The function most candidates define first: the entry point of a free-form request."""
    names = []
    for code in codes:
        if not code:
            continue
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        first = next((n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
        if first:
            names.append(first)
    return Counter(names).most_common(1)[0][0] if names else None
