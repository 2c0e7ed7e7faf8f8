"""The audit hook and privileges, above all in the weaker mode without namespaces (issue 18, item 5)."""

from __future__ import annotations

import os
import sys

import pytest

from assistant.sandbox.limits import Limits
from assistant.sandbox.outcomes import Outcome
from assistant.sandbox.runner import isolation_report, run_program
from tests.sandbox.conftest import MODES, processes_in, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

REFUSED = "outside the sandbox's directory is not allowed"


def attempt(label: str, code: str) -> str:
    """Program text that runs ``code`` and prints what happened under ``label``."""
    return (
        f"try:\n    {code}\n    print({label!r}, 'done')\n"
        f"except OSError as e:\n    print({label!r}, 'refused', str(e))\n"
    )


@pytest.mark.parametrize("mode", MODES)
def test_dev_dot_dot_does_not_bypass_the_write_check(protected, mode):
    target = protected / "via-dev.txt"
    program = attempt("dev-dot-dot", f"open('/dev/..' + {str(target)!r}, 'w').write('escaped')") + attempt(
        "dev-null", "open('/dev/null', 'w').write('fine')"
    )
    r = run_program(program, Limits(timeout_s=10), mode=mode)
    assert r.passed, r.stderr
    assert "dev-dot-dot refused writing outside the sandbox's directory is not allowed" in r.stdout, r.stdout
    assert "dev-null done" in r.stdout
    assert not target.exists()


@pytest.mark.parametrize("mode", MODES)
def test_sqlite_fifos_device_nodes_and_xattrs_are_checked(protected, mode):
    keep = protected / "keep.txt"
    program = "import os, sqlite3\n" + "".join(
        [
            attempt("sqlite", f"sqlite3.connect({str(protected / 'db.sqlite')!r}).execute('create table t (x)')"),
            attempt(
                "sqlite-uri",
                f"sqlite3.connect('file:' + {str(protected / 'uri.sqlite')!r}, uri=True).execute('create table t (x)')",
            ),
            attempt("mkfifo", f"os.mkfifo({str(protected / 'fifo')!r})"),
            attempt("mknod", f"os.mknod({str(protected / 'node')!r})"),
            attempt("setxattr", f"os.setxattr({str(keep)!r}, 'user.sandbox', b'1')"),
            # Through a descriptor of a file that every mode shows: the hook resolves the descriptor.
            attempt("fd-setxattr", "os.setxattr(os.open('/etc/passwd', os.O_RDONLY), 'user.sandbox', b'1')"),
            attempt("fd-chmod", "os.chmod(os.open('/etc/passwd', os.O_RDONLY), 0o777)"),
            attempt("sqlite-local", "sqlite3.connect('local.db').execute('create table t (x)')"),
            attempt("sqlite-memory", "sqlite3.connect(':memory:').execute('create table t (x)')"),
            attempt("mkfifo-local", "os.mkfifo('local.fifo')"),
        ]
    )
    before = sorted(p.name for p in protected.iterdir()), keep.stat().st_mode
    r = run_program(program, Limits(timeout_s=10), mode=mode)
    assert r.passed, r.stderr
    for label in ("sqlite", "sqlite-uri", "mkfifo", "mknod", "setxattr", "fd-setxattr", "fd-chmod"):
        assert f"{label} refused" in r.stdout and REFUSED in r.stdout.split(f"{label} refused", 1)[1].split("\n")[0], (
            label,
            r.stdout,
        )
    for label in ("sqlite-local", "sqlite-memory", "mkfifo-local"):
        assert f"{label} done" in r.stdout, r.stdout
    assert (sorted(p.name for p in protected.iterdir()), keep.stat().st_mode) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root caller can change the program's uid")
def test_the_weaker_mode_drops_root():
    r = run_program(
        "import os\nprint(os.getuid(), os.geteuid(), os.getgid())\nprint(open('/proc/self/status').read())",
        Limits(timeout_s=10),
        mode="none",
    )
    assert r.passed, r.stderr
    uid, euid, gid = map(int, r.stdout.split("\n", 1)[0].split())
    assert 0 not in (uid, euid, gid) and r.isolation.dropped_root and r.isolation.uid == uid
    status = dict(line.split(":\t", 1) for line in r.stdout.splitlines()[1:] if ":\t" in line)
    allowed = 1 << 2 if r.isolation.read_search else 0  # CAP_DAC_READ_SEARCH at most
    assert int(status["CapEff"], 16) == allowed and int(status["CapBnd"], 16) == allowed
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"


@pytest.mark.parametrize("mode", MODES)
def test_a_daemon_does_not_survive_a_timed_out_run(mode):
    program = """
import os, time
print(os.getcwd(), flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(60)
"""
    r = run_program(program, Limits(timeout_s=1.5, allow_subprocess=True), mode=mode)
    assert r.outcome is Outcome.TIMEOUT
    workdir = r.stdout.splitlines()[0]
    assert wait_for(lambda: not processes_in(workdir), 3), processes_in(workdir)
    assert not os.path.exists(workdir)


def test_the_weaker_mode_can_be_forced_and_says_so(monkeypatch):
    forced = isolation_report(mode="none")
    assert forced.mode == "none" and not forced.pid and not forced.readonly_fs
    monkeypatch.setenv("ASSISTANT_SANDBOX_MODE", "none")
    r = run_program("pass", Limits(timeout_s=10))
    assert r.passed and r.isolation.mode == "none"
    monkeypatch.setenv("ASSISTANT_SANDBOX_MODE", "nonsense")
    from assistant.errors import AssistantError

    with pytest.raises(AssistantError, match="unknown sandbox mode 'nonsense'"):
        run_program("pass", Limits(timeout_s=10))
