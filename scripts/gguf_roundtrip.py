"""GGUF → PyTorch → our GGUF → llama.cpp: prove the distill and export stages keep a real model intact.

    python scripts/gguf_roundtrip.py qwen2.5-coder-0.5b-instruct --out runs/roundtrip-qwen05 [--n-new 64]

The teacher GGUF (a models.lock name or a .gguf path, verified against its sha256) is dequantized
by transformers into the distill stage's cached float32 HF directory, exported by our writer to
F16 (tokenizer copied verbatim from the GGUF), and `export verify` compares, against PyTorch on
held-out code: our F16 file (must reproduce PyTorch's greedy output) and the original file (its own
quantization error, the reference level). Writes report.json and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class RoundTrip:
    model_dir: Path
    ours: Path
    original: Path
    report: dict
    seconds: dict


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def checkpoint_from_gguf(spec: str, out_dir: Path) -> tuple[Path, Path, str]:
    """An HF directory for the GGUF named by ``spec`` that records the GGUF as its tokenizer source."""
    from assistant.model_dir import write_tokenizer_record
    from distill.models import _resolve_gguf, gguf_as_hf_dir

    resolved = _resolve_gguf(spec, offline=True)
    hf_dir = gguf_as_hf_dir(resolved.path, resolved.sha256)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        if not (out_dir / name).exists():
            _link_or_copy(hf_dir / name, out_dir / name)
    write_tokenizer_record(out_dir, str(resolved.path), resolved.sha256)
    return out_dir, resolved.path, resolved.sha256


def roundtrip(spec: str, work: Path, *, n_new: int = 64, prompts: tuple[str, ...] | None = None) -> RoundTrip:
    from export.pipeline import GgufRequest, LockTarget, export_gguf
    from export.verify import VerifyConfig, verify

    seconds = {}
    t0 = time.perf_counter()
    model_dir, original, _sha = checkpoint_from_gguf(spec, work / "checkpoint")
    seconds["gguf_to_pytorch"] = time.perf_counter() - t0
    ours = work / "ours.F16.gguf"
    t0 = time.perf_counter()
    if not ours.is_file():
        export_gguf(GgufRequest(model_dir, ours, "f16", lock=LockTarget(enabled=False)))
    seconds["export_f16"] = time.perf_counter() - t0
    cfg = VerifyConfig(n_new=n_new, speed_tokens=0, **({"prompts": prompts} if prompts else {}))
    t0 = time.perf_counter()
    report = verify(model_dir, [ours, original], cfg, tokenizer_gguf=original).to_dict()
    seconds["verify"] = time.perf_counter() - t0
    return RoundTrip(model_dir, ours, original, report, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="models.lock name or .gguf path")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-new", type=int, default=64)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rt = roundtrip(args.model, args.out, n_new=args.n_new)
    (args.out / "report.json").write_text(json.dumps({**rt.report, "seconds": rt.seconds}, indent=2))
    print(
        f"{'file':<48} {'size':>13} {'tok ok':>6} {'greedy':>9} {'KL vs PT':>9} {'top-1 PT':>8} {'KL vs F16':>9} {'top-1 F16':>9}"
    )
    for f in rt.report["files"]:
        greedy = f"{sum(f['greedy_matched'])}/{rt.report['n_prompts'] * rt.report['n_new']}"
        print(
            f"{Path(f['path']).name:<48} {f['size']:>13,} {f['tokenization_identical']!s:>6} {greedy:>9} "
            f"{f['kl_mean']:>9.2e} {f['top1']:>8.4f} {f['kl_f16'] or 0:>9.2e} {f['top1_f16'] or 0:>9.4f}"
        )
    print(json.dumps(rt.seconds))


if __name__ == "__main__":
    main()
