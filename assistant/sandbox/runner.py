"""Run one untrusted, model-generated program in a separate, limited, throw-away process tree.

The caller makes the working directory, starts ``child.py`` (watchdog → runner → monitor →
program, see there) and reads stdout, stderr and the monitor's status as they come, with a cap.
It holds the wall clock; the watchdog holds it too, and holds it alone when the caller dies.
What is and is not isolated: docs/sandbox.md.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from assistant.sandbox.child import PROGRAM_NAME, remove_tree
from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import ExecResult, Isolation, classify, one_line

MODE_ENV = "ASSISTANT_SANDBOX_MODE"  # "auto" (the default) or "none": force the weaker mode
MODES = ("auto", "none")
CHILD = str(Path(__file__).resolve().with_name("child.py"))
_GRACE_S = 5.0  # after letting go, how long the watchdog may take to sweep and clean up
# A root caller runs each program as its own uid from this range (no account needs to exist).
UID_BASE, UID_SPAN = 0x6F000000, 1 << 24


class Cancelled(Exception):
    """The run was stopped from outside (a pool's Ctrl-C) before it finished."""


def run_program(
    source: str,
    limits: Limits = Limits(),
    *,
    files: Mapping[str, str | bytes] | None = None,
    python: str = sys.executable,
    extra_path: Sequence[str] | None = None,
    mode: str | None = None,
) -> ExecResult:
    """Run ``source`` as ``__main__`` in a fresh working directory holding ``files``.

    PASSED needs the program to reach its last line and the process to exit 0: a
    ``sys.exit(0)`` or ``os._exit(0)`` before the tests is FAILED. ``extra_path`` goes on
    sys.path right after the working directory. ``mode="none"`` (or $ASSISTANT_SANDBOX_MODE)
    forces the weaker mode without namespaces.
    """
    return run_job(source, limits, files=files, python=python, extra_path=tuple(extra_path or ()), mode=mode)


def run_job(
    source: str,
    limits: Limits,
    *,
    files: Mapping[str, str | bytes] | None = None,
    python: str = sys.executable,
    extra_path: tuple[str, ...] = (),
    mode: str | None = None,
    uid: int | None = None,
    cancel_fd: int | None = None,
) -> ExecResult:
    """``run_program`` with the pool's extras: the run's uid and a descriptor that cancels it when readable."""
    plan = isolation_report(python, mode).mode
    if cancel_fd is not None and _readable(cancel_fd):
        raise Cancelled("cancelled before it started")
    return _execute(source, limits, files, python, extra_path, plan, uid=uid, cancel_fd=cancel_fd)


def isolation_report(python: str | None = None, mode: str | None = None) -> Isolation:
    """The protections runs get on this machine, found once per process by a trial run."""
    return _probe(python or sys.executable, resolve_mode(mode))


def resolve_mode(mode: str | None) -> str:
    """The mode asked for: the argument, else $ASSISTANT_SANDBOX_MODE, else "auto"."""
    chosen = mode or os.environ.get(MODE_ENV) or "auto"
    if chosen not in MODES:
        raise _error(f"unknown sandbox mode {chosen!r}", f"use one of {', '.join(MODES)} (argument or ${MODE_ENV})")
    return chosen


def random_uid(block: int = 1) -> int:
    """The first of ``block`` consecutive uids for runs (a root caller's; others keep their own)."""
    return UID_BASE + secrets.randbelow(UID_SPAN - block)


# -- caller side ---------------------------------------------------------------------------------


@functools.cache
def _probe(python: str, mode: str) -> Isolation:
    """Try the strongest isolation (unless the weaker one is asked for); if the runner cannot start with it, none."""
    failure: Exception | None = None
    for plan in ("auto", "none") if mode == "auto" else ("none",):
        try:
            r = _execute("", Limits(timeout_s=30), None, python, (), plan)
        except Exception as e:
            failure = e
            continue
        if r.passed and r.isolation is not None:
            if failure is None:
                return r.isolation
            why = f"the stronger isolation failed: {one_line(str(failure))}"
            return replace(r.isolation, notes=(*r.isolation.notes, why))
        failure = RuntimeError(f"{r.outcome.value}: {r.detail}; stderr: {r.stderr[-500:]}")
    hint = getattr(failure, "hint", None) or "check that it is Python >= 3.10 on a POSIX system"
    message = getattr(failure, "message", None) or str(failure)
    raise _error(f"the sandbox does not work with {python}: {message}", hint)


def _error(message: str, hint: str | None = None) -> Exception:
    from assistant.errors import AssistantError

    return AssistantError(message, hint=hint)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment of the program: nothing of the caller's (tokens, proxies) leaks.

    HOME and TMPDIR: the watchdog points them into the working directory once it has made it.
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _encode_files(files: Mapping[str, str | bytes] | None) -> dict[str, list]:
    """Check the names here, where a ValueError reaches the caller; the watchdog writes the files."""
    import base64

    out: dict[str, list] = {}
    for name, content in (files or {}).items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts or str(rel) == PROGRAM_NAME:
            raise ValueError(f"sandbox file name must be relative, without '..', and not {PROGRAM_NAME}: {name!r}")
        if isinstance(content, bytes):
            out[str(rel)] = [False, base64.b64encode(content).decode("ascii")]
        else:
            out[str(rel)] = [True, content]
    return out


def _execute(
    source: str,
    limits: Limits,
    files: Mapping[str, str | bytes] | None,
    python: str,
    extra_path: tuple[str, ...],
    plan: str,
    *,
    uid: int | None = None,
    cancel_fd: int | None = None,
) -> ExecResult:
    if os.name != "posix":
        raise _error("the sandbox needs Linux or another POSIX system")
    tmp_root = tempfile.gettempdir()
    config = {
        "nonce": secrets.token_hex(16),
        "parent": os.getpid(),
        "tmp_root": tmp_root,
        "files": _encode_files(files),
        "source": source,
        "extra_path": [os.path.abspath(p) for p in extra_path],
        "plan": plan,
        "uid": random_uid() if uid is None else uid,
        "limits": asdict(limits) | {"cpu_limit_s": limits.cpu_limit_s},
    }
    collected = _spawn_and_collect(python, tmp_root, config, limits, cancel_fd)
    if collected.workdir:
        remove_tree(collected.workdir)  # the watchdog has done it, unless it was killed itself
    if collected.failure:
        raise _error(
            f"the sandbox could not make its working directory in {tmp_root}: {collected.failure}",
            "set TMPDIR to a writable directory",
        )
    if collected.cancelled:
        raise Cancelled("the run was cancelled")
    return _result(collected, limits)


@dataclass(frozen=True)
class _Collected:
    stdout: str
    stderr: str
    setup: dict | None
    final: dict | None
    end: dict | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    workdir: str | None = None
    failure: str | None = None


class _Lifeline:
    """The write end of the watchdog's lifeline: closing it (or dying) tells the watchdog to end the run."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def let_go(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _spawn_and_collect(python: str, tmp_root: str, config: dict, limits: Limits, cancel_fd: int | None) -> _Collected:
    status_r, status_w = os.pipe()
    life_r, life_w = os.pipe()
    config["status_fd"], config["life_fd"] = status_w, life_r
    lifeline = _Lifeline(life_w)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [python, "-s", "-B", "-u", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_root,
            env=_child_env(tmp_root),
            pass_fds=(status_w, life_r),
            start_new_session=True,
        )
    except OSError as e:
        os.close(status_r)
        lifeline.let_go()
        raise _error(f"cannot start the sandbox interpreter {python}: {e}", "pass an existing python") from e
    finally:
        os.close(status_w)
        os.close(life_r)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        try:
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        return _collect(proc, status_r, lifeline, cancel_fd, started, limits)
    except BaseException:  # Ctrl-C included: let the watchdog end the run now, then make sure
        lifeline.let_go()
        try:
            proc.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
        raise
    finally:
        lifeline.let_go()
        os.close(status_r)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


class _Capped:
    """Keeps the first and the last halves of a stream; counts what falls in between."""

    def __init__(self, cap: int):
        self.head_cap, self.tail_cap = cap - cap // 2, cap // 2
        self.head, self.tail = bytearray(), bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def text(self) -> str:
        shown = len(self.head) + len(self.tail)
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if shown == self.total:
            return head + tail
        return f"{head}\n[... sandbox: {self.total - shown} of {self.total} bytes truncated ...]\n{tail}"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the watchdog's process group: the last resort, when it does not end the run itself."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(
    proc: subprocess.Popen, status_fd: int, lifeline: _Lifeline, cancel_fd: int | None, started: float, limits: Limits
) -> _Collected:
    """Read stdout, stderr and the status until the watchdog has ended the run, or the clock runs out."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err, status = _Capped(limits.output_bytes), _Capped(limits.output_bytes), bytearray()
    sinks: dict[int, Callable[[bytes], Any]] = {
        proc.stdout.fileno(): out.feed,
        proc.stderr.fileno(): err.feed,
        status_fd: status.extend,
    }
    deadline = started + limits.timeout_s
    timed_out = cancelled = False
    ended: float | None = None
    give_up: float | None = None
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            sel.register(fd, selectors.EVENT_READ)
        if cancel_fd is not None:
            sel.register(cancel_fd, selectors.EVENT_READ)
        open_fds = set(sinks)
        while open_fds:
            now = time.monotonic()
            if give_up is None and now >= deadline:
                timed_out, ended, give_up = True, now, now + _GRACE_S
                lifeline.let_go()  # the watchdog kills every process of the run and removes its directory
            if give_up is not None and now >= give_up:
                break
            for key, _ in sel.select(timeout=max(0.0, (give_up or deadline) - now)):
                if key.fd == cancel_fd:
                    sel.unregister(key.fd)
                    if give_up is None:
                        cancelled, ended, give_up = True, now, now + _GRACE_S
                        lifeline.let_go()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    if key.fd != status_fd:
                        sinks[key.fd](chunk)
                    elif len(status) < 1 << 20:
                        status.extend(chunk)
                        if ended is None and (status.startswith(b"exit ") or b"\nexit " in status):
                            ended = time.monotonic()  # the program is over; the rest is clean-up
                    continue
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
    if open_fds:  # the watchdog did not finish in time
        _kill_group(proc)
    proc.wait()
    setup = final = end = workdir = failure = None
    for line in bytes(status).splitlines():
        kind, _, payload = line.partition(b" ")
        try:
            if kind == b"setup":
                setup = json.loads(payload)
            elif kind == b"exit":
                final = json.loads(payload)
            elif kind == b"end":
                end = json.loads(payload)
            elif kind == b"workdir":
                workdir = json.loads(payload)
            elif kind == b"fail":
                failure = json.loads(payload).get("message")
        except (ValueError, AttributeError):
            continue
    if final is None and (end or {}).get("reason") == "timeout":
        timed_out = True  # the watchdog's clock ran out first
    duration = (ended or time.monotonic()) - started
    return _Collected(out.text(), err.text(), setup, final, end, timed_out, cancelled, duration, workdir, failure)


def _result(c: _Collected, limits: Limits) -> ExecResult:
    isolation = Isolation.from_facts(c.setup) if c.setup else None
    if not c.timed_out:
        record = (c.final or {}).get("record") or {}
        problem = None
        if c.setup is None:
            problem = "the sandbox runner failed before starting the program"
        elif record.get("stage") == "setup_error":
            problem = f"the sandbox could not prepare the program: {record.get('message')}"
        if problem:
            raise _error(f"{problem}; stderr: {c.stderr.strip()[-1000:]}")
    outcome, detail, code, sig = classify(c.final, c.timed_out, limits)
    return ExecResult(outcome, detail, code, sig, round(c.duration_s, 3), c.stdout, c.stderr, isolation)
