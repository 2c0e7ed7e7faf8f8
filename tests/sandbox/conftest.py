"""Helpers for the sandbox's tests: escaped processes, a private temp root, both isolation modes."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

#: "auto" is the strongest mode this machine gives; "none" is the weaker mode, forced.
MODES = ("auto", "none")


def processes_in(root: str | os.PathLike) -> list[int]:
    """Host pids of processes whose cwd is inside ``root`` (after a run they would be escapees)."""
    root = str(root)
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(root):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture
def tmp_root():
    """A fresh, world-searchable $TMPDIR for callers started by a test (the runs' uids must enter it)."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir="/tmp" if os.path.isdir("/tmp") else None))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def protected(tmp_path) -> Path:
    """A directory of the test's own that no sandboxed program may change."""
    d = tmp_path / "protected"
    d.mkdir()
    (d / "keep.txt").write_text("precious")
    (d / "sub").mkdir()
    (d / "sub" / "also.txt").write_text("also precious")
    return d
