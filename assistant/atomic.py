"""Write files so that a reader (or a Ctrl-C) never sees half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; keep the replaced file's mode, else the usual 0644.
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Fail now, not after a long run, when ``path`` cannot be written as a regular file.

    Probes the nearest existing folder with a real temp file: permission bits say nothing
    for root, and /proc, /sys or a read-only mount refuse only an actual create.
    """
    from assistant.errors import UsageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory", hint=f"pass a file name, e.g. {option} {path / 'out.txt'}")
    if path.exists() and not path.is_file():
        raise UsageError(f"{option} {path} is not a regular file", hint="redirect stdout to it instead (> FILE)")
    _check_folder(path.parent, option, path)
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Like :func:`check_output_file`, for an output folder (created later if missing)."""
    from assistant.errors import UsageError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a directory", hint=f"pass a folder, e.g. {option} {path}.d")
    _check_folder(path, option, path)
    return path


def _check_folder(folder: Path, option: str, target: Path) -> None:
    from assistant.errors import UsageError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {target} is under {existing}, which is a file", hint="choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
    except OSError as e:
        # /proc answers "no such file" to a create: say what that means
        reason = "it accepts no new files" if e.errno == errno.ENOENT else (e.strerror or str(e)).lower()
        raise UsageError(
            f"{option} {target}: cannot write in {existing} ({reason})", hint="choose a writable folder"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
