"""Dataset loading and completion sanitizing on HumanEval's real problems."""

import json

import pytest

from assistant.evaluation.humaneval import DatasetError, Problem, load_problems, sanitize, truncate_body

PROBLEMS = load_problems()
BY_ID = {p.task_id: p for p in PROBLEMS}


def test_humaneval_ships_164_problems():
    assert len(PROBLEMS) == 164
    assert PROBLEMS[0].task_id == "HumanEval/0" and PROBLEMS[0].entry_point == "has_close_elements"


def test_canonical_solutions_sanitize_cleanly_in_both_styles():
    for p in PROBLEMS:
        assert sanitize(p, p.canonical_solution, "completion").problem == ""
        answer = f"Sure.\n```python\n{p.prompt}{p.canonical_solution}\nprint({p.entry_point})\n```\nDone."
        s = sanitize(p, answer, "chat")
        assert s.problem == ""
        assert not s.code.rstrip().endswith(f"print({p.entry_point})")


def test_completion_stops_at_the_end_of_the_function():
    body = "    return 1\n\n\nprint(foo())\ndef other():\n    pass\n"
    assert truncate_body(body) == "    return 1\n"


def test_chat_answer_keeps_the_prompts_imports_and_drops_example_calls():
    p = BY_ID["HumanEval/0"]  # prompt imports List
    answer = (
        "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n\n"
        "print(has_close_elements([1.0, 2.0], 0.5))\n```"
    )
    s = sanitize(p, answer, "chat")
    assert s.problem == ""
    assert s.code.startswith("from typing import List")
    assert "print(" not in s.code


@pytest.mark.parametrize(
    "raw, problem",
    [
        ("I cannot help with that.", "no entry point"),
        ("```python\n```", "no code"),
        ("```python\ndef has_close_elements(:\n```", "syntax error"),
        ("```python\ndef something_else(x):\n    return x\n```", "no entry point"),
    ],
)
def test_bad_model_output_is_classified(raw, problem):
    assert sanitize(BY_ID["HumanEval/0"], raw, "chat").problem == problem


def test_user_dataset_errors_name_the_line(tmp_path):
    good = {"task_id": "t/1", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n    pass\n"}
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DatasetError, match="line 2: bad JSON"):
        load_problems(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "task_id": "t/2", "test": ""}) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: missing or empty fields \['test'\]"):
        load_problems(path)
    path.write_text(json.dumps(good) + "\n")
    assert load_problems(path) == [Problem("t/1", "def f():\n", "f", "def check(c):\n    pass\n")]
