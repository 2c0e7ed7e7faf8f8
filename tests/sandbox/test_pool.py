"""Concurrent runs do not interfere, and Ctrl-C stops a pool at once (issue 18, items 4 and 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many
from tests.sandbox.conftest import MODES, processes_in, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BOMB = """
import threading, time
threading.stack_size(256 * 1024)
threads = []
try:
    while True:
        t = threading.Thread(target=time.sleep, args=(5,), daemon=True)
        t.start()
        threads.append(t)
except RuntimeError:
    pass
print(len(threads), flush=True)
time.sleep(4)
"""

HONEST = """
import threading, time
time.sleep(1.5)  # the bomb next door has used up its limit by now
threads = [threading.Thread(target=time.sleep, args=(0.1,)) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a uid per run needs a root caller (user namespaces do it otherwise)")
@pytest.mark.parametrize("mode", MODES)
def test_a_thread_bomb_does_not_starve_its_neighbour(mode):
    bomb, honest = run_many([BOMB, HONEST], Limits(timeout_s=20, processes=12), workers=2, mode=mode)
    assert bomb.passed and 0 < int(bomb.stdout) < 12
    assert honest.passed, (honest.outcome, honest.detail)
    assert bomb.isolation.uid != honest.isolation.uid


WRITER = """
import os, time
open("secret.txt", "w").write("s3cr3t" + "-of-the-writer")
print(os.getcwd(), flush=True)
time.sleep(4)
"""

READER = """
import glob, os, time
time.sleep(1.5)
parent = os.path.dirname(os.getcwd())
found = []
for path in glob.glob(os.path.join(parent, "*", "secret.txt")) + glob.glob(os.path.join(parent, "*")):
    try:
        found.append(open(path).read() if path.endswith(".txt") else os.listdir(path))
    except OSError as e:
        found.append(type(e).__name__)
print(found)
"""


@pytest.mark.parametrize("mode", MODES)
def test_one_run_cannot_read_another_runs_directory(mode):
    writer, reader = run_many([WRITER, READER], Limits(timeout_s=20), workers=2, mode=mode)
    assert writer.passed and reader.passed, (writer.stderr, reader.stderr)
    if reader.isolation.read_search:
        pytest.skip("the run kept CAP_DAC_READ_SEARCH to reach its interpreter: it can read anything")
    if not reader.isolation.readonly_fs and reader.isolation.uid == writer.isolation.uid:
        pytest.skip("no mount namespace and one uid for every run: nothing keeps them apart")
    assert "s3cr3t" not in reader.stdout and "secret.txt" not in reader.stdout, reader.stdout


POOL_CALLER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many
program = "import os, time\\nprint(os.getcwd(), flush=True)\\ntime.sleep(120)\\n"
try:
    run_many([program] * 6, Limits(timeout_s=60), workers=3, mode={mode!r})
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_stops_a_pool_at_once(tmp_root, mode):
    env = {**os.environ, "TMPDIR": str(tmp_root), "PYTHONPATH": REPO}
    caller = subprocess.Popen(
        [sys.executable, "-c", POOL_CALLER.format(mode=mode)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: sum(bool(processes_in(tmp_root / d)) for d in os.listdir(tmp_root)) >= 3, 20)
        time.sleep(0.3)
        interrupted = time.monotonic()
        caller.send_signal(signal.SIGINT)
        out, err = caller.communicate(timeout=15)
        assert time.monotonic() - interrupted < 6, "the pool waited for its programs"
        assert caller.returncode == 130 and b"interrupted" in out, err.decode()[-2000:]
        assert wait_for(lambda: not processes_in(tmp_root) and not os.listdir(tmp_root), 5)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
