"""Stop sequences for streamed text that never leak a partial stop string.

Text that could still be the start of a stop sequence is held back until the next
chunk proves it is not; the held text is released only when generation ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from assistant.errors import UsageError


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
        cut = self._first_match(buf)
        keep = self._partial_suffix(buf)
        # A longer stop that began earlier than the match may still complete: wait for it.
        if cut >= 0 and cut <= len(buf) - keep:
            self._held, self.stopped = "", True
            return buf[:cut]
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Generation ended: release the held-back text, up to a stop it holds."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = self._first_match(held)
        if cut < 0:
            return held
        self.stopped = True
        return held[:cut]

    def _first_match(self, buf: str) -> int:
        return min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)

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


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def unescape(text: str, what: str = "--stop") -> str:
    r"""``--stop "\ndef "`` as a shell passes it (backslash, n) to the newline the user meant.

    Understands \n \t \r \0 \\ \' \" \xNN \uNNNN \UNNNNNNNN; any other backslash is an error,
    so a typo never becomes a stop sequence that silently never matches.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 == len(text):
            raise UsageError(f'{what} "{text}" ends with a lone backslash', hint=r"write \\ for a backslash")
        e = text[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
            continue
        width = _HEX_DIGITS.get(e)
        digits = text[i + 2 : i + 2 + width] if width else ""
        if not width or len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
            want = f"\\{e} needs {width} hex digits" if width else f"unknown escape \\{e}"
            raise UsageError(f'{what} "{text}": {want}', hint=r"escapes are \n \t \r \0 \\ \xNN \uNNNN \UNNNNNNNN")
        code = int(digits, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise UsageError(
                f'{what} "{text}": \\{e}{digits} is not a Unicode character', hint="use a code point up to 10FFFF"
            )
        out.append(chr(code))
        i += 2 + width
    return "".join(out)
