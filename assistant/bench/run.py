"""`assistant bench`: load time, time to first token, prompt and decode speed, memory,
and how close decode gets to the machine's memory-bandwidth ceiling.

Why it is built this way:

* Every (model, threads) pair runs in a fresh ``python -m assistant.bench.worker --worker``
  process, so load time and peak memory are that model's alone, and a model that fails
  to load (or crashes llama.cpp) becomes an error row instead of ending the run.
* Prompts are slices of real standard-library source, a different file per repetition,
  tokenized by the model under test and cut to exactly the requested token count.
* The machine is measured once, in its own process (``--probe``), and the load other
  processes put on it is recorded beside every worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

from assistant.bench.config import GIB, BenchConfig, command_line
from assistant.bench.corpus import code_files
from assistant.bench.machine import load_average, measure_others
from assistant.bench.summary import BenchRow, BenchRun, CacheRow, summarize
from assistant.bench.targets import check_context, select_targets
from assistant.bench.worker import RESULT_MARK
from assistant.store.lockfile import load_lock
from assistant.store.resolve import HashCache

Progress = Callable[[str], None]


def parse_worker_output(returncode: int, stdout: str, stderr: str) -> dict:
    """The worker's result line, or an error that says how the process ended."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                return json.loads(line[len(RESULT_MARK) :])
            except ValueError:
                break
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    tail = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    detail = f": {tail[-1][:300]}" if tail else ""
    return {"status": "error", "error": f"benchmark process failed ({how}){detail}"}


def _subprocess(args: list[str], payload: dict, timeout_s: float) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so a checkout works without an install
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "assistant.bench.worker", *args],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"benchmark process timed out after {timeout_s:.0f} s"}
    return parse_worker_output(done.returncode, done.stdout, done.stderr)


def run_bench(cfg: BenchConfig, on_progress: Progress | None = None, cache: HashCache | None = None) -> BenchRun:
    """Validate, resolve the models, measure the machine once, then one worker per (model, threads)."""
    cfg.validate()
    say = on_progress or (lambda _msg: None)
    lock = load_lock(cfg.lock)
    cache = cache or HashCache()
    targets = select_targets(cfg.models, lock, cache)
    check_context(targets, cfg)
    threads = cfg.resolved_threads()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    say(f"measuring memory bandwidth ({cfg.bandwidth_bytes / GIB:g} GiB copy, best of {cfg.bandwidth_reps})")
    machine = _subprocess(
        ["--probe"], {"bandwidth_bytes": cfg.bandwidth_bytes, "bandwidth_reps": cfg.bandwidth_reps}, cfg.timeout_s
    )
    bandwidth = machine.get("bandwidth_bytes_per_s") if machine.get("status") == "ok" else None
    files = code_files()
    rows: list[BenchRow] = []
    caches: list[CacheRow] = []
    for target in targets:
        for n_threads in threads:
            t0 = time.perf_counter()
            if target.model is None:
                result: dict = {"status": "error", "error": target.error}
            else:
                spec = {
                    "path": str(target.model.path),
                    "n_ctx": cfg.n_ctx(),
                    "threads": n_threads,
                    "prompt_tokens": list(cfg.prompt_tokens),
                    "gen_tokens": cfg.gen_tokens,
                    "reps": cfg.reps,
                    "warmup": cfg.warmup,
                    "cache_prefix": cfg.resolved_cache_prefix(),
                    "cache_suffix": cfg.cache_suffix,
                    "files": files,
                }
                say(f"{target.name}: {n_threads} thread(s) ...")
                result, others = measure_others(partial(_subprocess, ["--worker"], spec, cfg.timeout_s))
                result = {**result, "other_load_cores": others}
            new_rows, cache_row = summarize(target, n_threads, cfg, result, bandwidth)
            rows += new_rows
            if cache_row is not None:
                caches.append(cache_row)
            status = "ok" if result.get("status") == "ok" else f"error: {result.get('error')}"
            say(f"{target.name}: {n_threads} thread(s) {status} ({time.perf_counter() - t0:.1f} s)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config.update(
        threads=list(threads),
        models=[t.name for t in targets],
        n_ctx=cfg.n_ctx(),
        cache_prefix=cfg.resolved_cache_prefix(),
        prompt_corpus={"root": str(Path(files[0]).parent), "files": len(files)},
    )
    return BenchRun(
        command_line(cfg), started, config, machine, rows, caches, {"before": load_before, "after": load_average()}
    )
