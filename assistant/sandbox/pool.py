"""Many sandboxed runs at once: one thread per worker, each waiting on its own process tree.

Each worker is a slot with its own uid (for a root caller), so one run's thread bomb uses up only
its own RLIMIT_NPROC. Ctrl-C (or any exception) stops the running programs at once and starts
no more.
"""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import ExecResult
from assistant.sandbox.runner import isolation_report, random_uid, run_job


@dataclass(frozen=True)
class Program:
    """One job for ``run_many`` when a bare source string is not enough."""

    source: str
    files: Mapping[str, str | bytes] | None = None
    extra_path: tuple[str, ...] = ()


def run_many(
    programs: Sequence[str | Program],
    limits: Limits = Limits(),
    *,
    workers: int | None = None,
    python: str = sys.executable,
    mode: str | None = None,
) -> list[ExecResult]:
    """Run many programs in parallel; results come back in input order."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [p if isinstance(p, Program) else Program(p) for p in programs]
    if not jobs:
        return []
    isolation_report(python, mode)  # probe once here rather than in every thread at the same time
    n = max(1, min(workers or default_workers(), len(jobs)))
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    first = random_uid(n)
    for i in range(n):
        slots.put(first + i)
    cancel_r, cancel_w = os.pipe()  # closing the write end wakes every worker's wait at once

    def one(job: Program) -> ExecResult:
        uid = slots.get()
        try:
            return run_job(
                job.source,
                limits,
                files=job.files,
                python=python,
                extra_path=tuple(job.extra_path),
                mode=mode,
                uid=uid,
                cancel_fd=cancel_r,
            )
        finally:
            slots.put(uid)

    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") if n > 1 else None
    try:
        if pool is None:
            return [one(j) for j in jobs]
        futures = [pool.submit(one, j) for j in jobs]
        return [f.result() for f in futures]
    except BaseException:
        os.close(cancel_w)
        cancel_w = -1
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        for fd in (cancel_r, cancel_w):
            if fd >= 0:
                os.close(fd)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
