"""What freezing the lower layers buys on a CPU: student training tokens/s and peak memory, one run.

    OMP_NUM_THREADS=1 python benchmarks/distill_frozen.py --model qwen2.5-coder-0.5b-instruct --layers 12 \
        --freeze 8 --block-size 256 --steps 3 --out benchmarks/results/distill_frozen-0.5b.json

The student is cut from ``--model`` (a lock name, .gguf path or HF directory; its first ``--layers``
layers evenly spaced) exactly as `assistant distill train` cuts one. Each choice runs in its own
process (so peak RSS is its own) the same DistillStep + AdamW step the training loop runs, on the
same token blocks, with a cached-style sparse teacher target (top-64, so the teacher costs nothing):

- full: every layer trains;
- frozen: embeddings and the lower ``--freeze`` layers fixed, run without gradients;
- frozen+cache: their output read from a hidden-state cache (built once; its cost is reported);
- frozen+cache, 25% targets: as above with only the last quarter of each block carrying a
  target (a prompt/answer split), so the head and loss run on a quarter of the positions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHOICES = ("full", "frozen", "frozen+cache", "frozen+cache, 25% targets")


def worker(args) -> dict:
    import torch

    from distill.frozen import freeze_lower, prefix_hidden
    from distill.losses import IGNORE_INDEX, SparseTarget
    from distill.models import StudentSpec, build_student, load_teacher
    from distill.recipe import Recipe
    from distill.train import DistillStep

    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.model)
    student = build_student(StudentSpec(layers=args.layers), teacher.model).model.train()
    del teacher
    choice = args.choice
    n_frozen = 0 if choice == "full" else args.freeze
    freeze_lower(student, n_frozen)
    V, B, k = student.config.vocab_size, args.block_size, 64
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(V, 150000), (args.steps + 1, 1, B + 1), generator=g)
    recipe = Recipe(alpha=0.5, chunk_size=256)
    step_module = DistillStep(student, recipe.loss_config(), n_frozen)
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    build_s = 0.0
    cached = None
    if "cache" in choice:
        t0 = time.perf_counter()
        student.eval()
        cached = [prefix_hidden(student.model, ids[i, :, :-1], n_frozen) for i in range(args.steps + 1)]
        student.train()
        build_s = time.perf_counter() - t0
    times = []
    for i in range(args.steps + 1):
        inputs, labels = ids[i, :, :-1], ids[i, :, 1:].clone()
        if "25%" in choice:
            labels[:, : 3 * B // 4] = IGNORE_INDEX
        n = int((labels != IGNORE_INDEX).sum())
        lp = torch.log_softmax(torch.randn(B, k, generator=g), -1) - 0.1
        target = SparseTarget(lp, torch.randint(0, V, (B, k), generator=g), (1 - lp.exp().sum(-1)).clamp_min(0))
        t0 = time.perf_counter()
        loss, _ = step_module(inputs, labels, target.__getitem__, n, cached[i] if cached is not None else None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    tokens = B * args.steps
    return {
        "choice": choice,
        "trainable_params": sum(p.numel() for p in trainable),
        "tokens_per_s": tokens / sum(times),
        "step_s": sum(times) / len(times),
        "cache_build_s_per_block": build_s / (args.steps + 1) if cached is not None else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--freeze", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_frozen.json"))
    ap.add_argument("--choice", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.choice:
        print(json.dumps(worker(args)))
        return
    rows = []
    for choice in CHOICES:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--layers",
            str(args.layers),
            "--freeze",
            str(args.freeze),
            "--block-size",
            str(args.block_size),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--choice",
            choice,
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        )
        if done.returncode:
            raise SystemExit(f"{choice} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["tokens_per_s"]
    result = {
        "model": args.model,
        "layers": args.layers,
        "freeze": args.freeze,
        "block_size": args.block_size,
        "steps": args.steps,
        "threads": args.threads,
        "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "load_avg": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'choice':<28} {'trainable':>11} {'tok/s':>7} {'vs full':>7} {'peak RSS MB':>11} {'cache s/block':>13}")
    for r in rows:
        build = f"{r['cache_build_s_per_block']:.2f}" if r["cache_build_s_per_block"] is not None else "—"
        print(
            f"{r['choice']:<28} {r['trainable_params']:>11,} {r['tokens_per_s']:>7.1f} {r['tokens_per_s'] / base:>6.2f}x "
            f"{r['peak_rss_mb']:>11.0f} {build:>13}"
        )


if __name__ == "__main__":
    main()
