"""HumanEval infilling tasks: construction from canonical solutions, and scoring in the real sandbox."""

from __future__ import annotations

import pytest

from assistant.evaluation.humaneval import hidden_test_program, load_problems
from assistant.evaluation.infilling import MARKER, build_tasks, chat_middle, chat_request, fill, spans
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many


def test_spans_cover_the_benchmark_definitions():
    sol = "    a = 1\n\n    b = 2\n    return a + b\n"
    assert spans(sol, "single") == [(0, 1), (2, 3), (3, 4)]
    assert spans(sol, "multi") == [(0, 3), (0, 4), (2, 4)]


def test_tasks_are_seeded_and_the_canonical_middle_passes():
    problems = load_problems()[:12]
    for kind in ("single", "multi"):
        tasks = build_tasks(problems, kind, per_problem=1, seed=0)
        assert tasks == build_tasks(problems, kind, per_problem=1, seed=0)
        n = sum(1 for p in problems if spans(p.canonical_solution, kind))  # one-line solutions have no multi span
        assert len(tasks) == n >= 8 and all(t.middle.strip() for t in tasks)
        by_id = {p.task_id: p for p in problems}
        right = [hidden_test_program(by_id[t.problem_id], fill(t, t.middle)) for t in tasks]
        wrong = [hidden_test_program(by_id[t.problem_id], fill(t, t.indent + "pass\n")) for t in tasks]
        results = run_many(right + wrong, Limits(timeout_s=10))
        assert all(r.passed for r in results[:n])
        assert sum(r.passed for r in results[n:]) < n  # removing code breaks (almost) every task


def test_chat_answer_is_reindented_to_the_gap():
    task = build_tasks(load_problems()[:1], "single")[0]
    assert "<FILL_HERE>" in chat_request(task) and task.indent + "<FILL_HERE>" in chat_request(task)
    got = chat_middle(task, "Here:\n```python\n" + task.middle.strip() + "\n```\n")
    assert got == task.middle


def test_a_chat_answer_that_repeats_the_function_gives_only_the_gap():
    for kind in ("single", "multi"):
        for task in build_tasks(load_problems()[:20], kind):
            whole = task.prefix + task.middle + task.suffix
            assert chat_middle(task, "Sure:\n```python\n" + whole + "```\nDone.") == task.middle, task.task_id
            marked = task.prefix + task.indent + MARKER + "\n" + task.suffix  # repeated without filling
            assert chat_middle(task, "```python\n" + marked + "```") == ""


@pytest.mark.slow
def test_chat_route_run_writes_results(engine, tmp_path):
    from assistant.evaluation.infilling import InfillConfig, run_infilling

    cfg = InfillConfig(kinds=("single",), routes=("chat",), limit=2, max_tokens_single=8)
    summary = run_infilling(engine, load_problems()[:2], cfg, lambda ps, t: run_many(ps, Limits(timeout_s=t)), tmp_path)
    stats = summary.results["single"]["chat"]
    assert stats["tasks"] == 2 and 0 <= stats["passed"] <= 2
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "summary.json").is_file()


def test_a_rerun_resumes_and_other_settings_are_refused(engine, tmp_path):
    from assistant.errors import UsageError
    from assistant.evaluation.infilling import InfillConfig, run_infilling

    calls: list[int] = []

    def run(ps, t):
        calls.append(len(ps))
        return run_many(ps, Limits(timeout_s=t))

    problems = load_problems()[:3]
    first = InfillConfig(kinds=("single",), routes=("chat",), limit=2, max_tokens_single=8)
    run_infilling(engine, problems, first, run, tmp_path)
    more = InfillConfig(kinds=("single",), routes=("chat",), limit=3, max_tokens_single=8)
    summary = run_infilling(engine, problems, more, run, tmp_path)
    assert calls == [2, 1]  # only the new task was generated and scored
    assert summary.results["single"]["chat"]["tasks"] == 3
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
    with pytest.raises(UsageError, match="other settings"):
        run_infilling(engine, problems, InfillConfig(kinds=("single",), routes=("chat",), seed=1), run, tmp_path)
