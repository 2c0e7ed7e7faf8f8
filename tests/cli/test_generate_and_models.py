"""The CLI through typer's CliRunner and through the installed `assistant` executable."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.cli.app import app
from tests.store.test_resolve import entry, make_lock

EXE = shutil.which("assistant", path=str(Path(sys.executable).parent)) or "assistant"
runner = CliRunner()


def run(*args, input=None, env=None):
    return runner.invoke(app, list(args), input=input, env=env)


def assert_one_line_error(result, *needles, code=None):
    assert result.exit_code != 0
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    if code is not None:
        assert result.exit_code == code
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output + result.stderr
    for n in needles:
        assert n in err, err


def test_generate_json_fields_are_present_and_sane():
    r = run("generate", "Write a Python function add(a, b).", "--json", "-n", "64", "--seed", "7")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"]["name"] == "smollm2-135m-instruct"
    assert d["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert d["model"]["quantization"] == "Q4_1" and d["prompt_style"] == "chat"
    assert d["seed"] == 7 and d["finish_reason"] in ("stop", "length")
    assert "def add" in d["text"]
    t = d["timings"]
    assert 0 < t["generated_tokens"] <= 64 and t["prompt_tokens"] > 10
    assert 0 < t["ttft_s"] < 30 and t["decode_tps"] > 0 and t["load_s"] > 0
    assert d["sampling"]["stop"] == ["<|im_end|>"]


def test_stdin_becomes_context_and_code_only_extracts_the_block():
    src = "def area(r):\n    return 3.14159 * r * r\n"
    r = run("generate", "Add a docstring to this function.", "--code-only", "-n", "120", input=src)
    assert r.exit_code == 0, r.stderr
    assert "```" not in r.stdout
    assert "def area" in r.stdout


def test_stats_go_to_stderr():
    r = run("generate", "print hello world in Python", "-n", "16", "--stats")
    assert r.exit_code == 0
    assert "tok/s" in r.stderr and "first token" in r.stderr and "tok/s" not in r.stdout


def test_out_file_is_written_whole(tmp_path):
    out = tmp_path / "sub" / "answer.py"
    r = run("generate", "Write a function that squares a number.", "--code-only", "-n", "80", "--out", str(out))
    assert r.exit_code == 0 and r.stdout == ""
    assert "def " in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["answer.py"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["generate", "hi", "--model", "gpt-9"], ["unknown model 'gpt-9'", "smollm2-135m-instruct"]),
        (["generate", "hi", "--model", "/nonexistent/m.gguf"], ["not found", "/nonexistent/m.gguf"]),
        (["generate", "   "], ["prompt is empty"]),
        (["generate", "hi", "--model", "tinyllama-1.1b-chat-q4_k_m"], ["not pinned", "--pin"]),
        (["generate", "hi", "--prompt-style", "poem"], ["chat or completion"]),
        (["generate", "hi", "--ctx", "100000"], ["larger than the 8192 tokens"]),
        (["models", "path", "codellama-7b-python-q4_k_m"], ["not pinned"]),
    ],
)
def test_bad_input_is_one_line(args, needles):
    assert_one_line_error(run(*args), *needles)


def test_empty_prompt_without_argument_or_stdin():
    assert_one_line_error(run("generate"), "prompt is empty", code=2)


def test_prompt_longer_than_context():
    r = run("generate", "x = 1\n" * 400, "--ctx", "256")
    assert_one_line_error(r, "tokens but the context window is 256", "--ctx")


def test_not_gguf_and_truncated_files(tmp_path, model_copy):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x7fELF" + b"\0" * 64)
    assert_one_line_error(run("generate", "hi", "--model", str(junk)), "not a GGUF file")
    with open(model_copy, "r+b") as f:
        f.truncate(60_000_000)
    assert_one_line_error(run("generate", "hi", "--model", str(model_copy)), "truncated")


def test_sha_mismatch_names_path_expected_actual_and_fix(tmp_path, model_copy):
    data = model_copy.read_bytes()
    lock = make_lock(tmp_path, entry("copy", data=data))
    (tmp_path / "copy.gguf").write_bytes(data[:-1] + b"\x01")
    r = run("generate", "hi", "--model", "copy", "--lock", str(lock.path))
    assert_one_line_error(
        r, "sha256 mismatch", str(tmp_path / "copy.gguf"), lock.get("copy").sha256, "restore the file"
    )  # pull cannot restore a file source


def test_models_list_and_verify_json():
    r = run("models", "list", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["smollm2-135m-instruct"]["present"] and rows["smollm2-135m-instruct"]["default"]
    assert rows["codellama-7b-python-q4_k_m"]["pinned"] is False
    r = run("models", "verify", "--json")
    assert r.exit_code == 0
    status = {row["name"]: row["status"] for row in json.loads(r.stdout)}
    assert status["smollm2-135m-instruct"] == "ok" and status["tinyllama-1.1b-chat-q4_k_m"] == "unpinned"
    r = run("models", "verify", "tinyllama-1.1b-chat-q4_k_m")
    assert r.exit_code == 1
    r = run("models", "list", env={"COLUMNS": "200"})
    assert "smollm2-135m-instruct" in r.stdout and "unpinned" in r.stdout


def test_models_verify_fails_on_a_tampered_file(tmp_path, model_copy):
    data = model_copy.read_bytes()
    lock = make_lock(tmp_path, entry("copy", data=data))
    (tmp_path / "copy.gguf").write_bytes(data[:-1] + b"\x01")
    r = run("models", "verify", "--json", "--lock", str(lock.path))
    assert r.exit_code == 1
    row = json.loads(r.stdout)[0]
    assert row["status"] == "sha256 mismatch" and row["actual_sha256"] != row["expected_sha256"]


def test_models_pull_offline_refuses_and_pypi_entry_is_already_there():
    r = run("models", "pull", "smollm2-135m-instruct", "--json", "--offline")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "ok"
    assert_one_line_error(run("models", "pull", "tinyllama-1.1b-chat-q4_k_m"), "not pinned")


# -- the installed executable -------------------------------------------------------------


def test_installed_executable_generates():
    done = subprocess.run(
        [EXE, "generate", "Write a Python function that returns the maximum of a list.", "-n", "96", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "def " in done.stdout and done.stderr == ""


def test_piped_stdin_through_the_executable():
    done = subprocess.run(
        [EXE, "generate", "What does this function return for n=3?", "-n", "40"],
        input="def f(n):\n    return n * 2\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip()


def _default_sigint():
    """A job started in the background inherits an ignored SIGINT, and Python then never raises
    KeyboardInterrupt; a user's terminal delivers it, so the child gets the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after(proc, seconds):
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


RAMBLE = "def f0():\n    return 0\n\ndef f1():\n    return 1\n\ndef f2():\n"


@pytest.mark.slow
def test_ctrl_c_while_streaming_is_one_line_and_exit_130():
    proc = subprocess.Popen(
        [EXE, "generate", RAMBLE, "--prompt-style", "completion", "-n", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_default_sigint,
    )
    first = proc.stdout.read(8)  # streaming has started
    assert first
    out, err = _interrupt_after(proc, 0.2)
    assert proc.returncode == 130
    assert err.decode().strip() == "error: interrupted; nothing was written"


@pytest.mark.slow
def test_ctrl_c_with_out_leaves_no_file(tmp_path):
    out = tmp_path / "answer.py"
    proc = subprocess.Popen(
        [EXE, "generate", RAMBLE, "--prompt-style", "completion", "-n", "3000", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_default_sigint,
    )
    _, err = _interrupt_after(proc, 3.0)  # load is ~0.3 s; 3000 tokens take ~30 s
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_help_does_not_import_torch_or_llama_cpp():
    code = (
        "import sys\n"
        "sys.argv = ['assistant', '--help']\n"
        "import assistant.cli.app\n"
        "try:\n    assistant.cli.app.main()\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'huggingface_hub') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    pytest.importorskip("torch")  # the check above only means something where torch is installed


def test_readme_test_command_is_what_ci_runs():
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    ci = (repo / ".ci" / "run").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash")[1:]]
    assert len(blocks) == 2, "the README holds exactly two set-up commands"
    assert blocks[1] in ci
