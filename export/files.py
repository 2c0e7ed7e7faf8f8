"""Output files for the export stage: never overwrite by accident, never leave half a file.

GGUFWriter and llama.cpp's quantizer both write to a path they open themselves, so the
atomicity here is path-based: they write a hidden temp file beside the target and we rename
it over the final name only when they succeeded (rename is atomic within a directory).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from export.errors import ExportError


def check_new_output(path: Path, force: bool) -> None:
    """Refuse an existing output unless --force, before any slow work starts."""
    if path.is_dir():
        raise ExportError(f"output {path} is a directory", hint="pass a file name with --out")
    if path.exists() and not force:
        raise ExportError(f"output {path} already exists", hint="pass --force to overwrite it, or choose another --out")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(final: Path) -> Path:
    """An empty, exclusively created temp file beside ``final``.

    Created with mode 0666 (less the umask), unlike mkstemp's 0600, so the renamed file has
    the permissions any other file the user writes would have.
    """
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise ExportError(f"cannot create a temp file beside {final}")


@contextlib.contextmanager
def atomic_path(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success fsync it and rename it into place.

    On any failure (disk full, Ctrl-C, a bad tensor) the temp file is removed and nothing
    appears under the final name; an existing file there is left untouched.
    """
    final = Path(final)
    check_new_output(final, force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(final)
    except OSError as e:
        raise ExportError(f"cannot write to {final.parent}: {e.strerror or e}", hint="choose another --out") from None
    try:
        yield tmp
        _fsync(tmp)
        check_new_output(final, force)  # a file that appeared meanwhile is still not ours to replace
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise ExportError(
            f"writing {final} failed: {e.strerror or e}; nothing was written under that name",
            hint="free disk space or choose another --out, then rerun",
        ) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
