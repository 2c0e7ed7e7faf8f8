"""The teacher on llama.cpp vs PyTorch, same text, one run: tokens/s and how far their distributions differ.

    OMP_NUM_THREADS=1 python benchmarks/distill_teacher_backends.py --teacher qwen2.5-coder-0.5b-instruct \
        --blocks 4 --block-size 256 --threads 1 --out benchmarks/results/distill_teacher_backends-0.5b.json

Both teachers come from the same GGUF (a models.lock name or path, verified): PyTorch runs the
float32 model transformers dequantizes from it (the distill stage's cached copy), llama.cpp runs
the file itself (quantized weights, 8-bit activations in its matmuls). Each scores the same
blocks of standard-library source, tokenized by the GGUF's own tokenizer, with full per-token
logits (what the logit cache reads). Reported per backend: load seconds and scoring tokens/s;
between them: mean KL(PyTorch ‖ llama.cpp) and the reverse, in nats per token, and top-1 agreement;
and what the top-k + tail cache keeps of llama.cpp's distribution (KL of the bucketed
distributions, the quantity the sparse loss sees).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = ("textwrap", "dataclasses", "argparse", "json.decoder", "heapq")


def corpus_ids(llm_vocab, n_tokens: int) -> list[int]:
    import importlib

    text = "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in SOURCES)
    ids = llm_vocab.tokenize(text.encode(), add_bos=False, special=False)
    if len(ids) < n_tokens:
        raise SystemExit(f"only {len(ids)} tokens of text for {n_tokens}: lower --blocks or --block-size")
    return ids[:n_tokens]


def kl_rows(p_log, q_log):
    """KL(p ‖ q) per row from log-probabilities (float64)."""
    import numpy as np

    return (np.exp(p_log) * (p_log - q_log)).sum(-1)


def log_softmax64(x):
    import numpy as np

    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def bucketed(p_log, q_log, k: int):
    """KL between p and q seen through p's top-k + tail buckets (what the cache + sparse loss compare)."""
    import numpy as np

    top = np.argsort(-p_log, axis=-1)[:, :k]
    pk = np.take_along_axis(p_log, top, -1)
    qk = np.take_along_axis(q_log, top, -1)
    p_rest = np.clip(1 - np.exp(pk).sum(-1), 1e-12, None)
    q_rest = np.clip(1 - np.exp(qk).sum(-1), 1e-12, None)
    return (np.exp(pk) * (pk - qk)).sum(-1) + p_rest * (np.log(p_rest) - np.log(q_rest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_teacher_backends.json"))
    args = ap.parse_args()

    import llama_cpp
    import numpy as np
    import torch

    from distill.llama_teacher import load_llama_teacher
    from distill.models import load_teacher

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lt = load_llama_teacher(args.teacher, n_ctx=args.block_size, threads=args.threads)
    llama_load = time.perf_counter() - t0
    vocab = llama_cpp.Llama(str(lt.llm.model_path), vocab_only=True, verbose=False)
    ids = corpus_ids(vocab, args.blocks * args.block_size)
    blocks = torch.tensor(ids).view(args.blocks, args.block_size)

    t0 = time.perf_counter()
    pt = load_teacher(args.teacher)
    torch_load = time.perf_counter() - t0

    rows = {"kl_pt_llama": [], "kl_llama_pt": [], "top1": [], "cache_kl": []}
    seconds = {"torch": 0.0, "llama.cpp": 0.0}
    for block in blocks:
        t0 = time.perf_counter()
        with torch.inference_mode():
            a = pt.model(input_ids=block[None], use_cache=False).logits[0].float().numpy()
        seconds["torch"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        b = lt.forward(block[None])[0].numpy()
        seconds["llama.cpp"] += time.perf_counter() - t0
        pa, pb = log_softmax64(a), log_softmax64(b)
        rows["kl_pt_llama"].append(kl_rows(pa, pb))
        rows["kl_llama_pt"].append(kl_rows(pb, pa))
        rows["top1"].append(pa.argmax(-1) == pb.argmax(-1))
        rows["cache_kl"].append(bucketed(pb, pa, args.k))
    lt.close()
    n = args.blocks * args.block_size
    result = {
        "teacher": args.teacher,
        "sha256": lt.sha256,
        "blocks": args.blocks,
        "block_size": args.block_size,
        "tokens": n,
        "threads": args.threads,
        "k": args.k,
        "load_s": {"torch": round(torch_load, 2), "llama.cpp": round(llama_load, 2)},
        "tokens_per_s": {k: round(n / v, 1) for k, v in seconds.items()},
        "speedup_llama_cpp": round(seconds["torch"] / seconds["llama.cpp"], 2),
        "kl_torch_llama_mean": float(np.concatenate(rows["kl_pt_llama"]).mean()),
        "kl_llama_torch_mean": float(np.concatenate(rows["kl_llama_pt"]).mean()),
        "kl_torch_llama_p99": float(np.quantile(np.concatenate(rows["kl_pt_llama"]), 0.99)),
        "top1_agreement": float(np.concatenate(rows["top1"]).mean()),
        "topk_tail_kl_llama_torch_mean": float(np.concatenate(rows["cache_kl"]).mean()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "versions": {"torch": torch.__version__, "llama_cpp": llama_cpp.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'backend':<10} {'load s':>7} {'tok/s':>8}")
    for k in ("torch", "llama.cpp"):
        print(f"{k:<10} {result['load_s'][k]:>7.1f} {result['tokens_per_s'][k]:>8.1f}")
    print(
        f"llama.cpp is {result['speedup_llama_cpp']}x faster; KL(torch‖llama) {result['kl_torch_llama_mean']:.2e}, "
        f"KL(llama‖torch) {result['kl_llama_torch_mean']:.2e}, top-1 agreement {result['top1_agreement']:.4f}, "
        f"top-{args.k}+tail KL {result['topk_tail_kl_llama_torch_mean']:.2e} over {n} tokens"
    )


if __name__ == "__main__":
    main()
