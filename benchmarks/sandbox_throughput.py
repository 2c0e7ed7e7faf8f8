"""Sandbox throughput and per-execution overhead, against a bare `python` subprocess.

    python benchmarks/sandbox_throughput.py [--runs 60] [--out FILE]

Rows: a bare `python -c` of the same trivial test (the floor any process-per-run design
pays), one sandboxed run at a time (latency = per-execution overhead), and the pool with
1 and all workers (executions per second). Ratios are within this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from assistant.atomic import atomic_write_text
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many
from assistant.sandbox.runner import isolation_report, run_program

TRIVIAL = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"


def bare(runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", TRIVIAL], check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sandboxed(runs: int) -> float:
    times = []
    for _ in range(runs):
        r = run_program(TRIVIAL, Limits(timeout_s=10))
        assert r.passed, r.detail
        times.append(r.duration_s)
    return statistics.median(times)


def pool(runs: int, workers: int) -> float:
    t0 = time.perf_counter()
    results = run_many([TRIVIAL] * runs, Limits(timeout_s=10), workers=workers)
    elapsed = time.perf_counter() - t0
    assert all(r.passed for r in results)
    return runs / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sandbox_throughput.json"))
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    isolation = isolation_report()
    run_program(TRIVIAL)  # warm-up
    bare_s = bare(a.runs // 2)
    one_s = sandboxed(a.runs // 2)
    rates = {w: pool(a.runs, w) for w in sorted({1, cores})}
    result = {
        "command": "python benchmarks/sandbox_throughput.py " + " ".join(sys.argv[1:]),
        "cores": cores,
        "isolation": isolation.summary(),
        "bare_python_s": bare_s,
        "sandboxed_latency_s": one_s,
        "overhead_over_bare_s": one_s - bare_s,
        "executions_per_s": {str(w): r for w, r in rates.items()},
    }
    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sandbox, trivial passing test, {cores} cores ({isolation.mode})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("bare `python -c` (median)", f"{bare_s * 1000:.0f} ms")
    t.add_row("one sandboxed run (median latency)", f"{one_s * 1000:.0f} ms")
    t.add_row("sandbox overhead over bare python", f"{(one_s - bare_s) * 1000:.0f} ms")
    for w, r in rates.items():
        t.add_row(f"pool, {w} worker(s)", f"{r:.1f} exec/s")
    Console().print(t)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
