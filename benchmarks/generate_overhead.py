"""Overhead of `assistant generate` over raw llama-cpp-python, and CLI start-up time.

Same GGUF, thread count, prompt and token count for every path; reps are interleaved
so drift hits all paths alike; figures are medians and are compared as ratios within
this one run. Writes a table to stdout and JSON to --out.

    python benchmarks/generate_overhead.py [--tokens 256] [--reps 3] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from assistant.atomic import atomic_write_text
from assistant.codegen.generate import load_model
from assistant.runtime.engine import Engine, EngineConfig, Sampling

# A prompt the model continues for thousands of tokens, so every path generates the full count.
PROMPT = "def f0():\n    return 0\n\ndef f1():\n    return 1\n\ndef f2():\n"
EXE = shutil.which("assistant", path=str(Path(sys.executable).parent)) or "assistant"


def raw_llama_cpp(path: str, threads: int, tokens: int) -> dict:
    """The baseline: llama-cpp-python's own streaming completion API (loaded as the CLI loads it)."""
    from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp

    llama_cpp = load_llama_cpp()

    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)

    def once() -> dict:
        llm.reset()
        stamps = []
        t0 = time.perf_counter()
        for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
            if chunk["choices"][0]["text"]:  # the last chunk only carries finish_reason
                stamps.append(time.perf_counter())
        return _figures(t0, stamps)

    return {"run": once, "close": llm.close}


def _figures(t0: float, stamps: list[float]) -> dict:
    n = len(stamps)
    return {"tokens": n, "ttft_s": stamps[0] - t0, "decode_tps": (n - 1) / (stamps[-1] - stamps[0])}


def library(model, threads: int, tokens: int) -> dict:
    engine = Engine(model, EngineConfig(n_ctx=2048, n_threads=threads))

    def once() -> dict:
        engine.llm.reset()
        stamps = []
        t0 = time.perf_counter()
        engine.generate(PROMPT, Sampling(max_tokens=tokens), on_text=lambda _: stamps.append(time.perf_counter()))
        return _figures(t0, stamps)

    return {"run": once, "close": engine.close}


STATS_RE = re.compile(r"first token (\d+) ms \| (\d+) tok at ([\d.]+) tok/s")


def cli(threads: int, tokens: int) -> dict:
    """The real CLI in a subprocess, streaming to a pipe; figures from its --stats line."""

    def once() -> dict:
        done = subprocess.run(
            [
                EXE,
                "generate",
                PROMPT,
                "--prompt-style",
                "completion",
                "-n",
                str(tokens),
                "--threads",
                str(threads),
                "--ctx",
                "2048",
                "--stats",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=True,
        )
        m = STATS_RE.search(done.stderr)
        return {"tokens": int(m.group(2)), "ttft_s": int(m.group(1)) / 1000, "decode_tps": float(m.group(3))}

    return {"run": once, "close": lambda: None}


def startup(args: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([EXE, *args], capture_output=True, check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generate_overhead.json"))
    a = ap.parse_args()

    model = load_model(None)
    paths = {
        "raw llama-cpp-python (create_completion, stream)": raw_llama_cpp(str(model.path), a.threads, a.tokens),
        "assistant Engine.generate (library)": library(model, a.threads, a.tokens),
        "assistant generate (CLI, streaming)": cli(a.threads, a.tokens),
    }
    for p in paths.values():  # warm-up, not counted
        p["run"]()
    samples: dict[str, list[dict]] = {k: [] for k in paths}
    for _ in range(a.reps):
        for name, p in paths.items():
            samples[name].append(p["run"]())
    for p in paths.values():
        p["close"]()

    base = statistics.median(s["decode_tps"] for s in samples[next(iter(paths))])
    rows = []
    for name, runs in samples.items():
        tps = statistics.median(r["decode_tps"] for r in runs)
        rows.append(
            {
                "path": name,
                "tokens": runs[0]["tokens"],
                "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
                "decode_tps": tps,
                "ratio_to_raw": tps / base,
            }
        )
    start = {
        "assistant --help": startup(["--help"], 5),
        "assistant models path <default> (all of generate before model load)": startup(
            ["models", "path", model.name], 5
        ),
    }
    result = {
        "command": "python benchmarks/generate_overhead.py " + " ".join(sys.argv[1:]),
        "model": {"name": model.name, "sha256": model.sha256, "quantization": model.gguf.quantization},
        "threads": a.threads,
        "reps": a.reps,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "generation": rows,
        "startup_s": start,
    }
    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"generate overhead: {model.name}, {a.threads} threads, {a.tokens} tokens, median of {a.reps}")
    for col in ("path", "tokens", "TTFT ms", "decode tok/s", "ratio to raw"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["path"], str(r["tokens"]), f"{r['ttft_ms']:.0f}", f"{r['decode_tps']:.1f}", f"{r['ratio_to_raw']:.3f}"
        )
    s = Table(title="start-up (median of 5, wall clock)")
    s.add_column("command")
    s.add_column("seconds")
    for k, v in start.items():
        s.add_row(k, f"{v:.3f}")
    Console().print(t, s)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
