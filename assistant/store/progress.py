"""How a pull reports progress: a rich bar on a terminal, plain lines on stderr otherwise."""

from __future__ import annotations

import sys
from typing import Any, Protocol


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class PullProgress(Protocol):
    def begin(self, name: str, total: int, parts: int) -> None: ...
    def part(self, index: int, label: str, size: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, text: str) -> None: ...
    def end(self) -> None: ...


class QuietProgress:
    """Reports nothing (library callers that show their own UI)."""

    def begin(self, name: str, total: int, parts: int) -> None: ...
    def part(self, index: int, label: str, size: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, text: str) -> None: ...
    def end(self) -> None: ...


class LineProgress:
    """One line per step on stderr: readable in CI logs and in captured output."""

    def __init__(self) -> None:
        self.name, self.parts = "", 0

    def _say(self, text: str) -> None:
        print(f"pull {self.name}: {text}" if self.name else f"pull: {text}", file=sys.stderr, flush=True)

    def begin(self, name: str, total: int, parts: int) -> None:
        self.name, self.parts = name, parts
        self._say(f"{_mb(total)} in {parts} part{'s' if parts != 1 else ''}")

    def part(self, index: int, label: str, size: int) -> None:
        self._say(f"part {index}/{self.parts} {label} ({_mb(size)})")

    def advance(self, n: int) -> None: ...

    def note(self, text: str) -> None:
        self._say(text)

    def end(self) -> None: ...


class RichProgress:
    """An overall bar and a bar for the current part, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.overall: Any = None
        self.current: Any = None
        self.parts = 0

    def begin(self, name: str, total: int, parts: int) -> None:
        self.parts = parts
        self.progress.start()
        self.overall = self.progress.add_task(f"{name}", total=total)

    def part(self, index: int, label: str, size: int) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(f"  part {index}/{self.parts} {label}", total=size)

    def advance(self, n: int) -> None:
        self.progress.advance(self.overall, n)
        if self.current is not None:
            self.progress.advance(self.current, n)

    def note(self, text: str) -> None:
        from rich.markup import escape

        self.progress.console.print(f"[dim]{escape(text)}[/]", markup=True, highlight=False)

    def end(self) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.stop()


def default_progress() -> PullProgress:
    return RichProgress() if sys.stderr.isatty() else LineProgress()
