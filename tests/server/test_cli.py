"""`assistant serve` and `assistant infill` as real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from assistant.store.resolve import MODEL_ENV


def _cli(*args: str, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assistant", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_serve_subprocess_answers_then_stops(small_model):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assistant",
            "serve",
            "-m",
            small_model.name,
            "--port",
            "0",
            "--threads",
            "1",
            "--ctx",
            "512",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        assert m, line
        url = m.group(1)
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        r = httpx.post(url + "/v1/completions", json={"prompt": "def f():", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
    assert p.returncode == 0


def test_serve_bad_model_is_one_line(tmp_path):
    r = _cli("serve", "-m", str(tmp_path / "none.gguf"), "--port", "0")
    assert r.returncode != 0 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_infill_refuses_a_model_without_fim(tmp_path, small_model):
    src = tmp_path / "a.py"
    src.write_text("def f():\n    \n")
    r = _cli("infill", str(src), "--at", "2:5", "-m", small_model.name)
    assert r.returncode == 1 and "no fill-in-the-middle tokens" in r.stderr and "Traceback" not in r.stderr


def test_infill_bad_cursor_and_missing_file(tmp_path):
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    r = _cli("infill", str(src), "--at", "nine")
    assert r.returncode == 2 and "is not LINE:COL" in r.stderr
    r = _cli("infill", str(src), "--at", "7:1")
    assert r.returncode == 2 and "line 7 is outside the file" in r.stderr
    r = _cli("infill", str(tmp_path / "nope.py"), "--at", "1:1")
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.slow
def test_infill_in_place_on_qwen(tmp_path, code_model):
    src = tmp_path / "m.py"
    src.write_text("def add(a, b):\n    \n\n\nassert add(2, 3) == 5\n")
    env = {k: v for k, v in os.environ.items() if k != MODEL_ENV}
    r = _cli(
        "infill",
        str(src),
        "--at",
        "2:5",
        "-m",
        code_model.name,
        "--threads",
        "2",
        "--ctx",
        "1024",
        "--max-tokens",
        "24",
        "--in-place",
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    text = src.read_text()
    assert "a + b" in text and text.endswith("assert add(2, 3) == 5\n")
    subprocess.run([sys.executable, str(src)], check=True)
