"""Quantize a GGUF through llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``).

llama.cpp signals failure only by a return code (IQ types without an importance matrix
return 1 and write nothing), and it silently stores a tensor in another type when its rows
do not split into the type's blocks (K-quants need rows divisible by 256). So we check the
code, keep its log for the error message, and read the output's tensor table back to report
every tensor that is not in the requested type.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.store.gguf_file import FILE_TYPES, GGML_TYPES, GGUFInfo, read_gguf
from export.checkpoint import GGUF_FAMILIES
from export.errors import ExportError
from export.files import atomic_path

#: Quantization name -> the ggml type most of its 2-D weights get (llama.cpp's "mix" puts a
#: few tensors, e.g. the output and some attn_v/ffn_down, in a larger type on purpose).
QUANT_TYPES: dict[str, str] = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q8_0": "Q8_0",
    "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K",
    "Q5_1": "Q5_1",
    "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q4_1": "Q4_1",
    "Q4_0": "Q4_0",
    "Q3_K_L": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_S": "Q3_K",
    "Q2_K": "Q2_K",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
    "IQ3_S": "IQ3_S",
    "IQ3_M": "IQ3_S",
}
#: Types llama.cpp refuses without an importance matrix (measured: rc 1 for each).
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
#: Source precisions we quantize from; re-quantizing a quantized file compounds the error.
SOURCE_TYPES = ("F32", "F16", "BF16")
FTYPE_IDS: dict[str, int] = {name: ftype for ftype, name in FILE_TYPES.items()}
GGML_TYPES_BY_NAME = {t.name: t for t in GGML_TYPES.values()}


@dataclass(frozen=True)
class TensorTypeNote:
    """A 2-D tensor stored in another type than the one requested, and why."""

    name: str
    shape: tuple[int, ...]
    got: str
    expected: str
    fallback: bool  # True: its rows do not fit the type's blocks; False: llama.cpp's deliberate mix

    @property
    def reason(self) -> str:
        if self.fallback:
            block = GGML_TYPES_BY_NAME[self.expected].block_size
            return f"row size {self.shape[0]} is not a multiple of {block}"
        return "llama.cpp's mix for this type"


@dataclass(frozen=True)
class QuantResult:
    path: Path
    qtype: str
    size: int
    seconds: float
    type_counts: dict[str, int]
    notes: tuple[TensorTypeNote, ...] = field(default_factory=tuple)

    @property
    def fallbacks(self) -> tuple[TensorTypeNote, ...]:
        return tuple(n for n in self.notes if n.fallback)


def parse_types(spec: str) -> list[str]:
    """``"q8_0, Q4_K_M"`` -> ``["Q8_0", "Q4_K_M"]``, refusing unknown and imatrix-only types."""
    names = [s.strip().upper() for s in spec.split(",") if s.strip()]
    if not names:
        raise ExportError("--type is empty", hint=f"pass e.g. --type Q8_0,Q4_K_M (supported: {', '.join(QUANT_TYPES)})")
    for name in names:
        if name in NEEDS_IMATRIX:
            raise ExportError(
                f"quantization type {name} needs an importance matrix (imatrix), which this tool does not compute",
                hint="use a type that works without one: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, IQ4_XS",
            )
        if name not in QUANT_TYPES:
            raise ExportError(f"unsupported quantization type {name!r}", hint=f"supported: {', '.join(QUANT_TYPES)}")
    return list(dict.fromkeys(names))


def output_path(src: Path, qtype: str, out_dir: Path | None = None) -> Path:
    """``dir/student.F16.gguf`` -> ``dir/student.Q4_K_M.gguf`` (a trailing type name is replaced)."""
    stem = src.name[: -len(".gguf")] if src.name.endswith(".gguf") else src.name
    base, _, last = stem.rpartition(".")
    if base and last.upper() in set(QUANT_TYPES) | set(FILE_TYPES.values()):
        stem = base
    return (out_dir or src.parent) / f"{stem}.{qtype}.gguf"


def check_source(info: GGUFInfo) -> None:
    if info.architecture not in GGUF_FAMILIES:
        raise ExportError(
            f"{info.path} is a {info.architecture!r} model; the export stage handles llama and qwen2 only"
        )
    if info.quantization not in SOURCE_TYPES:
        raise ExportError(
            f"{info.path} is already quantized ({info.quantization}); quantizing it again compounds the error",
            hint="quantize the F16 (or F32) export of the checkpoint instead",
        )


def type_notes(info: GGUFInfo, qtype: str) -> tuple[TensorTypeNote, ...]:
    """Every 2-D tensor whose stored type is not the requested one, with the reason."""
    expected = QUANT_TYPES[qtype]
    block = GGML_TYPES_BY_NAME[expected].block_size
    notes = []
    for t in info.tensors:
        if len(t.shape) < 2 or t.type_name == expected:
            continue
        notes.append(TensorTypeNote(t.name, t.shape, t.type_name, expected, fallback=t.shape[0] % block != 0))
    return tuple(notes)


def run_llama_quantize(src: Path, dst: Path, qtype: str, threads: int = 0, *, allow_requantize: bool = False) -> None:
    """One call into llama.cpp; raise with its own last error line when the return code is not 0."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE_IDS[qtype]
    params.nthread = threads
    params.allow_requantize = allow_requantize
    log = io.StringIO()
    # llama-cpp-python's log callback prints to sys.stderr when its logger's level allows; a
    # Llama(verbose=False) anywhere in the process raises that level, so lower it for this call.
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # DEBUG: continuation lines are logged at that level
    try:
        with contextlib.redirect_stderr(log):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        logger.setLevel(level)
    if rc != 0:
        lines = [ln.strip() for ln in log.getvalue().splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "failed" in ln or "ERROR" in ln), lines[-1] if lines else "")
        hint = (
            "use a type that works without an importance matrix, e.g. Q4_K_M"
            if "imatrix" in why or "importance" in why
            else None
        )
        verb = "re-quantize" if allow_requantize else "quantize"
        raise ExportError(f"llama.cpp could not {verb} {src.name} to {qtype} (return code {rc}): {why}", hint=hint)


def quantize(src: Path, qtype: str, out: Path, *, force: bool = False, threads: int = 0) -> QuantResult:
    """Quantize ``src`` to ``qtype`` at ``out`` atomically and report tensors in other types."""
    (qtype,) = parse_types(qtype)
    info = read_gguf(src)
    check_source(info)
    t0 = time.perf_counter()
    with atomic_path(out, force) as tmp:
        run_llama_quantize(src, tmp, qtype, threads)
        written = read_gguf(tmp)  # complete and parseable before it gets the final name
    counts: dict[str, int] = {}
    for t in written.tensors:
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    return QuantResult(
        path=out,
        qtype=qtype,
        size=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        type_counts=counts,
        notes=type_notes(written, qtype),
    )
