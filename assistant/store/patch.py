"""A model file kept as a patch over another pinned model: shared bytes come from the base.

A distilled student that keeps most of a pretrained model frozen shares those tensors byte for
byte with the base file (`export graft` makes sure of it), so the repository ships only the rest:
header, metadata and trained tensors. The patch is a list of segments, each copied from the base
or from the patch's own payload; the assembled file is checked against the lock's sha256 like
any other download. Pure Python: assembling needs neither `gguf` nor the network.

Layout: ``MAGIC`` (8 bytes), format version (u32 little-endian), header length (u64), a UTF-8
JSON header, then the payload.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.errors import AssistantError

MAGIC = b"ASMPATCH"
VERSION = 1
_FIXED = struct.Struct("<8sIQ")
_CHUNK = 8 << 20
#: A header bigger than this is not one of ours (a GGUF's tensor table needs a few hundred KB).
MAX_HEADER = 64 << 20
SEGMENT_SOURCES = ("base", "patch")


class PatchError(AssistantError):
    """The patch file is damaged, foreign, or does not fit its base."""


@dataclass(frozen=True)
class Segment:
    source: str  # "base": offset into the base file; "patch": offset into the payload
    offset: int
    length: int


@dataclass(frozen=True)
class PatchHeader:
    base_size: int
    base_sha256: str
    size: int  # of the assembled file
    sha256: str
    segments: tuple[Segment, ...]
    payload_offset: int = 0  # where the payload starts in the patch file (set when read)

    @property
    def base_bytes(self) -> int:
        return sum(s.length for s in self.segments if s.source == "base")

    def to_json(self) -> bytes:
        d = asdict(self)
        del d["payload_offset"]
        d["segments"] = [[s.source, s.offset, s.length] for s in self.segments]
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def merged(segments: Iterable[Segment]) -> list[Segment]:
    """Adjacent segments that continue each other in the same source become one."""
    out: list[Segment] = []
    for s in segments:
        if s.length == 0:
            continue
        last = out[-1] if out else None
        if last and last.source == s.source and last.offset + last.length == s.offset:
            out[-1] = Segment(s.source, last.offset, last.length + s.length)
        else:
            out.append(s)
    return out


def write_patch(out: Path, header: PatchHeader, payload: Iterable[bytes]) -> None:
    """Write the patch to ``out`` (the caller picks a temporary name and renames it)."""
    body = header.to_json()
    with open(out, "wb") as f:
        f.write(_FIXED.pack(MAGIC, VERSION, len(body)))
        f.write(body)
        for chunk in payload:
            f.write(chunk)


def read_patch(path: Path) -> PatchHeader:
    """The header of a patch file, checked for shape and bounds (payload size included)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            fixed = f.read(_FIXED.size)
            if len(fixed) < _FIXED.size:
                raise PatchError(f"{path} is not a model patch: {size} bytes, too short for the header")
            magic, version, n = _FIXED.unpack(fixed)
            if magic != MAGIC:
                raise PatchError(f"{path} is not a model patch (starts with {magic[:8]!r}, not {MAGIC!r})")
            if version != VERSION:
                raise PatchError(f"{path} is patch format {version}; this version of the tool reads {VERSION}")
            if n > MAX_HEADER or _FIXED.size + n > size:
                raise PatchError(f"{path} is truncated: its header claims {n} bytes")
            raw = f.read(n)
    except OSError as e:
        raise PatchError(f"cannot read patch {path}: {e.strerror or e}") from None
    try:
        d = json.loads(raw)
        segments = tuple(Segment(str(a), int(b), int(c)) for a, b, c in d["segments"])
        header = PatchHeader(
            int(d["base_size"]), str(d["base_sha256"]), int(d["size"]), str(d["sha256"]), segments, _FIXED.size + n
        )
    except (ValueError, KeyError, TypeError) as e:
        raise PatchError(f"{path} has a damaged header ({type(e).__name__}: {e})") from None
    _check_bounds(path, header, size - header.payload_offset)
    return header


def _check_bounds(path: Path, h: PatchHeader, payload_size: int) -> None:
    total = 0
    for i, s in enumerate(h.segments):
        limit = h.base_size if s.source == "base" else payload_size
        if s.source not in SEGMENT_SOURCES or s.offset < 0 or s.length < 0 or s.offset + s.length > limit:
            raise PatchError(f"{path}: segment {i + 1} ({s.source} {s.offset}+{s.length}) lies outside its source")
        total += s.length
    if total != h.size:
        raise PatchError(f"{path}: its segments add up to {total} bytes, the header says {h.size}")


def _copy(f, offset: int, length: int) -> Iterator[bytes]:
    f.seek(offset)
    left = length
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise PatchError(f"{f.name} ended early while copying {length} bytes at offset {offset}")
        left -= len(chunk)
        yield chunk


def apply_patch(patch: Path, base: Path, out: Path, on_bytes: Callable[[int], None] | None = None) -> PatchHeader:
    """Assemble the patched file at ``out`` from ``base`` (already verified by its own pin).

    The caller hashes ``out`` and renames it: a wrong result is never left under the final name.
    """
    header = read_patch(patch)
    if Path(base).stat().st_size != header.base_size:
        raise PatchError(
            f"{patch} expects a base of {header.base_size} bytes (sha256 {header.base_sha256}); "
            f"{base} has {Path(base).stat().st_size}"
        )
    with open(patch, "rb") as p, open(base, "rb") as b, open(out, "wb") as o:
        for s in header.segments:
            f, start = (b, s.offset) if s.source == "base" else (p, header.payload_offset + s.offset)
            for chunk in _copy(f, start, s.length):
                o.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
    return header
