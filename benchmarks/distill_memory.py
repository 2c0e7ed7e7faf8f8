"""Training tokens/s and peak memory of one distillation step on CPU, chunked loss vs unchunked.

    python benchmarks/distill_memory.py [--steps 4] [--block 512] [--batch 4] [--chunk 512] [--out FILE]

Each configuration runs in a fresh process (peak RSS = VmHWM of that process) with a tiny
student and teacher on SmolLM2's 49,152-token vocabulary, where the output logits, not the
layers, dominate memory. "unchunked" computes both models' full float32 logits for the batch;
"chunked" recomputes `--chunk` positions at a time (distill/losses.py). Ratios are within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOCAB = 49152


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.losses import LossConfig
    from distill.models import Teacher
    from distill.train import DistillStep, dense_teacher

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    def model(layers: int, hidden: int):
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg)

    teacher_model = model(4, 256).eval().requires_grad_(False)
    teacher = Teacher(teacher_model, "random", "-", VOCAB, "-")
    student = model(2, 256).train()
    step = DistillStep(student, LossConfig(chunk_size=args.chunk if args.mode == "chunked" else None))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ids = torch.randint(0, VOCAB, (args.batch, args.block + 1))
    inputs, labels = ids[:, :-1], ids[:, 1:]
    base = peak_rss_mib()
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        loss, _ = step(inputs, labels, dense_teacher(teacher, inputs), None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    steady = times[1:]  # the first step allocates the optimizer state
    tokens = args.batch * args.block
    return {
        "mode": args.mode,
        "tokens_per_step": tokens,
        "step_s": sum(steady) / len(steady),
        "tokens_per_s": tokens * len(steady) / sum(steady),
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_steps_mib": base,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill_memory.json")
    parser.add_argument("--worker", choices=["chunked", "unchunked"], dest="mode")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return

    rows = []
    for mode in ("unchunked", "chunked"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            *(f"--{k}={getattr(args, k)}" for k in ("steps", "block", "batch", "chunk", "threads")),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    un, ch = rows
    print(f"{'mode':<10} {'tok/s':>8} {'step s':>8} {'peak RSS MiB':>13} {'loss':>8}")
    for r in rows:
        print(
            f"{r['mode']:<10} {r['tokens_per_s']:>8.0f} {r['step_s']:>8.2f} {r['peak_rss_mib']:>13.0f} {r['loss']:>8.4f}"
        )
    ratios = {
        "peak_rss_chunked_over_unchunked": ch["peak_rss_mib"] / un["peak_rss_mib"],
        "tokens_per_s_chunked_over_unchunked": ch["tokens_per_s"] / un["tokens_per_s"],
    }
    print(
        f"peak memory ratio chunked/unchunked: {ratios['peak_rss_chunked_over_unchunked']:.3f}; speed ratio: {ratios['tokens_per_s_chunked_over_unchunked']:.3f}"
    )
    result = {
        "command": " ".join(sys.argv),
        "machine": platform.processor() or platform.machine(),
        "settings": {k: getattr(args, k) for k in ("steps", "block", "batch", "chunk", "threads")},
        "vocab": VOCAB,
        "rows": rows,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
