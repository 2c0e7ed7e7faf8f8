"""Issue 18 item 15: Ctrl-C in `eval humaneval` says what was saved; a resumed run's progress
counts the problems it already holds. Real SmolLM2, real sandbox, a real SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from assistant.evaluation.run import EvalConfig, run_eval
from assistant.runtime.engine import Engine, EngineConfig
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many
from assistant.store.resolve import HashCache, resolve
from tests.cli.test_generate_and_models import EXE, _default_sigint

SMOL = "smollm2-135m-instruct"
CFG = EvalConfig(max_tokens=16, prompt_style="completion")


def run_programs(programs, timeout_s):
    return run_many(programs, Limits(timeout_s=timeout_s))


@pytest.fixture(scope="module")
def smol(lock, tmp_path_factory):
    model = resolve(SMOL, lock, HashCache(tmp_path_factory.mktemp("hc") / "h.json"))
    with Engine(model, EngineConfig(n_ctx=1024, n_threads=1)) as e:
        yield e


def test_resumed_progress_counts_the_saved_problems(smol, tmp_path):
    run_eval(smol, CFG, tmp_path, run_programs, limit=2)
    seen = []
    run_eval(smol, CFG, tmp_path, run_programs, limit=3, on_problem=lambda r, i, n: seen.append((r.task_id, i, n)))
    assert seen == [("HumanEval/0", 1, 3), ("HumanEval/1", 2, 3), ("HumanEval/2", 3, 3)]


def test_an_interrupt_says_how_many_problems_were_saved(smol, tmp_path):
    calls = []

    def interrupted_on_the_second(programs, timeout_s):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_programs(programs, timeout_s)

    with pytest.raises(KeyboardInterrupt, match=r"1 of 3 problems are saved in .*run the same command again"):
        run_eval(smol, CFG, tmp_path, interrupted_on_the_second, limit=3)
    assert len((tmp_path / "problems.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_then_resume_through_the_executable(tmp_path):
    out = tmp_path / "run"
    cmd = [
        EXE,
        "eval",
        "humaneval",
        "-m",
        SMOL,
        "--prompt-style",
        "completion",
        "--max-tokens",
        "16",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        cmd + ["--limit", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 120
    while not _saved(out):  # Ctrl-C once the first problem is saved
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    saved = _saved(out)
    last = err.decode().strip().splitlines()[-1]
    assert proc.returncode == 130, err
    assert last.startswith(f"error: interrupted; {saved} of 40 problems are saved in {out}"), last
    assert "nothing was written" not in err.decode() and "Traceback" not in err.decode()

    done = subprocess.run(cmd + ["--limit", str(saved + 1), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["problems"] == saved + 1
    assert f"{saved + 1}/{saved + 1}" in done.stderr


def _saved(out) -> int:
    """Finished problems in a run directory (0 before its problems.jsonl exists)."""
    try:
        return len((out / "problems.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0
