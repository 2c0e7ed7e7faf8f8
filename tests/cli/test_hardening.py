"""Issue 18, the command line: every bad input is one line, before the model loads; the README's
examples work as written. Real CLI (CliRunner and the installed executable), real SmolLM2."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.cli.app import app
from tests.cli.test_generate_and_models import EXE, assert_one_line_error

REPO = Path(__file__).resolve().parents[2]
SMOL = "smollm2-135m-instruct"
runner = CliRunner()
DEFS = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):"


def run(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def gen(*args: str, input: str | bytes | None = None):
    """`assistant generate` on the small model, one thread."""
    return run("generate", *args, "-m", SMOL, "--threads", "1", input=input)


# -- 15: option errors are one line for every command ------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "hi", "--threads", "0"], "'--threads': 0 is not in the range x>=1"),
        (["eval", "humaneval", "--threads", "0"], "'--threads': 0 is not in the range"),
        (["generate", "hi", "--bogus"], "No such option: --bogus"),
        (["--bogus"], "No such option: --bogus"),
        (["models", "path"], "Missing argument"),
        (["asserts", "--bogus"], "No such option"),
        (["bench", "--bogus"], "No such option"),
        (["fidelity", "--bogus"], "No such option"),
        (["export", "gguf"], "Missing argument"),
        (["distill", "train", "--bogus"], "No such option"),
    ],
)
def test_option_errors_are_one_line_with_the_help_hint(args, needle):
    r = run(*args)
    assert_one_line_error(r, needle, "--help'", code=2)
    assert "╭" not in r.stderr and "Usage:" not in r.stderr


def test_a_bare_group_still_prints_its_help():
    r = run("eval")
    assert "Usage:" in r.output and "humaneval" in r.output and "error:" not in r.output


# -- 8: stop-sequence escapes, the README's examples as written -------------------------------


def _readme_generate_lines() -> list[list[str]]:
    """The README's `assistant generate` lines as argv lists; `cat F | ...` keeps `<F` in front."""
    lines = []
    for line in (REPO / "README.md").read_text().splitlines():
        line = line.split("  #")[0]
        if "assistant generate " not in line:
            continue
        pipe, _, command = line.split("&&")[-1].rpartition("|")
        argv = shlex.split(command)
        argv = argv[argv.index("generate") + 1 :]
        lines.append((["<" + shlex.split(pipe)[1]] if pipe.strip().startswith("cat ") else []) + argv)
    return lines


def test_readme_stop_example_is_interpreted_as_a_newline():
    (line,) = [a for a in _readme_generate_lines() if "--stop" in a]
    args = line + ["--json", "-n", "48"]
    r = gen(*args)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert "\ndef " in d["sampling"]["stop"] and "\\ndef " not in d["sampling"]["stop"]


def test_readme_stop_cuts_a_completion_at_the_next_function():
    stop = next(a for a in _readme_generate_lines() if "--stop" in a)
    stop = stop[stop.index("--stop") + 1]
    free = json.loads(gen(DEFS, "--prompt-style", "completion", "--json", "-n", "40").stdout)["text"]
    assert "\ndef " in free  # the small model goes on with more functions
    r = gen(DEFS, "--prompt-style", "completion", "--json", "-n", "40", "--stop", stop)
    d = json.loads(r.stdout)
    assert d["finish_reason"] == "stop" and "def" not in d["text"]
    assert d["text"] == free[: free.index("\ndef ")]


@pytest.mark.parametrize(
    "args", [a for a in _readme_generate_lines() if "--rerank" not in a], ids=lambda a: " ".join(a)[:40]
)
def test_readme_generate_examples_run_as_written(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stdin = None
    if args[0].startswith("<"):
        (tmp_path / args[0][1:]).write_text("def area(r):\n    return 3.14159 * r * r\n")
        stdin, args = (tmp_path / args[0][1:]).read_text(), args[1:]
    args = ["a function that adds two numbers" if a == "..." else a for a in args]
    r = gen(*args, "-n", "24", input=stdin)
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_bad_escape_is_one_line():
    r = gen("hi", "--stop", "\\q")
    assert_one_line_error(r, "--stop", "unknown escape \\q", code=2)


# -- 9: a bad --out fails before the model is even looked up -----------------------------------


def _bad_outs(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "a_file").write_text("x")
    return [
        (tmp_path, "is a directory"),
        (tmp_path / "a_file" / "answer.py", "which is a file"),
        (Path("/proc/answer.py"), "cannot write in /proc"),
    ]


def test_bad_generate_out_is_one_line_before_the_model_loads(tmp_path):
    for out, needle in _bad_outs(tmp_path):
        # a missing model would be the error if --out were checked after resolving it
        r = run("generate", "hi", "--model", str(tmp_path / "missing.gguf"), "--out", str(out))
        assert_one_line_error(r, "--out", needle, code=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder")
def test_read_only_folder_for_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = run("generate", "hi", "--out", str(ro / "answer.py"))
    assert_one_line_error(r, "cannot write in", code=2)


def test_eval_out_that_is_a_file_is_one_line_before_the_model_loads(tmp_path):
    f = tmp_path / "results"
    f.write_text("not a folder")
    r = run("eval", "humaneval", "--model", str(tmp_path / "missing.gguf"), "--out", str(f))
    assert_one_line_error(r, "--out", "is a file, not a directory", code=2)
    r = run("eval", "humaneval", "--model", str(tmp_path / "missing.gguf"), "--out", "/proc/results")
    assert_one_line_error(r, "cannot write in /proc", code=2)


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "{missing}", "--out", "/proc/run.json"],
        ["bench", "{missing}", "--csv", "/proc/run.csv"],
        ["fidelity", "-s", "{missing}", "--out", "/proc/report.json"],
        ["asserts", "{module}", "-m", "{missing}", "--out", "/proc/test_m.py"],
        ["eval", "asserts", "-m", "{missing}", "--out", "/proc/predictions"],
        ["distill", "corpus", "--out", "/proc/corpus"],
    ],
    ids=lambda a: " ".join(a[:2]) + " " + a[-2],
)
def test_every_output_path_is_checked_before_the_work(args, tmp_path):
    (tmp_path / "m.py").write_text("def f(x):\n    return x\n")
    args = [a.format(missing=tmp_path / "missing.gguf", module=tmp_path / "m.py") for a in args]
    r = run(*args)
    assert_one_line_error(r, args[-2], "cannot write in /proc", code=2)


# -- 10: stdin -----------------------------------------------------------------------------------


def test_non_utf8_stdin_names_the_byte_and_offset(tmp_path):
    r = run("generate", "explain", "--model", str(tmp_path / "missing.gguf"), input=b"ok\nsp\xe9cial\n")
    assert_one_line_error(r, "stdin is not UTF-8", "byte 0xe9 at offset 5 (line 2)", "iconv", code=2)


def test_non_utf8_prompt_argument_is_one_line():
    proc = subprocess.run(
        [os.fsencode(EXE), b"generate", b"caf\xe9", b"-m", SMOL.encode()],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("error: the prompt argument is not UTF-8") and "Traceback" not in err


def test_utf8_bom_on_stdin_is_dropped():
    r = gen("Add a docstring.", "--json", "-n", "8", input="\ufeffdef f():\n    pass\n".encode())
    assert r.exit_code == 0, r.stderr


def _feed(args: list[str], chunk: bytes, total: int) -> tuple[int, str, int, int]:
    """Run ``args`` with ``total`` bytes offered on stdin: (exit code, stderr, bytes taken, max RSS KiB)."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sent = [0]

    def feed() -> None:
        try:
            while sent[0] < total:
                proc.stdin.write(chunk)
                sent[0] += len(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    writer.join(timeout=60)
    return os.waitstatus_to_exitcode(status), proc.stderr.read().decode(), sent[0], usage.ru_maxrss


def test_40_mb_of_stdin_fails_fast_without_reading_it_all():
    args = [EXE, "generate", "summarize this", "-m", SMOL]
    code, err, sent, rss = _feed(args, b"x = 1\n" * (1 << 16), 40_000_000)
    assert code == 2 and err.startswith("error: stdin is too long") and err.count("\n") == 1, err
    assert sent < 40_000_000  # the rest was never read
    # the same start-up failing on one bad byte: a child's peak RSS includes what it inherited
    _, base_err, _, base_rss = _feed(args, b"\xff", 1)
    assert "not UTF-8" in base_err
    assert rss < base_rss + 48 * 1024, (rss, base_rss)  # KiB: no model, no 40 MB string and its copies


# -- 12: seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["4294967296", "4294967295", "18446744073709551616"])
def test_seeds_llama_cpp_cannot_reproduce_are_refused(seed):
    r = gen("hi", "--seed", seed, "-t", "0.8", "-n", "8")
    assert_one_line_error(r, "--seed", "0<=x<=4294967294", code=2)


def test_the_largest_seed_reproduces_and_is_reported():
    args = ("Write a poem about rivers.", "-t", "1.0", "-n", "24", "--json")
    outs = [json.loads(gen(*args, "--seed", "4294967294").stdout) for _ in range(2)]
    assert outs[0]["seed"] == 4294967294 and outs[0]["text"] == outs[1]["text"]
    other = json.loads(gen(*args, "--seed", "0").stdout)
    assert other["text"] != outs[0]["text"]


# -- 14: hostile GGUF metadata -------------------------------------------------------------------


def _nested_arrays_gguf(path: Path, depth: int) -> Path:
    key = b"evil.nesting"
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)
    body += struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)  # array of array of ... of uint8
    path.write_bytes(body + b"\0" * 64)
    return path


def test_deeply_nested_metadata_arrays_are_one_line(tmp_path):
    bad = _nested_arrays_gguf(tmp_path / "nested.gguf", 100_000)
    r = run("generate", "hi", "--model", str(bad))
    assert_one_line_error(r, "nests arrays more than 8 deep")


# -- 7: chat templates that refuse a system message or do not parse ----------------------------

REFUSES_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BROKEN = "{% for m in messages %}{{ m['content'] }"
ALWAYS_RAISES = "{{ raise_exception('this template renders nothing') }}"


def _with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of ``src`` whose tokenizer.chat_template is ``template`` (written with `gguf`)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.get_field("general.architecture").contents(), endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vt = field.types[0]
        sub = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        value = template if field.name == "tokenizer.chat_template" else field.contents()
        writer.add_key_value(field.name, value, vt, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst


@pytest.fixture(scope="module")
def templated(tmp_path_factory, lock):
    from assistant.store.resolve import locate

    src = locate(lock.get(SMOL), lock)
    d = tmp_path_factory.mktemp("templates")
    return {
        name: _with_template(src, d / f"{name}.gguf", t)
        for name, t in [("refuses_system", REFUSES_SYSTEM), ("broken", BROKEN), ("raises", ALWAYS_RAISES)]
    }


def test_template_that_refuses_a_system_message_still_generates(templated):
    r = run(
        "generate",
        "Write a Python function add(a, b).",
        "-m",
        str(templated["refuses_system"]),
        "-n",
        "32",
        "--threads",
        "1",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["timings"]["generated_tokens"] > 0


def test_template_that_does_not_parse_is_one_line_and_completion_works(templated):
    r = run("generate", "hi", "-m", str(templated["broken"]), "-n", "8", "--threads", "1")
    assert_one_line_error(r, "chat template", "does not parse", "--prompt-style completion")
    r = run("generate", "def f():", "-m", str(templated["broken"]), "-n", "8", "--prompt-style", "completion")
    assert r.exit_code == 0, r.stderr


def test_template_that_always_raises_is_one_line(templated):
    r = run("generate", "hi", "-m", str(templated["raises"]), "-n", "8", "--system", "")
    assert_one_line_error(r, "chat template", "this template renders nothing", "--prompt-style completion")


# -- 16: cut output is noted; a spinner only on a terminal --------------------------------------


def test_output_cut_by_max_tokens_is_noted_without_stats():
    r = gen("Write a long essay about compilers.", "-n", "4")
    assert r.exit_code == 0 and "note: the output was cut at --max-tokens 4" in r.stderr


def test_output_cut_by_the_context_is_noted():
    r = gen("Write a long essay about compilers.", "--ctx", "80", "-n", "500", "--json")
    d = json.loads(r.stdout)
    assert d["finish_reason"] == "length" and d["timings"]["generated_tokens"] < 500
    assert "note: the output was cut: the context window is full" in r.stderr and "--ctx" in r.stderr


def _stderr_of(args: list[str], tty: bool) -> str:
    if not tty:
        return subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120).stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    os.close(slave)
    data = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        try:
            chunk = os.read(master, 4096) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        data += chunk
    proc.wait(timeout=60)
    os.close(master)
    return data.decode(errors="replace")


def test_spinner_on_a_terminal_only(tmp_path):
    args = [
        EXE,
        "generate",
        "Write a long essay about compilers.",
        "-m",
        SMOL,
        "-n",
        "200",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "essay.txt"),
    ]
    on_tty = _stderr_of(args, tty=True)
    assert "generating" in on_tty and re.search("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]", on_tty), on_tty
    piped = _stderr_of(args, tty=False)
    assert "generating" not in piped and "\r" not in piped
