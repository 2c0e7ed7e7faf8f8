"""Stop sequences for streamed text that never leak a partial stop string.

Text that could still be the start of a stop sequence is held back until the next
chunk proves it is not; the held text is released only when generation ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopFilter:
    stops: tuple[str, ...] = ()
    _held: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)

    def feed(self, text: str) -> str:
        """Take the next chunk; return what is safe to show. Sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return buf[:cut]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Generation ended without a match: release the held-back text."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


def apply_stops(text: str, stops: tuple[str, ...]) -> str:
    """The non-streaming answer: ``text`` cut at the earliest stop sequence."""
    f = StopFilter(stops)
    return f.feed(text) + f.flush()
