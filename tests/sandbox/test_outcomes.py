"""Outcomes say what happened (issue 18, item 6), found with hostile programs in the real sandbox."""

from __future__ import annotations

import sys

import pytest

from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import Outcome
from assistant.sandbox.runner import run_program
from tests.sandbox.conftest import MODES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux rlimits")

THREAD_BOMB = """
import threading, time
threads = []
while True:
    t = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    t.start()
    threads.append(t)
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_thread_bomb_out_of_memory_is_a_memory_limit(mode):
    # 8 MiB stacks in 256 MiB of address space: memory runs out long before 500 threads.
    r = run_program(THREAD_BOMB, Limits(timeout_s=20, memory_mb=256, processes=500), mode=mode)
    assert r.outcome is Outcome.RESOURCE_LIMIT, (r.outcome, r.detail)
    assert "memory limit 256 MiB" in r.detail and "can't start new thread" in r.detail, r.detail


@pytest.mark.parametrize("mode", MODES)
def test_a_thread_bomb_out_of_processes_is_a_process_limit(mode):
    program = "import threading\nthreading.stack_size(256 * 1024)\n" + THREAD_BOMB.split("\n", 1)[1]
    r = run_program(program, Limits(timeout_s=20, memory_mb=1024, processes=8), mode=mode)
    assert r.outcome is Outcome.RESOURCE_LIMIT and "process limit 8" in r.detail, r.detail


@pytest.mark.parametrize("mode", MODES)
def test_running_out_of_descriptors_is_an_open_files_limit(mode):
    program = "held = []\nwhile True:\n    held.append(open(__file__))\n"  # a global: they stay open
    r = run_program(program, Limits(timeout_s=10, open_files=32), mode=mode)
    assert r.outcome is Outcome.RESOURCE_LIMIT, (r.outcome, r.detail)
    assert "open files limit 32" in r.detail and "Too many open files" in r.detail, r.detail
