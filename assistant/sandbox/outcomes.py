"""Typed outcomes of a sandboxed run: what happened (Outcome, ExecResult), what protected it (Isolation)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from assistant.sandbox.limits import Limits


class Outcome(str, Enum):
    PASSED = "passed"  # ran to the end and exited 0
    FAILED = "failed"  # an exception (detail: "Type: message"), or it left before the end
    TIMEOUT = "timeout"  # wall clock exceeded; every process of the run was killed
    CRASHED = "crashed"  # killed by a signal (detail names it)
    RESOURCE_LIMIT = "resource_limit"  # memory, cpu time, file size, open files or processes


@dataclass(frozen=True)
class Isolation:
    """Which protections a run actually had; ``notes`` says why one is missing."""

    mode: str  # "root-namespaces", "user-namespaces" or "none"
    network: bool  # own network namespace: no interfaces but a loopback that is down
    pid: bool  # own pid namespace: every process dies with the run
    readonly_fs: bool  # every mount read-only except the working directory
    private_proc: bool  # /proc shows only the sandbox's processes
    uid: int  # the program's uid, as the host sees it (a root caller gives every run its own)
    dropped_root: bool  # the caller is root and the program runs as an unprivileged uid
    audit_hook: bool = True  # in-process guard: sockets, spawning, writes outside the working dir
    hidden: tuple[str, ...] = ()  # directories covered by an empty tmpfs (the caller's home, other runs)
    notes: tuple[str, ...] = ()
    seccomp: bool = False  # no UNIX sockets (no sockets at all without a network namespace), no ptrace, io_uring
    read_search: bool = False  # the program kept CAP_DAC_READ_SEARCH to reach an interpreter it could not enter

    def summary(self) -> str:
        if self.network:
            net = "no network"
        elif self.seccomp:
            net = "no network (seccomp: no sockets)"
        else:
            net = "NETWORK REACHABLE"
        parts = [
            self.mode,
            net,
            "pid namespace" if self.pid else "no pid namespace",
            "read-only filesystem" if self.readonly_fs else "WRITABLE filesystem",
            "private /proc" if self.private_proc else "host /proc",
            f"uid {self.uid}"
            + (" (root dropped)" if self.dropped_root else "")
            + (", reads anything (CAP_DAC_READ_SEARCH)" if self.read_search else ""),
            "seccomp filter" if self.seccomp else "no seccomp filter",
            "audit hook" if self.audit_hook else "no audit hook",
        ]
        return ", ".join(parts)

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Isolation:
        return cls(
            mode=facts["mode"],
            network=facts["network"],
            pid=facts["pid"],
            readonly_fs=facts["readonly_fs"],
            private_proc=facts["private_proc"],
            uid=facts["uid"],
            dropped_root=facts["dropped_root"],
            hidden=tuple(facts.get("hidden", ())),
            notes=tuple(facts["notes"]),
            seccomp=bool(facts.get("seccomp")),
            read_search=bool(facts.get("read_search")),
        )


@dataclass(frozen=True)
class ExecResult:
    outcome: Outcome
    detail: str  # one line
    exit_code: int | None  # None when killed by a signal or timed out
    signal: str | None  # e.g. "SIGSEGV"
    duration_s: float
    stdout: str  # capped: see Limits.output_bytes
    stderr: str
    isolation: Isolation | None = None  # None only when the runner never got that far

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED


def classify(
    final: Mapping[str, Any] | None, timed_out: bool, limits: Limits
) -> tuple[Outcome, str, int | None, str | None]:
    """Outcome, one-line detail, exit code and signal name from the monitor's final report.

    ``final`` holds the program's exit code or signal, its cpu time, and the last record the
    harness wrote after the program (stage "done", "error" or "exit"), already checked
    against the run's nonce; a missing record means the program never got to the end.
    """
    if timed_out:
        return Outcome.TIMEOUT, f"timed out after {limits.timeout_s:g} s (wall clock)", None, None
    if final is None:
        return Outcome.CRASHED, "the sandbox monitor died before reporting", None, None
    code, sig, record = final.get("exit_code"), final.get("signal"), final.get("record") or {}
    if sig is not None:
        name = signal_name(sig)
        if sig == getattr(signal, "SIGXCPU", None) or (
            sig == signal.SIGKILL and final.get("cpu_s", 0) >= limits.cpu_limit_s
        ):
            return Outcome.RESOURCE_LIMIT, f"cpu time limit of {limits.cpu_limit_s} s exceeded ({name})", None, name
        if sig == getattr(signal, "SIGXFSZ", None):
            return Outcome.RESOURCE_LIMIT, f"file size limit of {limits.file_size_mb} MiB exceeded ({name})", None, name
        return Outcome.CRASHED, f"killed by {name}", None, name
    stage = record.get("stage")
    if stage == "done":
        if code == 0:
            return Outcome.PASSED, "passed", 0, None
        return Outcome.FAILED, f"exit status {code} after the program ended (atexit handler or thread)", code, None
    if stage == "error":
        text = str(record.get("type") or "Exception") + (f": {record['message']}" if record.get("message") else "")
        if record.get("line"):
            text += f" (line {record['line']}: {record.get('source', '')})"
        text = one_line(text)
        kind = record.get("resource")
        if kind:
            limit = {
                "memory": f"memory limit {limits.memory_mb} MiB",
                "file_size": f"file size limit {limits.file_size_mb} MiB",
                "open_files": f"open files limit {limits.open_files}",
                "processes": f"process limit {limits.processes}",
            }.get(kind, str(kind))
            return Outcome.RESOURCE_LIMIT, one_line(f"{text} [{limit}]"), code, None
        return Outcome.FAILED, text, code, None
    if stage == "exit":
        return Outcome.FAILED, one_line(f"exited before the end (sys.exit({record.get('code')!r}))"), code, None
    return Outcome.FAILED, f"exited before the end (exit status {code}, no completion marker)", code, None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
