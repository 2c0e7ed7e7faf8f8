"""Re-quantize an already-quantized GGUF, e.g. the embedded Q4_1 model to Q8_0 or Q4_0.

`export quantize` refuses quantized sources on purpose: a second quantization compounds the
error. For fidelity measurements that compounding is the point ("a model against its own
re-quantized export", "a deliberately different model"), so this asks llama.cpp for it
explicitly with ``allow_requantize``. Same checks as `export quantize`: the return code, a
complete GGUF under the final name only, and the tensors llama.cpp stored in another type.

    python -m export.requantize SRC.gguf --type Q4_0 --out DST.gguf [--force]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from assistant.store.gguf_file import read_gguf
from export.checkpoint import GGUF_FAMILIES
from export.errors import ExportError
from export.files import atomic_path
from export.quantize import QuantResult, parse_types, run_llama_quantize, type_notes


def requantize(src: Path, qtype: str, out: Path, *, force: bool = False, threads: int = 0) -> QuantResult:
    """Quantize ``src`` (any GGUF llama.cpp reads, quantized or not) to ``qtype`` at ``out``, atomically."""
    (qtype,) = parse_types(qtype)
    info = read_gguf(src)
    if info.architecture not in GGUF_FAMILIES:
        raise ExportError(f"{src} is a {info.architecture!r} model; the export stage handles llama and qwen2 only")
    t0 = time.perf_counter()
    with atomic_path(out, force) as tmp:
        run_llama_quantize(src, tmp, qtype, threads, allow_requantize=True)
        written = read_gguf(tmp)
    counts: dict[str, int] = {}
    for t in written.tensors:
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    return QuantResult(out, qtype, out.stat().st_size, time.perf_counter() - t0, counts, type_notes(written, qtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.requantize", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a GGUF file, or a models.lock name")
    parser.add_argument("--type", "-t", required=True, help="target type, e.g. Q8_0, Q4_0, Q2_K")
    parser.add_argument("--out", "-o", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    from assistant.errors import AssistantError

    try:
        src = args.src
        if not src.exists():
            from assistant.codegen.generate import load_model

            src = load_model(str(args.src)).path
        r = requantize(src, args.type, args.out, force=args.force, threads=args.threads)
    except AssistantError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    fallback = f", {len(r.fallbacks)} tensors in another type (row sizes)" if r.fallbacks else ""
    print(f"{r.path}: {r.qtype}, {r.size} bytes, {r.seconds:.1f} s{fallback}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
