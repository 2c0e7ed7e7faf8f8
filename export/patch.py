"""Make a patch (`assistant.store.patch`) that rebuilds a GGUF from a base GGUF it shares tensors with.

Every tensor of the target whose bytes occur as a whole tensor of the base becomes a "base"
segment; the header, metadata, alignment padding and the remaining tensors go into the patch.
Byte equality is the whole test, so a patch is exact by construction (the lock pins the result).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from assistant.store.gguf_file import GGUFInfo, read_gguf
from assistant.store.patch import PatchHeader, Segment, merged, write_patch
from assistant.store.verify import sha256_file
from export.errors import ExportError
from export.files import atomic_path


@dataclass(frozen=True)
class PatchResult:
    path: Path
    size: int  # of the patch file
    sha256: str
    header: PatchHeader

    @property
    def shared_bytes(self) -> int:
        return self.header.base_bytes


def _tensor_ranges(info: GGUFInfo) -> list[tuple[int, int, bool]]:
    """(absolute offset, bytes, is a matrix) per tensor, in file order."""
    ranges = []
    for t in info.tensors:
        n = t.n_bytes
        if n is None:
            raise ExportError(f"{info.path}: tensor {t.name} has a type this tool cannot size ({t.type_name})")
        ranges.append((info.data_offset + t.offset, n, len(t.shape) > 1))
    return sorted(ranges)


def _digest(f, offset: int, length: int) -> str:
    f.seek(offset)
    h, left = hashlib.sha256(), length
    while left:
        chunk = f.read(min(left, 8 << 20))
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def plan_segments(target: Path, base: Path) -> tuple[list[Segment], int]:
    """The target as segments (whole tensors found in the base, everything else from the patch),
    and how many of the shared tensors are weight matrices."""
    t_info, b_info = read_gguf(target), read_gguf(base)
    with open(base, "rb") as fb:
        in_base = {(n, _digest(fb, off, n)): off for off, n, _ in _tensor_ranges(b_info)}
    segments, cursor, payload, matrices = [], 0, 0, 0
    with open(target, "rb") as ft:
        for off, n, matrix in _tensor_ranges(t_info):
            hit = in_base.get((n, _digest(ft, off, n)))
            if hit is None:
                continue
            matrices += matrix
            if off > cursor:
                segments.append(Segment("patch", payload, off - cursor))
                payload += off - cursor
            segments.append(Segment("base", hit, n))
            cursor = off + n
    size = t_info.file_size
    if size > cursor:
        segments.append(Segment("patch", payload, size - cursor))
    return merged(segments), matrices


def make_patch(target: Path, base: Path, out: Path, *, force: bool = False) -> PatchResult:
    """Write the patch that turns ``base`` into ``target`` to ``out`` (atomically)."""
    segments, matrices = plan_segments(target, base)
    if not matrices:
        raise ExportError(
            f"{target} shares no weight matrix with {base}: a patch would be about the whole file",
            hint="graft the student onto its base first (`assistant export graft`)",
        )
    header = PatchHeader(
        base_size=Path(base).stat().st_size,
        base_sha256=sha256_file(Path(base)),
        size=Path(target).stat().st_size,
        sha256=sha256_file(Path(target)),
        segments=tuple(segments),
    )

    def payload():
        with open(target, "rb") as f:
            cursor = 0  # target offset of the next byte
            for s in segments:
                if s.source == "patch":
                    f.seek(cursor)
                    left = s.length
                    while left:
                        chunk = f.read(min(left, 8 << 20))
                        left -= len(chunk)
                        yield chunk
                cursor += s.length

    with atomic_path(out, force) as tmp:
        write_patch(tmp, header, payload())
    return PatchResult(out, out.stat().st_size, sha256_file(out), header)
