"""HumanEval evaluation end to end: real model, real sandbox, real files."""

import json

import pytest
from typer.testing import CliRunner

from assistant.cli.app import app
from assistant.codegen.codet import run_matrix
from assistant.errors import AssistantError, UsageError
from assistant.evaluation.humaneval import hidden_test_program, load_problems
from assistant.evaluation.run import EvalConfig, run_eval
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many

PROBLEMS = load_problems()


def run_programs(programs, timeout_s):
    return run_many(programs, Limits(timeout_s=timeout_s))


def stdout_runner(programs):
    return [r.stdout for r in run_many(programs, Limits(timeout_s=10))]


@pytest.mark.slow
def test_every_canonical_solution_passes_and_a_wrong_one_fails():
    good = run_programs([hidden_test_program(p, p.prompt + p.canonical_solution) for p in PROBLEMS], 20)
    failed = [(p.task_id, r.outcome, r.detail) for p, r in zip(PROBLEMS, good) if not r.passed]
    assert failed == []
    wrong = run_programs([hidden_test_program(PROBLEMS[0], PROBLEMS[0].prompt + "    return False\n")], 10)[0]
    assert not wrong.passed and "AssertionError" in wrong.detail


def test_codet_matrix_through_the_sandbox():
    good = "def inc(x):\n    return x + 1\n"
    wrong = "def inc(x):\n    return x + 2\n"
    hangs = "def inc(x):\n    while x == 3:\n        pass\n    return x + 1\n"
    quits = "import sys\nsys.exit(0)\ndef inc(x):\n    return x + 1\n"
    tests = ["assert inc(1) == 2", "assert inc(3) == 4", "assert inc(-1) == 0"]
    m = run_matrix([good, wrong, hangs, quits, None], tests, stdout_runner)
    assert [[c.passed for c in row] for row in m] == [
        [True, True, True],
        [False, False, False],
        [True, False, True],  # the per-test alarm stops the loop; the other tests still run
        [False, False, False],
        [False, False, False],
    ]
    assert [c.output for c in m[1]] == ["3", "5", "1"]


def test_eval_writes_results_and_resumes(engine, tmp_path):
    cfg = EvalConfig(max_tokens=200, prompt_style="chat")
    seen = []
    s = run_eval(engine, cfg, tmp_path, run_programs, limit=2, on_problem=lambda r, i, n: seen.append(r.task_id))
    assert seen == ["HumanEval/0", "HumanEval/1"] and s.problems == 2
    assert 0.0 <= s.pass_at_k["pass@1"] <= 1.0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["task_id"] for x in samples] == seen
    assert all(x["outcome"] in ("passed", "failed", "timeout", "crashed", "resource_limit", "not run") for x in samples)
    assert json.loads((tmp_path / "summary.json").read_text())["problems"] == 2

    # a torn last line (killed mid-write) is dropped; a rerun only does what is missing
    with open(tmp_path / "problems.jsonl", "a") as f:
        f.write('{"task_id": "HumanEval/2", "n"')
    seen.clear()
    s = run_eval(engine, cfg, tmp_path, run_programs, limit=3, on_problem=lambda r, i, n: seen.append((r.task_id, i)))
    # the saved problems are reported first (so progress starts at 2/3); only HumanEval/2 is run
    assert seen == [("HumanEval/0", 1), ("HumanEval/1", 2), ("HumanEval/2", 3)] and s.problems == 3
    assert [json.loads(line)["task_id"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()][
        -1
    ] == "HumanEval/2"
    assert len((tmp_path / "problems.jsonl").read_text().splitlines()) == 3

    with pytest.raises(AssistantError, match="different settings.*max_tokens"):
        run_eval(engine, EvalConfig(max_tokens=100), tmp_path, run_programs, limit=3)


def test_bad_settings_are_rejected_up_front(engine, tmp_path):
    for cfg, msg in [
        (EvalConfig(n=3, temperature=0.0), "identical samples"),
        (EvalConfig(n=2, ks=(1, 10), temperature=0.8), "1 <= k <= n=2"),
        (EvalConfig(rerank="codet"), "several candidates"),
        (EvalConfig(n=2, temperature=0.8, rerank="codet,best"), "codet and/or cluster"),
    ]:
        with pytest.raises(UsageError, match=msg):
            run_eval(engine, cfg, tmp_path, run_programs, limit=1)


@pytest.mark.slow
def test_codet_rerank_on_a_user_dataset(engine, tmp_path):
    rows = [
        {
            "task_id": "mine/0",
            "prompt": 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
            "entry_point": "add",
            "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
        }
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(n=3, ks=(1, 3), temperature=0.8, rerank="codet,cluster", tests=3, max_tokens=160)
    s = run_eval(engine, cfg, tmp_path / "out", run_programs, dataset=data)
    rec = json.loads((tmp_path / "out" / "problems.jsonl").read_text())
    assert s.problems == 1 and rec["tests_generated"] >= 1
    assert set(rec["reranks"]) == {"codet", "cluster"} and rec["reranks"]["codet"]["choice"] in (0, 1, 2)
    assert rec["reranks"]["codet"]["passed"] == rec["passed"][rec["reranks"]["codet"]["choice"]]
    assert set(s.rerank_pass_at_1) == {"codet", "cluster"} and set(s.pass_at_k) == {"pass@1", "pass@3"}


def test_eval_cli_json_and_bad_dataset(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        app, ["eval", "humaneval", "--limit", "1", "--max-tokens", "128", "--out", str(tmp_path / "o"), "--json"]
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["problems"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    r = runner.invoke(app, ["eval", "humaneval", "--dataset", str(bad), "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "line 1: missing or empty fields" in r.stderr


@pytest.mark.slow
def test_generate_with_codet_rerank_explains(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "generate",
            "Write a Python function is_palindrome(s) that checks whether a string reads the same backwards.",
            "--rerank",
            "codet",
            "--samples",
            "3",
            "--tests",
            "4",
            "--seed",
            "1",
            "--json",
            "--explain",
            "-n",
            "160",
        ],
    )
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["rerank"]["method"] == "codet" and d["rerank"]["candidates"] == 3
    assert 0 <= d["rerank"]["chosen"] < 3
    assert "groups of candidates" in r.stderr
