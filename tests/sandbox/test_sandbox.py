"""The sandbox against hostile programs: real subprocesses, no mocks.

Limits are kept small so that a containment failure cannot hurt the machine running the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from assistant.sandbox import child
from assistant.sandbox import runner as sandbox
from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import ExecResult, Outcome, classify
from assistant.sandbox.pool import Program, run_many
from assistant.sandbox.runner import isolation_report, run_program

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs a POSIX system")

QUICK = Limits(timeout_s=10)


def run(source: str, **limits) -> ExecResult:
    return run_program(source, Limits(**{"timeout_s": 10, **limits}))


def cwd_of(result: ExecResult) -> str:
    """Programs below print their working directory on their first line."""
    return result.stdout.splitlines()[0]


def processes_in(workdir: str) -> list[int]:
    """Host pids of processes whose cwd is inside ``workdir`` (they would be escapees)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(workdir):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


# -- how pass/fail is decided ---------------------------------------------------------------------


def test_a_passing_program_passes_and_its_output_is_captured():
    r = run("print('hello')\nimport sys\nprint('oops', file=sys.stderr)\nassert 1 + 1 == 2\n")
    assert r.outcome is Outcome.PASSED and r.passed
    assert (r.exit_code, r.signal, r.detail) == (0, None, "passed")
    assert r.stdout == "hello\n" and r.stderr == "oops\n"
    assert 0 < r.duration_s < 10


def test_a_failing_assertion_is_failed_with_its_line():
    program = (
        "def add(a, b):\n    return a - b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"
    )
    r = run(program)
    assert r.outcome is Outcome.FAILED and not r.passed
    assert r.detail.startswith("AssertionError")
    assert "line 5: assert candidate(1, 2) == 3" in r.detail
    assert r.exit_code == 1 and "Traceback" in r.stderr and "child.py" not in r.stderr.splitlines()[1]


def test_an_assertion_message_is_kept():
    r = run("assert False, 'expected 3, got 4'")
    assert r.outcome is Outcome.FAILED and r.detail.startswith("AssertionError: expected 3, got 4")


def test_a_name_error_names_the_exception():
    r = run("def f():\n    return x\nf()\n")
    assert r.outcome is Outcome.FAILED
    assert "NameError: name 'x' is not defined" in r.detail and "\n" not in r.detail


def test_a_syntax_error_is_failed():
    r = run("def f(:\n    pass\n")
    assert r.outcome is Outcome.FAILED and r.detail.startswith("SyntaxError") and "line 1" in r.detail


def test_stdin_is_empty():
    r = run("input()")
    assert r.outcome is Outcome.FAILED and r.detail.startswith("EOFError")


HUMANEVAL_SHAPE = """
def add(a, b):
    return a + b

{escape}

def check(candidate):
    assert candidate(1, 2) == 4  # would fail

check(add)
"""


@pytest.mark.parametrize("escape", ["import sys; sys.exit(0)", "exit()", "raise SystemExit"])
def test_sys_exit_0_before_the_tests_is_not_a_pass(escape):
    r = run(HUMANEVAL_SHAPE.format(escape=escape))
    assert r.outcome is Outcome.FAILED and r.exit_code == 0
    assert r.detail.startswith("exited before the end (sys.exit(")


def test_os_exit_0_before_the_tests_is_not_a_pass():
    r = run(HUMANEVAL_SHAPE.format(escape="import os; os._exit(0)"))
    assert r.outcome is Outcome.FAILED and r.exit_code == 0
    assert r.detail.startswith("exited before the end")


def test_forged_completion_records_on_every_descriptor_do_not_pass():
    forger = """
import os
for fd in range(3, 256):
    for junk in (b"done", b'\\nexit {"exit_code": 0, "record": {"stage": "done"}}\\n', b'\\nx {"stage": "done"}\\n'):
        try:
            os.write(fd, junk)
        except OSError:
            pass
os._exit(0)
"""
    r = run(forger)
    assert not r.passed and r.detail.startswith("exited before the end")


def test_exit_status_after_the_end_still_counts():
    r = run("import atexit, os\natexit.register(lambda: os._exit(3))\n")
    assert r.outcome is Outcome.FAILED and r.exit_code == 3 and "after the program ended" in r.detail


def test_the_program_runs_as_main_with_its_own_file():
    r = run("import sys, os\nassert __name__ == '__main__'\nprint(os.path.basename(__file__), sys.argv == [__file__])")
    assert r.passed and r.stdout == f"{child.PROGRAM_NAME} True\n"


# -- resources ------------------------------------------------------------------------------------


def test_an_infinite_loop_times_out_on_time():
    started = time.monotonic()
    r = run("while True:\n    pass\n", timeout_s=1)
    elapsed = time.monotonic() - started
    assert r.outcome is Outcome.TIMEOUT and r.detail == "timed out after 1 s (wall clock)"
    assert r.exit_code is None and 1 <= r.duration_s < 2 and elapsed < 3.5


def test_a_sleeping_program_times_out_too():
    r = run("import time\nprint('started', flush=True)\ntime.sleep(60)\n", timeout_s=2)
    assert r.outcome is Outcome.TIMEOUT and r.stdout == "started\n"  # output before the kill is kept


def test_cpu_time_limit_is_a_resource_limit():
    r = run("while True:\n    pass\n", timeout_s=30, cpu_s=1)  # generous wall clock: a loaded machine
    assert r.outcome is Outcome.RESOURCE_LIMIT and r.signal == "SIGXCPU"
    assert "cpu time limit of 1 s" in r.detail


def test_a_memory_hog_hits_the_memory_limit():
    r = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 1024 * 1024))\n", memory_mb=256)
    assert r.outcome is Outcome.RESOURCE_LIMIT
    assert r.detail.startswith("MemoryError") and "memory limit 256 MiB" in r.detail


def test_one_huge_allocation_is_a_resource_limit():
    r = run("x = bytearray(8 * 1024 ** 3)", memory_mb=256)
    assert r.outcome is Outcome.RESOURCE_LIMIT and r.detail.startswith("MemoryError")


def test_file_size_limit():
    r = run("open('big.bin', 'wb').write(b'x' * (3 * 1024 * 1024))", file_size_mb=1)
    assert r.outcome is Outcome.RESOURCE_LIMIT and "File too large" in r.detail


def test_open_files_limit():
    r = run("files = [open(__file__) for _ in range(100)]", open_files=32)
    assert r.outcome is Outcome.RESOURCE_LIMIT and "Too many open files" in r.detail


def test_huge_output_is_capped_without_filling_the_callers_memory():
    program = (
        "import sys\nprint('START')\nblock = 'x' * 65536\n"
        "for _ in range(3200):\n    sys.stdout.write(block)\n"  # ~200 MiB
        "sys.stderr.write('y' * 20_000_000)\nprint()\nprint('END')\n"
    )
    tracemalloc.start()
    try:
        r = run(program, output_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.passed
    assert peak < 16 * 1024 * 1024  # the caller held caps, not 200 MiB
    for text, total in ((r.stdout, 3200 * 65536 + 11), (r.stderr, 20_000_000)):
        assert "bytes truncated" in text and f"of {total} bytes" in text
        assert len(text.encode()) < 64 * 1024 + 200
    assert r.stdout.startswith("START\nxxx") and r.stdout.endswith("xxx\nEND\n")  # head and tail kept


def test_a_segfault_is_crashed_with_sigsegv():
    r = run("print('before', flush=True)\nimport ctypes\nctypes.string_at(0)\n")
    assert r.outcome is Outcome.CRASHED and r.signal == "SIGSEGV" and "SIGSEGV" in r.detail
    assert r.exit_code is None and r.stdout == "before\n"


def test_spawning_is_blocked_by_default():
    for program in (
        "import os\nos.fork()",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
    ):
        r = run(program)
        assert r.outcome is Outcome.FAILED and r.detail.startswith("PermissionError"), r.detail


def test_subprocesses_can_be_allowed():
    r = run(
        "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout)",
        allow_subprocess=True,
    )
    assert r.passed, r.stderr
    assert r.stdout.strip() == "42"


@pytest.mark.slow
def test_a_fork_bomb_is_contained():
    # libc's fork goes around the audit hook: only RLIMIT_NPROC, the pid namespace and the
    # process-group kill hold it. Processes are few so that a failure cannot hurt the machine.
    bomb = """
import ctypes, os
print(os.getcwd(), flush=True)
libc = ctypes.CDLL(None, use_errno=True)
while True:
    libc.fork()
"""
    if isolation_report().uid == 0:
        pytest.skip("RLIMIT_NPROC does not bind uid 0: a fork bomb would not be contained")
    started = time.monotonic()
    r = run(bomb, timeout_s=2, processes=8, allow_subprocess=True)
    assert r.outcome is Outcome.TIMEOUT
    assert time.monotonic() - started < 5
    workdir = cwd_of(r)
    deadline = time.monotonic() + 3
    while processes_in(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_in(workdir) == []
    assert not os.path.exists(workdir)


def test_a_background_process_does_not_outlive_the_run():
    program = """
import os, time
print(os.getcwd(), flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
"""
    r = run(program, allow_subprocess=True)
    assert r.passed
    time.sleep(0.2)
    assert processes_in(cwd_of(r)) == []


# -- the filesystem -------------------------------------------------------------------------------


def test_the_working_directory_is_fresh_and_removed_even_after_chmod():
    program = "import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\nos.makedirs('a/b')\nopen('a/b/f', 'w').close()\nos.chmod('a/b', 0)\nos.chmod('a', 0o500)\nos.chmod('.', 0o500)\n"
    first, second = run(program), run(program)
    assert first.passed and second.passed, first.stderr
    dirs = {cwd_of(first), cwd_of(second)}
    assert len(dirs) == 2
    for d in dirs:
        assert (
            os.path.dirname(d) == os.path.realpath(tempfile.gettempdir()) or os.path.dirname(d) == tempfile.gettempdir()
        )
        assert not os.path.exists(d)
    assert first.stdout.splitlines()[1] == f"['{child.PROGRAM_NAME}']"


def test_files_are_written_into_the_working_directory_and_extra_path_is_importable(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "extmod.py").write_text("def triple(x):\n    return 3 * x\n")
    files = {
        "mymod.py": "def add(a, b):\n    return a + b\n",
        "pkg/__init__.py": "",
        "pkg/deep.py": "VALUE = 7\n",
        "data.bin": b"\x00\xff",
    }
    program = (
        "from mymod import add\nfrom pkg.deep import VALUE\nfrom extmod import triple\n"
        "assert add(1, 2) == 3 and VALUE == 7 and triple(2) == 6\n"
        "assert open('data.bin', 'rb').read() == b'\\x00\\xff'\n"
        "open('mymod.py', 'a').write('# the program may change its own files\\n')\n"
    )
    r = run_program(program, QUICK, files=files, extra_path=[str(lib)])
    assert r.passed, r.detail + r.stderr
    assert (lib / "extmod.py").read_text() == "def triple(x):\n    return 3 * x\n"


@pytest.mark.parametrize("name", ["../escape.py", "/etc/escape.py", "", child.PROGRAM_NAME, "a/../../b"])
def test_file_names_that_leave_the_directory_are_refused(name):
    with pytest.raises(ValueError):
        run_program("pass", QUICK, files={name: "x"})


def test_writing_outside_the_working_directory_fails(protected):
    target = protected / "outside.txt"
    shared = Path(tempfile.gettempdir()) / f"assistant-sandbox-escape-{os.getpid()}-{time.time_ns()}"
    before = snapshot(protected)
    program = f"""
import ctypes, os
for path in ({str(target)!r}, {str(shared)!r}, {str(protected / "keep.txt")!r}):
    try:
        with open(path, "w") as f:
            f.write("escaped")
        print("python wrote", path)
    except OSError as e:
        print("python refused", type(e).__name__)
    fd = ctypes.CDLL(None, use_errno=True).open(path.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    print("libc", "wrote" if fd >= 0 else "refused", path)
open("inside.txt", "w").write("fine")
print(open("inside.txt").read())
"""
    try:
        r = run(program)
        iso = r.isolation
        assert r.passed, r.stderr
        assert "python wrote" not in r.stdout  # the audit hook, everywhere
        assert r.stdout.rstrip().endswith("fine")
        if iso.readonly_fs:  # the kernel refuses even code that goes around the hook
            assert "libc wrote" not in r.stdout
            assert not shared.exists()
        if iso.readonly_fs or iso.uid != os.getuid():
            assert not target.exists() and snapshot(protected) == before
        else:
            pytest.skip("no mount namespace and the same uid: only the audit hook guards other files")
    finally:
        shared.unlink(missing_ok=True)


def test_a_nested_user_namespace_cannot_make_the_filesystem_writable(protected):
    if not isolation_report().readonly_fs:
        pytest.skip("no read-only mounts here")
    target = protected / "nested.txt"
    program = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS: root in there
    for path, data in ((b"/proc/self/setgroups", b"deny"), (b"/proc/self/uid_map", f"0 {{uid}} 1".encode()),
                       (b"/proc/self/gid_map", f"0 {{gid}} 1".encode())):
        fd = libc.open(path, os.O_WRONLY)
        libc.write(fd, data, len(data))
        libc.close(fd)
print("remount", libc.mount(None, b"/", None, 32 | 4096, None))  # MS_REMOUNT | MS_BIND, read-write
print("open", libc.open({str(target).encode()!r}, os.O_WRONLY | os.O_CREAT, 0o644))
"""
    r = run(program)
    assert r.passed, r.stderr
    assert "remount -1" in r.stdout and "open -1" in r.stdout
    assert not target.exists()


def test_deleting_files_only_touches_the_sandbox(protected):
    before = snapshot(protected)
    program = f"""
import ctypes, os, shutil
print(os.getcwd())
for name in os.listdir("."):
    os.remove(name)
for attempt in (lambda: os.remove({str(protected / "keep.txt")!r}), lambda: shutil.rmtree({str(protected)!r})):
    try:
        attempt()
        print("python deleted")
    except OSError as e:
        print("python refused", type(e).__name__)
libc = ctypes.CDLL(None, use_errno=True)
print("libc", libc.unlink({str(protected / "sub" / "also.txt")!r}.encode()))
shutil.rmtree(os.getcwd(), ignore_errors=True)
"""
    r = run(program)
    assert r.passed, r.stderr
    assert "python deleted" not in r.stdout
    if r.isolation.readonly_fs or r.isolation.uid != os.getuid():
        assert "libc 0" not in r.stdout
        assert snapshot(protected) == before
    assert not os.path.exists(cwd_of(r))


def test_the_callers_home_is_hidden_where_mounts_work():
    iso = isolation_report()
    home = os.path.realpath(os.path.expanduser("~"))
    if home not in iso.hidden:
        pytest.skip(f"the home directory is not hidden here: {iso.notes}")
    r = run(f"import os\nprint(sorted(os.listdir({home!r})))")
    assert r.passed, r.stderr
    seen = set(eval(r.stdout))
    needed = {
        Path(os.path.realpath(p)).relative_to(home).parts[0]
        for p in [*sys.path, sys.prefix, sys.base_prefix]
        if p and os.path.realpath(p).startswith(home + os.sep)
    }
    assert seen <= needed


def test_a_closed_directory_on_the_path_is_opened_only_as_far_as_needed(tmp_path):
    # A checkout in a 0700 directory holds the venv: the run's own uid must still import from it
    # and exec its interpreter, yet a closed directory inside it stays closed.
    iso = isolation_report()
    if not (iso.dropped_root and iso.hidden and not iso.read_search):
        pytest.skip(f"needs a root caller whose runs get their own uid and mounts: {iso.notes}")
    checkout = tmp_path / "checkout"
    (checkout / "venv" / "bin").mkdir(parents=True)
    (checkout / "secret").mkdir()
    (checkout / "secret" / "key").write_text("hidden")
    (checkout / "top.py").write_text("X = 6\n")
    (checkout / "venv" / "helper.py").write_text("Y = 7\n")
    (checkout / "venv" / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (checkout / "secret").chmod(0o700)
    checkout.chmod(0o700)
    interpreter = str(checkout / "venv" / "bin" / "python")
    program = f"""
import os, subprocess, top, helper
print(top.X * helper.Y)
print(subprocess.run([{interpreter!r}, "-c", "print(5)"], capture_output=True, text=True).stdout.strip())
try:
    os.listdir({str(checkout / "secret")!r})
    print("secret listed")
except PermissionError:
    print("secret closed")
"""
    r = run_program(
        program,
        Limits(timeout_s=10, allow_subprocess=True),
        extra_path=[str(checkout), str(checkout / "venv")],
    )
    assert r.passed, r.stderr
    assert r.stdout.split() == ["42", "5", "secret", "closed"]


# -- network, environment, processes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_no_connection_reaches_a_listening_server(mode):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        program = f"""
import ctypes, socket, struct
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("python connected")
except OSError as e:
    print("python refused", type(e).__name__)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
print("libc", libc.connect(fd, address, 16), ctypes.get_errno())
"""
        r = run_program(program, Limits(timeout_s=10), mode=mode)
        assert r.passed, r.stderr
        assert "python refused PermissionError" in r.stdout
        # The kernel refuses too: no route in an empty network namespace, or no socket at all (seccomp).
        if r.isolation.network or r.isolation.seccomp:
            assert "libc -1" in r.stdout
            server.settimeout(0.3)
            with pytest.raises(socket.timeout):
                server.accept()
        else:
            pytest.skip("no network namespace and no seccomp here: only the audit hook guards the network")


def test_the_environment_is_scrubbed(monkeypatch):
    secret = f"hunter2-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("ASSISTANT_SANDBOX_TEST_SECRET", secret)
    program = f"""
import os
print(os.getcwd())
print(sorted(os.environ))
assert os.environ["HOME"] == os.getcwd() and os.environ["PYTHONHASHSEED"] == "0"
assert hash("abc") == hash("abc")
for pid in ({os.getpid()}, 1):
    try:
        print(open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as e:
        print("refused", type(e).__name__)
"""
    r = run(program)
    assert r.passed, r.stderr
    assert secret not in r.stdout + r.stderr
    assert eval(r.stdout.splitlines()[1]) == sorted(
        ["PATH", "LANG", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"]
    )


def test_the_hash_seed_is_fixed():
    a, b = run("print(hash('sandbox'))"), run("print(hash('sandbox'))")
    assert a.passed and a.stdout == b.stdout


def test_the_program_does_not_run_as_root():
    iso = isolation_report()
    r = run("import os\nprint(os.getuid(), os.geteuid())")
    assert r.passed
    if os.getuid() == 0 and iso.dropped_root:
        assert r.stdout.split() != ["0", "0"]
    status = run("print(open('/proc/self/status').read())").stdout
    if "CapEff" in status:
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status


def test_isolation_report_is_cached_and_consistent():
    first = isolation_report()
    assert isolation_report() is first and isolation_report(sys.executable) is first
    assert first.mode in ("root-namespaces", "user-namespaces", "none")
    assert first.summary().startswith(first.mode)
    if first.mode != "none":
        assert first.network and first.pid
    r = run("pass")
    assert r.isolation is not None and replace(r.isolation, uid=first.uid) == first


def test_without_namespaces_the_verdicts_are_the_same():
    """The fallback every machine can take: rlimits, audit hook, process-group kill."""

    def plain(src, **kw):
        return run_program(src, Limits(**{"timeout_s": 10, **kw}), mode="none")

    ok = plain("print('hi')")
    assert ok.passed and ok.stdout == "hi\n" and ok.isolation.mode == "none" and not ok.isolation.network
    assert plain("assert 1 == 2").detail.startswith("AssertionError")
    assert plain("import os\nos._exit(0)").detail.startswith("exited before the end")
    assert plain("import ctypes\nctypes.string_at(0)").signal == "SIGSEGV"
    assert plain("import socket\nsocket.create_connection(('127.0.0.1', 9))").detail.startswith("PermissionError")
    slow = plain("import time\nprint(__import__('os').getcwd(), flush=True)\ntime.sleep(60)", timeout_s=2)
    assert slow.outcome is Outcome.TIMEOUT and slow.duration_s < 4
    assert not os.path.exists(cwd_of(slow))


# -- the pool -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_many_keeps_order_and_runs_in_parallel():
    programs = [f"import time\nstart = time.time()\ntime.sleep(0.5)\nprint({i}, start, time.time())" for i in range(8)]
    results = run_many(programs, QUICK, workers=4)
    assert all(r.passed for r in results)
    rows = [r.stdout.split() for r in results]
    assert [int(row[0]) for row in rows] == list(range(8))
    spans = sorted((float(row[1]), float(row[2])) for row in rows)
    assert max(sum(a < end and start < b for a, b in spans) for start, end in spans) >= 2  # overlapping runs


def test_run_many_takes_programs_with_files_and_mixed_outcomes():
    jobs = [
        "assert True",
        Program("from helper import X\nassert X == 1", files={"helper.py": "X = 1\n"}),
        "assert False",
        "while True: pass",
    ]
    results = run_many(jobs, Limits(timeout_s=3), workers=2)  # room for start-up on a loaded machine
    assert [r.outcome for r in results] == [Outcome.PASSED, Outcome.PASSED, Outcome.FAILED, Outcome.TIMEOUT]
    assert run_many([], QUICK) == []


# -- pure parts -----------------------------------------------------------------------------------


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(cpu_s=-1)
    assert Limits(timeout_s=2.5).cpu_limit_s == 4 and Limits(cpu_s=0.2).cpu_limit_s == 1


def test_classify_reads_the_monitors_report():
    lim = Limits(timeout_s=5, cpu_s=2)
    done = {"stage": "done"}
    assert classify(None, True, lim)[0] is Outcome.TIMEOUT
    assert classify({"exit_code": 0, "signal": None, "record": done}, False, lim)[:3] == (Outcome.PASSED, "passed", 0)
    assert classify({"exit_code": 0, "signal": None, "record": None}, False, lim)[0] is Outcome.FAILED
    xcpu = classify({"exit_code": None, "signal": signal.SIGXCPU, "record": None}, False, lim)
    assert xcpu[0] is Outcome.RESOURCE_LIMIT and xcpu[3] == "SIGXCPU"
    hard = classify({"exit_code": None, "signal": signal.SIGKILL, "cpu_s": 2.9, "record": None}, False, lim)
    assert hard[0] is Outcome.RESOURCE_LIMIT
    killed = classify({"exit_code": None, "signal": signal.SIGKILL, "cpu_s": 0.1, "record": None}, False, lim)
    assert killed[:2] == (Outcome.CRASHED, "killed by SIGKILL")
    err = {
        "stage": "error",
        "type": "ValueError",
        "message": "bad\nthing",
        "line": 3,
        "source": "f()",
        "resource": None,
    }
    assert (
        classify({"exit_code": 1, "signal": None, "record": err}, False, lim)[1]
        == "ValueError: bad thing (line 3: f())"
    )
    assert classify({"exit_code": None, "signal": None}, False, lim)[0] is Outcome.FAILED
    assert classify(None, False, lim)[0] is Outcome.CRASHED


def test_capped_stream_keeps_head_and_tail():
    c = sandbox._Capped(10)
    for piece in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        c.feed(piece)
    text = c.text()
    assert text.startswith("abcde\n") and text.endswith("\nvwxyz") and "16 of 26 bytes truncated" in text
    small = sandbox._Capped(10)
    small.feed(b"0123456789")
    assert small.text() == "0123456789"


def test_last_record_needs_the_nonce_and_takes_the_stage_outside_the_json():
    nonce = b"n" * 32
    data = b'garbage\n{"stage": "done"}\n' + nonce + b' exit {"code": 0}\n' + b"more garbage"
    assert child.last_record(data, nonce) == {"stage": "exit", "code": 0}
    assert child.last_record(b'done {"stage": "done"}\n', nonce) is None
    forged = nonce + b' error {"stage": "done", "type": "AssertionError"}\n'  # a patched json cannot change it
    assert child.last_record(forged, nonce) == {"stage": "error", "type": "AssertionError"}
    garbled = nonce + b" error {}\n" + nonce + b' error {"stage": "done"\n'
    assert child.last_record(garbled, nonce) == {"stage": "error"}
