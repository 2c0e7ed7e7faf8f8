"""A small, typed GGUF reader: header, metadata and tensor table, no tensor data.

We check every file before llama.cpp sees it, because llama.cpp aborts the process
(or reads past the end) on a truncated or foreign file. Pure Python on purpose: the
``gguf`` package belongs to the export extra, and the laptop path must not need it.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: Arrays longer than this (token lists, scores, merges) are skipped unless asked for.
SMALL_ARRAY = 64
#: llama.cpp itself reads no nested metadata arrays; a few levels leave room for other writers.
MAX_ARRAY_DEPTH = 8


class GGUFError(AssistantError):
    """The file is not a usable GGUF model."""


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


SCALAR_FORMATS: dict[ValueType, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGMLType:
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


#: ggml tensor types: id -> (name, elements per block, bytes per block), as in ggml.h.
GGML_TYPES: dict[int, GGMLType] = {
    i: GGMLType(*v)
    for i, v in {
        0: ("F32", 1, 4),
        1: ("F16", 1, 2),
        2: ("Q4_0", 32, 18),
        3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24),
        8: ("Q8_0", 32, 34),
        9: ("Q8_1", 32, 40),
        10: ("Q2_K", 256, 84),
        11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210),
        15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66),
        17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98),
        19: ("IQ1_S", 256, 50),
        20: ("IQ4_NL", 32, 18),
        21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82),
        23: ("IQ4_XS", 256, 136),
        24: ("I8", 1, 1),
        25: ("I16", 1, 2),
        26: ("I32", 1, 4),
        27: ("I64", 1, 8),
        28: ("F64", 1, 8),
        29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2),
        34: ("TQ1_0", 256, 54),
        35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17),
    }.items()
}

#: llama.cpp's ``general.file_type`` (llama_ftype) -> the quantization name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        t = GGML_TYPES.get(self.ggml_type)
        return t.name if t else f"type{self.ggml_type}"

    @property
    def n_bytes(self) -> int | None:
        t = GGML_TYPES.get(self.ggml_type)
        if t is None:
            return None
        return self.n_elements // t.block_size * t.type_size


@dataclass(frozen=True)
class SkippedArray:
    """A long metadata array we did not load; its type and length are kept."""

    item_type: ValueType
    length: int


@dataclass
class GGUFInfo:
    path: Path
    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int | None:
        return self.arch_value("context_length")

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        if ft is not None:
            return FILE_TYPES.get(int(ft), f"ftype{ft}")
        # No file type recorded: name it after the most common weight type.
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
        return max(counts, key=counts.__getitem__) if counts else "unknown"

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def data_end(self) -> int | None:
        """Where the last tensor's bytes end, or None if a tensor type is unknown to us."""
        end = self.data_offset
        for t in self.tensors:
            nb = t.n_bytes
            if nb is None:
                return None
            end = max(end, self.data_offset + t.offset + nb)
        return end


class _Reader:
    """Bounds-checked little-endian reads over a memory map.

    Bounds checks stop a corrupt length from making us read garbage or allocate GBs;
    the memory map keeps skipping 50k-entry token arrays cheap.
    """

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.size, self.path, self.pos = buf, len(buf), path, 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"{self.path} is truncated or corrupt: {what} runs past the end of the file ({self.size} bytes)",
                hint="download it again (assistant models pull NAME) or re-export it",
            )

    def read(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self.pos += n

    def scalar(self, vt: ValueType, what: str) -> Any:
        fmt = SCALAR_FORMATS[vt]
        n = struct.calcsize(fmt)
        self._need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        return self.read(n, what).decode("utf-8", errors="replace")

    def value_type(self, what: str) -> ValueType:
        raw = self.u32(what)
        try:
            return ValueType(raw)
        except ValueError:
            raise GGUFError(f"{self.path} is corrupt: unknown metadata type {raw} in {what}") from None

    def value(self, vt: ValueType, what: str, load_arrays: bool, depth: int = 0) -> Any:
        if vt == ValueType.STRING:
            return self.string(what)
        if vt != ValueType.ARRAY:
            return self.scalar(vt, what)
        if depth >= MAX_ARRAY_DEPTH:  # a crafted file would otherwise end in RecursionError
            raise GGUFError(
                f"{self.path} is corrupt or hostile: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                hint="use a GGUF written by llama.cpp or `assistant export gguf`",
            )
        item = self.value_type(what)
        length = self.u64(what)
        if not load_arrays and length > SMALL_ARRAY:
            if item == ValueType.STRING:
                unpack, buf = struct.unpack_from, self.buf
                for _ in range(length):
                    self._need(8, what)
                    n = unpack("<Q", buf, self.pos)[0]
                    self.pos += 8
                    self.skip(n, what)
            elif item == ValueType.ARRAY:
                for _ in range(length):
                    self.value(ValueType.ARRAY, what, False, depth + 1)
            else:
                self.skip(length * struct.calcsize(SCALAR_FORMATS[item]), what)
            return SkippedArray(item, length)
        if item in SCALAR_FORMATS:
            fmt = SCALAR_FORMATS[item]
            raw = self.read(length * struct.calcsize(fmt), what)
            return list(struct.unpack(f"<{length}{fmt[1]}", raw))
        return [self.value(item, what, load_arrays, depth + 1) for _ in range(length)]


def read_gguf(path: str | os.PathLike, *, load_arrays: bool = False) -> GGUFInfo:
    """Parse the header, metadata and tensor table of ``path`` and check the file is complete."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")  # noqa: SIM115 - the `with f:` below closes it
    except FileNotFoundError:
        raise GGUFError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise GGUFError(f"{path} is a directory, not a GGUF file") from None
    except PermissionError:
        raise GGUFError(f"cannot read {path}: permission denied") from None
    with f:
        if size < 24:
            raise GGUFError(f"{path} is not a GGUF file: only {size} bytes")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            info = _parse(_Reader(buf, path), path, size, load_arrays)
    end = info.data_end
    if end is not None and end > size:
        raise GGUFError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}",
            hint="download it again (assistant models pull NAME) or re-export it",
        )
    return info


def _parse(r: _Reader, path: Path, size: int, load_arrays: bool) -> GGUFInfo:
    magic = r.read(4, "the magic")
    if magic != GGUF_MAGIC:
        raise GGUFError(
            f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')",
            hint="pass a .gguf model, or convert a Hugging Face model with `assistant export gguf`",
        )
    version = r.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"{path} is GGUF version {version}; supported versions: {SUPPORTED_VERSIONS}")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vt = r.value_type(f"metadata {key}")
        metadata[key] = r.value(vt, f"metadata {key}", load_arrays)
    tensors = []
    for i in range(n_tensors):
        name = r.string(f"tensor name #{i}")
        n_dims = r.u32(f"tensor {name}")
        if n_dims > 8:
            raise GGUFError(f"{path} is corrupt: tensor {name} claims {n_dims} dimensions")
        shape = tuple(r.u64(f"tensor {name}") for _ in range(n_dims))
        ggml_type = r.u32(f"tensor {name}")
        offset = r.u64(f"tensor {name}")
        tensors.append(TensorInfo(name, shape, ggml_type, offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_offset = r.pos + (-r.pos % alignment)
    return GGUFInfo(path, version, size, data_offset, metadata, tensors)
