"""The run's own processes against a killed caller and a tampering program (issue 18, items 1 and 3).

Every test runs hostile programs through the real sandbox: real callers in real subprocesses,
killed with real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import Outcome
from assistant.sandbox.runner import run_program
from tests.sandbox.conftest import MODES, processes_in, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 30  # the run's wall clock: far longer than the test waits for the clean-up

CALLER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a caller started under nohup inherits SIG_IGN
from assistant.sandbox.limits import Limits
from assistant.sandbox.runner import isolation_report, run_program
isolation_report(mode={mode!r})  # the probe's own run comes and goes before the test looks
print("probed", flush=True)
program = "import os, time\\nprint(os.getcwd(), flush=True)\\ntime.sleep(120)\\n"
print(run_program(program, Limits(timeout_s={timeout}), mode={mode!r}))
"""


def start_caller(source: str, tmp_root) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_root), "PYTHONPATH": REPO}
    return subprocess.Popen(
        [sys.executable, "-c", source], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_killed_caller_leaves_no_program_and_no_directory(tmp_root, sig, mode):
    caller = start_caller(CALLER.format(timeout=TIMEOUT_S, mode=mode), tmp_root)
    try:
        assert caller.stdout.readline() == b"probed\n", caller.stderr.read().decode()[-2000:]
        assert wait_for(lambda: any(processes_in(tmp_root / d) for d in os.listdir(tmp_root)), 20)
        assert all(name.startswith("assistant-sandbox-") for name in os.listdir(tmp_root))
        killed = time.monotonic()
        caller.send_signal(sig)
        caller.wait(timeout=10)
        # Well before the run's own wall clock: the watchdog sees its lifeline close at once.
        assert wait_for(lambda: not processes_in(tmp_root) and not os.listdir(tmp_root), 5), (
            processes_in(tmp_root),
            os.listdir(tmp_root),
        )
        assert time.monotonic() - killed < TIMEOUT_S / 2
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()


# -- verdicts the program cannot forge ------------------------------------------------------------

FAILING = """
def add(a, b):
    return a - b

def check(candidate):
    assert candidate(1, 2) == 3

check(add)
"""

FORGERS = {
    # Every record the harness makes says "done"; an exit hook turns the exit status into 0.
    "json": "import json, os, atexit\n_real = json.dumps\njson.dumps = lambda *a, **k: _real({'stage': 'done'})\n"
    "atexit.register(lambda: os._exit(0))\n",
    # Rewrites whatever goes through os.write on the way out.
    "os.write": "import os, atexit\n_w = os.write\n"
    "os.write = lambda fd, data: _w(fd, bytes(data).replace(b'error', b'done').replace(b'exit', b'done'))\n"
    "atexit.register(lambda: os._exit(0))\n",
    # A failure turned into sys.exit(0), with the exit path patched as well.
    "excepthook": "import sys, os, atexit\nsys.excepthook = lambda *a: os._exit(0)\natexit.register(lambda: os._exit(0))\n"
    "import builtins\n_real_exit = sys.exit\nsys.exit = lambda *a: os._exit(0)\n",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("forger", sorted(FORGERS))
def test_a_failing_test_cannot_be_reported_as_passed(forger, mode):
    r = run_program(FORGERS[forger] + FAILING, Limits(timeout_s=10), mode=mode)
    assert r.outcome is Outcome.FAILED and not r.passed, (r.outcome, r.detail, r.stderr)
    if forger != "json":  # json is how the details travel: patched, they are lost, never the verdict
        assert r.detail.startswith("AssertionError"), r.detail


def test_a_program_that_patches_os_still_passes_when_it_passes():
    r = run_program(FORGERS["os.write"] + "assert 1 + 1 == 2\n", Limits(timeout_s=10))
    assert r.passed, (r.detail, r.stderr)
