"""Run untrusted, model-generated Python in a separate, limited, throw-away process.

One run, in the best case (Linux, namespaces available)::

    caller --Popen--> runner: unshares mount, network, pid and IPC namespaces, mounts / read-only
                        `--fork--> monitor: pid 1 of the new pid namespace; reaps, checks, reports
                                     `--fork--> program: drops privileges, rlimits, audit hook, exec

The caller enforces the wall clock (SIGKILL to the whole process group), reads stdout and
stderr as they come with a cap, and removes the working directory afterwards. The runner is
this very file run as a script (``python -s -B -u sandbox.py``): stdlib only, so any
interpreter >= 3.10 can run it, and no ``preexec_fn``, which is unsafe in the threads that
``run_many`` uses. What is and is not isolated: docs/sandbox.md.
"""

from __future__ import annotations

import errno
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
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

PROGRAM_NAME = "_sandbox_program.py"  # the program's file in the working directory
_MIB = 1024 * 1024
_GRACE_S = 2.0  # after a kill, how long to wait for the pipes to close
_RECORD_TAIL = 256 * 1024  # how much of the program's report channel the monitor keeps


# -- public types --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one execution may use; the defaults suit HumanEval-sized programs."""

    timeout_s: float = 10.0  # wall clock, enforced by the caller
    cpu_s: float | None = None  # RLIMIT_CPU; None: the wall clock rounded up, plus 1 s
    memory_mb: int = 1024  # address space (RLIMIT_AS), not resident memory
    file_size_mb: int = 16  # the largest file the program may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # processes + threads of the program at once, itself included (RLIMIT_NPROC)
    output_bytes: int = 64 * 1024  # kept per stream: the first and the last halves
    allow_subprocess: bool = False  # lifts the audit-hook ban on fork/exec/spawn; the rlimit stays

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "open_files", "processes", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, not {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"Limits.cpu_s must be positive or None, not {self.cpu_s!r}")

    @property
    def cpu_limit_s(self) -> int:
        """RLIMIT_CPU's soft limit: whole seconds, at least 1."""
        if self.cpu_s is None:
            return int(-(-self.timeout_s // 1)) + 1
        return max(1, int(-(-self.cpu_s // 1)))


class Outcome(str, Enum):
    PASSED = "passed"  # ran to the end and exited 0
    FAILED = "failed"  # an exception (detail: "Type: message"), or it left before the end
    TIMEOUT = "timeout"  # wall clock exceeded; the process group was killed
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
    uid: int  # the program's uid, as the host sees it
    dropped_root: bool  # the caller is root and the program runs as nobody
    audit_hook: bool = True  # in-process guard: sockets, spawning, writes outside the working dir
    hidden: tuple[str, ...] = ()  # directories covered by an empty tmpfs (the caller's home)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [
            self.mode,
            "no network" if self.network else "NETWORK REACHABLE",
            "pid namespace" if self.pid else "no pid namespace",
            "read-only filesystem" if self.readonly_fs else "WRITABLE filesystem",
            "private /proc" if self.private_proc else "host /proc",
            f"uid {self.uid}" + (" (root dropped)" if self.dropped_root else ""),
            "audit hook" if self.audit_hook else "no audit hook",
        ]
        return ", ".join(parts)

    @classmethod
    def from_facts(cls, facts: Mapping) -> Isolation:
        return cls(
            mode=facts["mode"], network=facts["network"], pid=facts["pid"], readonly_fs=facts["readonly_fs"],
            private_proc=facts["private_proc"], uid=facts["uid"], dropped_root=facts["dropped_root"],
            hidden=tuple(facts.get("hidden", ())), notes=tuple(facts["notes"]),
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


@dataclass(frozen=True)
class Program:
    """One job for ``run_many`` when a bare source string is not enough."""

    source: str
    files: Mapping[str, str | bytes] | None = None
    extra_path: tuple[str, ...] = ()


# -- public functions ----------------------------------------------------------------------------


def run_program(
    source: str,
    limits: Limits = Limits(),
    *,
    files: Mapping[str, str | bytes] | None = None,
    python: str = sys.executable,
    extra_path: Sequence[str] | None = None,
) -> ExecResult:
    """Run ``source`` as ``__main__`` in a fresh working directory holding ``files``.

    PASSED needs the program to reach its last line and the process to exit 0: a
    ``sys.exit(0)`` or ``os._exit(0)`` before the tests is FAILED. ``extra_path`` goes on
    sys.path right after the working directory.
    """
    plan = isolation_report(python).mode
    return _execute(source, limits, files, python, tuple(extra_path or ()), plan)


def run_many(
    programs: Sequence[str | Program],
    limits: Limits = Limits(),
    *,
    workers: int | None = None,
    python: str = sys.executable,
) -> list[ExecResult]:
    """Run many programs in parallel (one thread per worker, each waiting on its own process).

    Results come back in input order.
    """
    from concurrent.futures import ThreadPoolExecutor

    jobs = [p if isinstance(p, Program) else Program(p) for p in programs]
    if not jobs:
        return []
    isolation_report(python)  # probe once here rather than in every thread at the same time
    n = max(1, min(workers or _default_workers(), len(jobs)))

    def one(job: Program) -> ExecResult:
        return run_program(job.source, limits, files=job.files, python=python, extra_path=job.extra_path)

    if n == 1:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, jobs))


def isolation_report(python: str | None = None) -> Isolation:
    """The protections runs get on this machine, found once per process by a trial run."""
    return _probe(python or sys.executable)


# -- caller side ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _probe(python: str) -> Isolation:
    """Try the strongest isolation; if the runner cannot even start with it, none."""
    failure: Exception | None = None
    for plan in ("auto", "none"):
        try:
            r = _execute("", Limits(timeout_s=30), None, python, (), plan)
        except Exception as e:  # noqa: BLE001 - try the next plan, report the last failure
            failure = e
            continue
        if r.passed and r.isolation is not None:
            if failure is None:
                return r.isolation
            return replace(r.isolation, notes=(*r.isolation.notes, f"the stronger isolation failed: {_one_line(str(failure))}"))
        failure = RuntimeError(f"{r.outcome.value}: {r.detail}; stderr: {r.stderr[-500:]}")
    raise _error(f"the sandbox does not work with {python}: {failure}", "check that it is Python >= 3.10 on a POSIX system")


def _error(message: str, hint: str | None = None) -> Exception:
    """An AssistantError, imported late: this file also runs as a bare script, outside the package."""
    from assistant.errors import AssistantError

    return AssistantError(message, hint=hint)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment of the program: nothing of the caller's (tokens, proxies) leaks.

    TMPDIR points into the working directory because everything else is read-only.
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _write_files(workdir: str, files: Mapping[str, str | bytes] | None, source: str) -> None:
    for name, content in (files or {}).items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts or str(rel) == PROGRAM_NAME:
            raise ValueError(f"sandbox file name must be relative, without '..', and not {PROGRAM_NAME}: {name!r}")
        dest = Path(workdir, *rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    Path(workdir, PROGRAM_NAME).write_bytes(source.encode("utf-8", "replace"))


def _execute(
    source: str,
    limits: Limits,
    files: Mapping[str, str | bytes] | None,
    python: str,
    extra_path: tuple[str, ...],
    plan: str,
) -> ExecResult:
    if os.name != "posix":
        raise _error("the sandbox needs Linux or another POSIX system")
    workdir = tempfile.mkdtemp(prefix="assistant-sandbox-")
    try:
        _write_files(workdir, files, source)
        config = {
            "nonce": secrets.token_hex(16),
            "parent": os.getpid(),
            "workdir": workdir,
            "extra_path": [os.path.abspath(p) for p in extra_path],
            "plan": plan,
            "limits": asdict(limits) | {"cpu_limit_s": limits.cpu_limit_s},
        }
        collected = _spawn_and_collect(python, workdir, config, limits)
    finally:
        _remove_tree(workdir)
    return _result(collected, limits)


@dataclass(frozen=True)
class _Collected:
    stdout: str
    stderr: str
    setup: dict | None
    final: dict | None
    timed_out: bool
    duration_s: float


def _spawn_and_collect(python: str, workdir: str, config: dict, limits: Limits) -> _Collected:
    status_r, status_w = os.pipe()
    config["status_fd"] = status_w
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [python, "-s", "-B", "-u", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=_child_env(workdir), pass_fds=(status_w,), start_new_session=True,
        )
    except OSError as e:
        os.close(status_r)
        raise _error(f"cannot start the sandbox interpreter {python}: {e}", "pass an existing python") from e
    finally:
        os.close(status_w)
    try:
        try:
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        return _collect(proc, status_r, started, limits)
    except BaseException:  # Ctrl-C included: the new session would not get the SIGINT
        if proc.returncode is None:
            _kill_group(proc)
            proc.wait()
        raise
    finally:
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
    """SIGKILL the runner's whole process group; safe because the runner is not reaped yet."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(proc: subprocess.Popen, status_fd: int, started: float, limits: Limits) -> _Collected:
    """Read stdout, stderr and the monitor's status until the run ends or the clock runs out."""
    out, err, status = _Capped(limits.output_bytes), _Capped(limits.output_bytes), bytearray()
    sinks = {proc.stdout.fileno(): out.feed, proc.stderr.fileno(): err.feed, status_fd: status.extend}
    deadline = started + limits.timeout_s
    timed_out = killed = False
    ended = None
    give_up = None
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if not killed and now >= deadline:
                timed_out = killed = True
                ended = now
                _kill_group(proc)
                give_up = now + _GRACE_S
            if give_up is not None and now >= give_up:
                break
            for key, _ in sel.select(timeout=max(0.0, (give_up or deadline) - now)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    if key.fd != status_fd or len(status) < 1 << 20:
                        sinks[key.fd](chunk)
                    continue
                sel.unregister(key.fd)
                if key.fd == status_fd and not killed:
                    # The monitor has exited: the program is over. Kill whatever is left of
                    # the group (stragglers without a pid namespace) before reaping anything.
                    ended = time.monotonic()
                    killed = True
                    _kill_group(proc)
                    give_up = ended + _GRACE_S
    if not killed:
        _kill_group(proc)
    proc.wait()
    setup = final = None
    for line in bytes(status).splitlines():
        kind, _, payload = line.partition(b" ")
        try:
            if kind == b"setup":
                setup = json.loads(payload)
            elif kind == b"exit":
                final = json.loads(payload)
        except ValueError:
            continue
    return _Collected(out.text(), err.text(), setup, final, timed_out, (ended or time.monotonic()) - started)


def _remove_tree(path: str) -> None:
    """Remove the working directory even if the program chmod-ed parts of it."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    for root, dirs, _ in os.walk(path):
        for d in [root, *(os.path.join(root, x) for x in dirs)]:
            try:
                if not os.path.islink(d):
                    os.chmod(d, 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


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


def classify(final: Mapping | None, timed_out: bool, limits: Limits) -> tuple[Outcome, str, int | None, str | None]:
    """Outcome, one-line detail, exit code and signal name from the monitor's final report.

    ``final`` holds the program's exit code or signal, its cpu time, and the last record the
    runner wrote after the program (stage "done", "error" or "exit"), already checked
    against the run's nonce; a missing record means the program never got to the end.
    """
    if timed_out:
        return Outcome.TIMEOUT, f"timed out after {limits.timeout_s:g} s (wall clock)", None, None
    if final is None:
        return Outcome.CRASHED, "the sandbox monitor died before reporting", None, None
    code, sig, record = final.get("exit_code"), final.get("signal"), final.get("record") or {}
    if sig is not None:
        name = _signal_name(sig)
        if sig == getattr(signal, "SIGXCPU", None) or (sig == signal.SIGKILL and final.get("cpu_s", 0) >= limits.cpu_limit_s):
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
        text = record.get("type", "Exception") + (f": {record['message']}" if record.get("message") else "")
        if record.get("line"):
            text += f" (line {record['line']}: {record.get('source', '')})"
        text = _one_line(text)
        kind = record.get("resource")
        if kind:
            limit = {
                "memory": f"memory limit {limits.memory_mb} MiB",
                "file_size": f"file size limit {limits.file_size_mb} MiB",
                "open_files": f"open files limit {limits.open_files}",
                "processes": f"process limit {limits.processes}",
            }.get(kind, kind)
            return Outcome.RESOURCE_LIMIT, _one_line(f"{text} [{limit}]"), code, None
        return Outcome.FAILED, text, code, None
    if stage == "exit":
        return Outcome.FAILED, _one_line(f"exited before the end (sys.exit({record.get('code')!r}))"), code, None
    return Outcome.FAILED, f"exited before the end (exit status {code}, no completion marker)", code, None


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- runner side: everything below runs in the sandbox's processes ------------------------------

# Linux constants (<sched.h>, <sys/mount.h>, <linux/prctl.h>); ctypes has no names for them.
_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_FLAGS = MappingProxyType({"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024,
                               "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24})
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 4, 24
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38

# Audit events the program may not raise. Sockets: no network even where namespaces fail.
# gc introspection: the cheapest way to find the run's nonce in memory.
_BLOCKED = frozenset({
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
_BLOCKED_SPAWN = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "pty.spawn", "os.kill", "os.killpg",
})
# Events that change the filesystem: (position of a path, position of its dir_fd or None).
_WRITES = MappingProxyType({
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),), "shutil.rmtree": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
})


class _Libc:
    """The few Linux syscalls the runner needs, through ctypes; raises OSError on failure."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.lib.unshare.argtypes = [ctypes.c_int]

    def _check(self, ret: int, what: str) -> None:
        if ret != 0:
            code = self.ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    def unshare(self, flags: int) -> None:
        self._check(self.lib.unshare(flags), "unshare")

    def prctl(self, option: int, arg: int = 0) -> None:
        self._check(self.lib.prctl(option, arg, 0, 0, 0), f"prctl({option})")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        self._check(self.lib.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def mount_setattr(self, path: str, recursive: bool, set_: int = 0, clear: int = 0) -> None:
        c = self.ctypes

        class MountAttr(c.Structure):
            _fields_ = [("attr_set", c.c_uint64), ("attr_clr", c.c_uint64), ("propagation", c.c_uint64), ("userns_fd", c.c_uint64)]

        attr = MountAttr(set_, clear, 0, 0)
        ret = self.lib.syscall(c.c_long(_SYS_MOUNT_SETATTR), c.c_int(_AT_FDCWD), c.c_char_p(os.fsencode(path)),
                               c.c_uint(_AT_RECURSIVE if recursive else 0), c.byref(attr), c.c_size_t(c.sizeof(attr)))
        self._check(ret, f"mount_setattr {path}")

    def drop_capabilities(self) -> None:
        """Empty the bounding set, then every capability set (no_new_privs keeps them empty)."""
        c = self.ctypes
        for cap in range(64):
            if self.lib.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and c.get_errno() == errno.EINVAL:
                break

        class Header(c.Structure):
            _fields_ = [("version", c.c_uint32), ("pid", c.c_int)]

        class Data(c.Structure):
            _fields_ = [("effective", c.c_uint32), ("permitted", c.c_uint32), ("inheritable", c.c_uint32)]

        data = (Data * 2)()
        self._check(self.lib.capset(c.byref(Header(0x20080522, 0)), data), "capset")


def _runner_main() -> int:
    """Entry point of the runner process; returns in the program process too (see _start_monitor)."""
    config = json.loads(_read_all(0))
    null = os.open(os.devnull, os.O_RDONLY)  # the program's stdin
    os.dup2(null, 0)
    os.close(null)
    libc = _Libc() if sys.platform.startswith("linux") else None
    if libc:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the caller died: so do we
    if os.getppid() != config["parent"]:
        return 1
    facts = _prepare(config, libc)
    monitor = os.fork()
    if monitor:
        os.close(config["status_fd"])
        _, status = os.waitpid(monitor, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code
    try:
        report_fd = _start_monitor(config, facts, libc)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(70)
    return _program(config, facts, libc, report_fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _prepare(config: dict, libc: _Libc | None) -> dict:
    """In the runner: namespaces and mounts; returns the facts the monitor reports."""
    workdir = config["workdir"]
    root = os.geteuid() == 0
    uid, gid = _nobody() if root else (os.getuid(), os.getgid())
    facts: dict = {"mode": "none", "network": False, "pid": False, "readonly_fs": False, "private_proc": False,
                   "uid": uid, "gid": gid, "dropped_root": False, "hidden": [], "notes": [], "nproc_base": 0, "private_mounts": False}
    notes = facts["notes"]
    plan = config["plan"]
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    if libc is None:
        notes.append("not Linux: no namespaces, no no_new_privs")
    elif root and plan in ("auto", "root-namespaces"):
        try:
            libc.unshare(flags)
            facts["mode"] = "root-namespaces"
        except OSError as e:
            notes.append(f"namespaces unavailable to root ({e})")
    elif not root and plan in ("auto", "user-namespaces"):
        try:
            libc.unshare(_CLONE_NEWUSER | flags)
        except OSError as e:
            notes.append(f"user namespaces unavailable ({e})")
        else:
            _map_ids(os.getuid(), os.getgid())  # a failure here is fatal: we are already inside
            facts["mode"] = "user-namespaces"
    elif plan == "none":
        notes.append("namespaces not tried: the probe found none that work")
    if facts["mode"] != "none":
        facts["network"] = facts["pid"] = True
        try:
            libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # first: no mount below may reach the host
            facts["private_mounts"] = True
            ro, covered = _private_mounts(libc, workdir, _needed_paths(config), _caller_home(), uid, gid, notes)
            facts["readonly_fs"], facts["hidden"] = ro, covered
        except OSError as e:
            notes.append(f"mounts left as they are ({e})")
    if root:
        stdlib = os.path.dirname(os.__file__)
        blocked = [p for p in (stdlib, os.path.dirname(workdir)) if not _reachable(p, uid, gid)]
        if blocked:
            facts["uid"] = facts["gid"] = 0
            notes.append(f"the program runs as root without capabilities: nobody cannot reach {blocked[0]}")
        else:
            facts["dropped_root"] = True
        _chown_tree(workdir, facts["uid"], facts["gid"])  # the program owns its directory
    if facts["uid"] == 0:
        notes.append("RLIMIT_NPROC does not bind uid 0")
    elif facts["mode"] == "user-namespaces":
        facts["nproc_base"] = 2  # the runner and the monitor, counted inside the namespace
    else:
        # Counted per uid across the whole machine: allow for what that uid already runs.
        facts["nproc_base"] = _count_tasks(facts["uid"]) + (0 if root else 1)
    return facts


def _chown_tree(path: str, uid: int, gid: int) -> None:
    for root, dirs, names in os.walk(path):
        for p in [root, *(os.path.join(root, n) for n in dirs + names)]:
            os.lchown(p, uid, gid)


def _map_ids(uid: int, gid: int) -> None:
    """Map our own ids into the new user namespace (the only mapping an unprivileged user may write)."""
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
    except FileNotFoundError:  # kernels before 3.19
        pass
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1\n")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1\n")


def _needed_paths(config: dict) -> list[str]:
    """Directories the program must read: the interpreter, sys.path, extra_path, the working dir."""
    candidates = [*sys.path[1:], sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  *config["extra_path"], config["workdir"]]
    return sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)})


def _can_search(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _first_blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The top-most proper ancestor of ``path`` that ``uid`` cannot enter (mode bits only)."""
    current = "/"
    for part in Path(path).parts[1:]:
        if not _can_search(current, uid, gid):
            return current
        current = os.path.join(current, part)
    return None


def _reachable(path: str, uid: int, gid: int) -> bool:
    try:
        return _first_blocked_ancestor(path, uid, gid) is None and _can_search(path, uid, gid)
    except OSError:
        return False


def _private_mounts(
    libc: _Libc, workdir: str, needed: list[str], home: str | None, uid: int, gid: int, notes: list[str]
) -> tuple[bool, list[str]]:
    """Make every mount read-only but the working directory; (whether that worked, covered dirs).

    Runs in a new mount namespace whose mounts are already private. The caller's home (keys, tokens) is covered by an empty
    tmpfs, and so is any directory that the program's uid could not enter although the
    program needs something inside it (a Python under /root when root drops to nobody);
    what the program needs is bound back in.
    """
    covered = _cover(libc, needed, [home] if home else [], uid, gid, notes)
    libc.mount(workdir, workdir, None, _MS_BIND | _MS_REC)
    try:
        libc.mount_setattr("/", True, set_=_MOUNT_ATTR_RDONLY)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            notes.append(f"read-only mounts failed ({e})")
            return False, covered
        return _remount_readonly(libc, workdir, notes), covered  # kernels before 5.12
    try:
        libc.mount_setattr(workdir, False, clear=_MOUNT_ATTR_RDONLY)
    except OSError as e:
        libc.mount_setattr("/", True, clear=_MOUNT_ATTR_RDONLY)
        notes.append(f"read-only mounts undone: the working directory stayed read-only ({e})")
        return False, covered
    return True, covered


def _mounts() -> list[tuple[str, int]]:
    """(mount point, preserved MS_* flags) from /proc/self/mountinfo."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for spaces
            options = fields[5].split(",")
            result.append((point, sum(_MS_FLAGS.get(o, 0) for o in options)))
    return result


def _remount_readonly(libc: _Libc, workdir: str, notes: list[str]) -> bool:
    """Fallback for kernels without mount_setattr: remount each mount read-only by hand."""
    ok = True
    workdir = os.path.realpath(workdir)
    for point, flags in _mounts():
        if point == workdir:
            continue
        try:
            libc.mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags)
        except OSError as e:
            if point == "/":
                ok = False
            notes.append(f"could not make {point} read-only ({e})")
    return ok


def _caller_home() -> str | None:
    """The caller's home directory (not $HOME: the runner's environment is already scrubbed)."""
    try:
        import pwd

        home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        return None
    return home if home != "/" and os.path.isdir(home) else None


def _cover(libc: _Libc, needed: list[str], hidden: list[str], uid: int, gid: int, notes: list[str]) -> list[str]:
    """Lay a tmpfs over each hidden or blocking directory, then bind back what is needed below it."""
    sep = os.sep
    hidden = [h for h in hidden if not any(p == h or h.startswith(p + sep) for p in needed)]
    groups: dict[str, list[str]] = {h: [] for h in hidden}
    for p in needed:
        anchors = [h for h in hidden if p.startswith(h + sep)]
        blocked = _first_blocked_ancestor(p, uid, gid)
        if blocked not in (None, "/"):
            anchors.append(blocked)
        if anchors:
            groups.setdefault(min(anchors, key=len), []).append(p)
    covered = []
    for anchor in sorted(groups, key=len):
        ps = groups[anchor]
        ps = [p for p in ps if not any(p.startswith(q + sep) for q in ps)]
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in ps]  # before the tmpfs hides them
        try:
            libc.mount("tmpfs", anchor, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
            for p, fd in zip(ps, fds):
                os.makedirs(p, mode=0o755, exist_ok=True)
                libc.mount(f"/proc/self/fd/{fd}", p, None, _MS_BIND | _MS_REC)
            covered.append(anchor)
        except OSError as e:
            notes.append(f"could not cover {anchor} ({e})")
        finally:
            for fd in fds:
                os.close(fd)
    return covered


def _count_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def _start_monitor(config: dict, facts: dict, libc: _Libc | None) -> int:
    """In the monitor: report the setup, fork the program, then watch it; never returns there.

    In the program process it returns the write end of its report channel.
    """
    status_fd = config["status_fd"]
    if facts["pid"] and facts["private_mounts"]:
        try:
            libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
            facts["private_proc"] = True
        except OSError as e:
            facts["notes"].append(f"host /proc stays visible ({e})")
    elif libc:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, so we can kill them
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    if libc:
        libc.prctl(_PR_SET_DUMPABLE, 0)  # no ptrace and no /proc/<pid>/fd for the program
    _write_all(status_fd, b"setup " + json.dumps(facts).encode() + b"\n")
    report_r, report_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    child = os.fork()
    if child == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (status_fd, report_r, wake_r, wake_w):
            os.close(fd)
        return report_w
    try:
        os.close(report_w)
        final = _watch(child, report_r, wake_r, config["nonce"].encode())
        if not facts["pid"]:
            _kill_orphans()
        _write_all(status_fd, b"exit " + json.dumps(final).encode() + b"\n")
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(70)
    os._exit(0)  # pid 1 leaving takes every process of the namespace with it


def _watch(child: int, report_fd: int, wake_fd: int, nonce: bytes) -> dict:
    """Wait for the program, reaping orphans meanwhile; keep the tail of its report channel."""
    import select

    tail = bytearray()
    os.set_blocking(report_fd, False)
    reading = True
    while True:
        ready, _, _ = select.select([report_fd, wake_fd] if reading else [wake_fd], [], [], 1.0)
        if report_fd in ready:
            reading = _drain(report_fd, tail)
        if wake_fd in ready:
            _drain(wake_fd, bytearray())
        reaped = _reap(child)
        if reaped:
            break
    status, usage = reaped
    if reading:
        _drain(report_fd, tail)
    result: dict = {"exit_code": None, "signal": None, "cpu_s": usage.ru_utime + usage.ru_stime,
                    "maxrss_kb": usage.ru_maxrss, "record": _last_record(tail, nonce)}
    if os.WIFSIGNALED(status):
        result["signal"] = os.WTERMSIG(status)
    else:
        result["exit_code"] = os.WEXITSTATUS(status)
    return result


def _drain(fd: int, sink: bytearray) -> bool:
    """Read what is there; False at end of file."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        sink += chunk
        if len(sink) > _RECORD_TAIL:
            del sink[: len(sink) - _RECORD_TAIL]


def _reap(child: int):
    """Reap exited processes; (status, rusage) once ``child`` is among them, else None."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        if pid == child:
            return status, usage


def _last_record(data: bytes, nonce: bytes) -> dict | None:
    """The last record the runner wrote: ``<nonce> <json>`` on a line of its own."""
    end = len(data)
    while (i := data.rfind(nonce, 0, end)) >= 0:
        stop = data.find(b"\n", i)
        try:
            return json.loads(data[i + len(nonce): stop if stop >= 0 else len(data)])
        except ValueError:
            end = i
    return None


def _kill_orphans() -> None:
    """Without a pid namespace: kill what the program left behind (reparented to us, the subreaper)."""
    me = str(os.getpid())
    for _ in range(1000):
        children = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        children.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _program(config: dict, facts: dict, libc: _Libc | None, report_fd: int) -> int:
    """In the program process: lock down, run the program as __main__, report how it ended."""
    nonce = config["nonce"].encode()
    workdir = config["workdir"]
    path = os.path.join(workdir, PROGRAM_NAME)
    try:
        _drop_privileges(facts, libc)
        os.chdir(workdir)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        import builtins
        import types

        main = types.ModuleType("__main__")
        main.__file__ = path
        main.__builtins__ = builtins
        runner_module = sys.modules["__main__"]  # noqa: F841 - keep this file's globals alive
        sys.modules["__main__"] = main
        sys.argv[:] = [path]
        sys.path[:] = [workdir, *config["extra_path"], *sys.path[1:]]
        oom_record = b"\n" + nonce + b' {"stage": "error", "type": "MemoryError", "resource": "memory"}\n'
        _install_guard(workdir, config["limits"]["allow_subprocess"])
        _apply_rlimits(config["limits"], facts["nproc_base"])
    except BaseException as e:  # noqa: BLE001 - the caller turns this into an AssistantError
        _report(report_fd, nonce, {"stage": "setup_error", "message": f"{type(e).__name__}: {e}"})
        return 70
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
    except SystemExit as e:
        code = e.code if isinstance(e.code, (int, type(None))) else _one_line(str(e.code), 200)
        _report(report_fd, nonce, {"stage": "exit", "code": code})
        raise  # exit exactly as python would (message on stderr, exit status)
    except BaseException as e:  # noqa: BLE001 - the program's failure is the result
        try:
            _report(report_fd, nonce, {"stage": "error", **_describe(e, path)})
        except MemoryError:
            _write_all(report_fd, oom_record)
        _print_traceback(e)
        return 1
    _report(report_fd, nonce, {"stage": "done"})
    return 0  # a normal interpreter exit follows: atexit handlers, non-daemon threads


def _drop_privileges(facts: dict, libc: _Libc | None) -> None:
    if facts["dropped_root"]:
        os.setgroups([])
        os.setresgid(facts["gid"], facts["gid"], facts["gid"])
        os.setresuid(facts["uid"], facts["uid"], facts["uid"])
        if os.geteuid() == 0:
            raise OSError("still root after setresuid")
    elif libc and (facts["mode"] == "user-namespaces" or os.geteuid() == 0):
        libc.drop_capabilities()
    if libc:
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1)  # no setuid binaries, no capabilities through exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
        libc.prctl(_PR_SET_DUMPABLE, 1)  # its own /proc/self stays readable to it


def _apply_rlimits(limits: dict, nproc_base: int) -> None:
    import resource

    wanted = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_AS": (limits["memory_mb"] * _MIB,) * 2,
        "RLIMIT_CPU": (limits["cpu_limit_s"], limits["cpu_limit_s"] + 1),
        "RLIMIT_FSIZE": (limits["file_size_mb"] * _MIB,) * 2,
        "RLIMIT_NOFILE": (limits["open_files"],) * 2,
        "RLIMIT_NPROC": (nproc_base + limits["processes"],) * 2,
    }
    for name, (soft, hard) in wanted.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def _install_guard(workdir: str, allow_subprocess: bool) -> None:
    """An audit hook: defence in depth under the namespaces, the only guard where they fail.

    Hooks cannot be removed from Python code; ctypes can still go around it.
    """
    blocked = _BLOCKED if allow_subprocess else _BLOCKED | _BLOCKED_SPAWN
    me = os.getpid()
    home = os.path.realpath(workdir)
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def inside(p, dir_fd=None) -> bool:
        if isinstance(p, int):  # a file descriptor: already open
            return True
        p = fspath(p)
        p = p.decode(errors="surrogateescape") if isinstance(p, bytes) else p
        if isinstance(dir_fd, int) and dir_fd >= 0 and not p.startswith(sep):
            try:
                p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
            except OSError:
                return False
        p = realpath(p)
        return p == home or p.startswith(home + sep)

    def guard(event: str, args: tuple) -> None:
        if event in blocked:
            if event == "os.kill" and args and args[0] in (0, me):
                return
            raise PermissionError(f"{event} is not allowed in the sandbox")
        if event == "open":
            path, _, flags = args
            if isinstance(flags, int) and flags & write_flags and not inside(path):
                if not (isinstance(path, str) and path.startswith("/dev/")):
                    raise PermissionError(f"writing outside the sandbox's directory is not allowed: {path}")
        elif event in _WRITES:
            for i, fd in _WRITES[event]:
                dir_fd = args[fd] if fd is not None and fd < len(args) else None
                if i < len(args) and args[i] is not None and not inside(args[i], dir_fd):
                    raise PermissionError(f"{event} outside the sandbox's directory is not allowed: {args[i]}")

    sys.addaudithook(guard)


def _report(fd: int, nonce: bytes, record: dict) -> None:
    try:
        _write_all(fd, b"\n" + nonce + b" " + json.dumps(record).encode() + b"\n")
    except OSError:  # the program closed the channel: the run counts as unfinished
        pass


def _describe(exc: BaseException, path: str) -> dict:
    """Type, message, the program's innermost line, and which limit (if any) it hit."""
    import linecache
    import traceback

    t = type(exc)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    try:
        message = _one_line(str(exc), 300)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        message = "<unprintable>"
    line, source = None, ""
    if isinstance(exc, SyntaxError) and exc.filename == path:
        line, source, message = exc.lineno, (exc.text or "").strip(), _one_line(exc.msg or "", 300)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == path:
            line, source = lineno, linecache.getline(path, lineno).strip()
    return {"type": name, "message": message, "line": line, "source": _one_line(source, 200),
            "resource": _resource_kind(exc)}


def _resource_kind(exc: BaseException) -> str | None:
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError):
        return {errno.EFBIG: "file_size", errno.EMFILE: "open_files", errno.ENFILE: "open_files",
                errno.EAGAIN: "processes"}.get(exc.errno)
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "processes"
    return None


def _print_traceback(exc: BaseException) -> None:
    """The traceback python would print, without the runner's own frame."""
    try:
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:  # noqa: BLE001 - e.g. no memory left to format it
        pass


if __name__ == "__main__":
    raise SystemExit(_runner_main())
