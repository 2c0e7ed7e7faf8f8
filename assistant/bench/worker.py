"""The bench worker: one model at one thread count in a fresh process, or the machine probe.

Run as ``python -m assistant.bench.worker --worker|--probe`` with a JSON spec on stdin; it
prints one result line (``RESULT_MARK`` + JSON) and imports nothing of the command line.

* Generation goes through ``Llama.generate`` (the path ``Engine`` uses) with greedy
  sampling, and we simply keep taking tokens: ``Llama.generate`` never stops on its own
  (end-of-generation handling is the Engine's), so every run yields exactly
  ``gen_tokens`` tokens whatever the model wants to say.
* The KV cache is cleared before each run, so no prompt cache flatters the figures.
* llama.cpp's own timers (``llama_perf_context`` after ``llama_synchronize``; they read
  zero before it) sit beside the wall clock, so the Python overhead is visible.
"""

from __future__ import annotations

import json
import sys
import time

from assistant.bench.config import one_line
from assistant.bench.corpus import code_prompt
from assistant.bench.machine import machine_record, peak_rss_bytes

RESULT_MARK = "BENCH-RESULT "  # the worker's JSON line on stdout; anything else there is noise


def _timed_generation(llm, lc, prompt: list[int], gen_tokens: int) -> dict:
    """One cold run: clear the KV cache, then take exactly ``gen_tokens`` greedy tokens."""
    ctx = llm._ctx.ctx
    llm.reset()  # n_tokens = 0: the next eval removes every KV position
    lc.llama_perf_context_reset(ctx)
    stamps: list[float] = []
    t0 = time.perf_counter()
    it = llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
    for _ in it:
        stamps.append(time.perf_counter())
        if len(stamps) == gen_tokens:
            break
    it.close()
    lc.llama_synchronize(ctx)  # the perf counters read zero until the context is synchronized
    perf = lc.llama_perf_context(ctx)
    return {
        "prompt_tokens": len(prompt),
        "generated_tokens": len(stamps),
        "decode_tokens": len(stamps) - 1,  # the first token comes from the prompt's logits
        "ttft_s": stamps[0] - t0,
        "decode_s": stamps[-1] - stamps[0],
        "llama_prompt_ms": perf.t_p_eval_ms,
        "llama_prompt_tokens": perf.n_p_eval if perf.t_p_eval_ms > 0 else 0,  # the getter reports at least 1
        "llama_decode_ms": perf.t_eval_ms,
        "llama_decode_tokens": perf.n_eval if perf.t_eval_ms > 0 else 0,
    }


def _first_token(llm, lc, prompt: list[int]) -> tuple[float, int]:
    """Seconds to the first token and how many tokens llama.cpp had to evaluate for it."""
    ctx = llm._ctx.ctx
    lc.llama_perf_context_reset(ctx)
    t0 = time.perf_counter()
    it = llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
    next(it)
    ttft = time.perf_counter() - t0
    it.close()
    lc.llama_synchronize(ctx)
    return ttft, _evaluated(lc.llama_perf_context(ctx))


def _evaluated(perf) -> int:
    """Tokens llama.cpp evaluated since the last reset. Its perf getter reports counts of
    at least 1 (to spare callers a division by zero), so a zero time means zero tokens."""
    return (perf.n_p_eval if perf.t_p_eval_ms > 0 else 0) + (perf.n_eval if perf.t_eval_ms > 0 else 0)


def _prompt_cache_runs(llm, lc, tokenize, head, spec: dict, files: list[str]) -> list[dict]:
    """A second request sharing a long prefix: with Llama.generate's KV-prefix reuse, and
    after a forced reset (the whole prompt again). A fresh prefix per repetition."""
    prefix_n, suffix_n = spec["cache_prefix"], spec["cache_suffix"]
    runs = []
    base = 10_000  # away from the files the speed runs used
    for i in range(spec["warmup"] + spec["reps"]):
        k = base + 3 * i
        prefix = code_prompt(tokenize, head, prefix_n, k, files)
        first = code_prompt(tokenize, [], suffix_n, k + 1, files, middle=True)
        second = code_prompt(tokenize, [], suffix_n, k + 2, files, middle=True)
        llm.reset()
        fresh_s, fresh_n = _first_token(llm, lc, prefix + second)
        llm.reset()
        _first_token(llm, lc, prefix + first)  # the earlier request that leaves the prefix in the KV cache
        reuse_s, reuse_n = _first_token(llm, lc, prefix + second)
        if i >= spec["warmup"]:
            runs.append(
                {"fresh_s": fresh_s, "fresh_evaluated": fresh_n, "reuse_s": reuse_s, "reuse_evaluated": reuse_n}
            )
    return runs


def worker(spec: dict) -> dict:
    """Load one model at one thread count in this (fresh) process and run every setting."""
    from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp

    lc = load_llama_cpp()

    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    try:
        llm = lc.Llama(
            model_path=spec["path"],
            n_ctx=spec["n_ctx"],
            n_batch=spec["n_ctx"],  # one decode call per prompt, so llama.cpp books it as prompt processing
            n_threads=spec["threads"],
            n_threads_batch=spec["threads"],
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        return {"status": "error", "error": f"llama.cpp could not load the model: {one_line(str(e))}"}
    load_s = time.perf_counter() - t0
    try:
        ctx = llm._ctx.ctx
        lc.llama_synchronize(ctx)
        llama_load_s = lc.llama_perf_context(ctx).t_load_ms / 1000
        head = llm.tokenize(b"", add_bos=True, special=False)  # [BOS] for models that want one, else []

        def tokenize(text: str) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

        files = spec["files"]
        settings, index = [], 0
        for n in spec["prompt_tokens"]:
            runs = []
            for i in range(spec["warmup"] + spec["reps"]):
                prompt = code_prompt(tokenize, head, n, index, files)
                index += 1
                run = _timed_generation(llm, lc, prompt, spec["gen_tokens"])
                if i >= spec["warmup"]:
                    runs.append(run)
            settings.append({"prompt_tokens": n, "runs": runs})
        cache = _prompt_cache_runs(llm, lc, tokenize, head, spec, files) if spec["cache_prefix"] else []
        peak = peak_rss_bytes()
    finally:
        llm.close()
    return {
        "status": "ok",
        "load_s": load_s,
        "llama_load_s": llama_load_s,
        "rss_before_load_bytes": rss_before,
        "peak_rss_bytes": peak,
        "settings": settings,
        "cache_runs": cache,
    }


def main(mode: str) -> int:
    """`python -m assistant.bench.worker --worker|--probe`: JSON spec on stdin, one result line out."""
    spec = json.loads(sys.stdin.read() or "{}")
    try:
        if mode == "--probe":
            result = {"status": "ok", **machine_record(spec["bandwidth_bytes"], spec["bandwidth_reps"])}
        else:
            result = worker(spec)
    except Exception as e:  # report, never traceback: the parent turns this into the row's error
        result = {"status": "error", "error": f"{type(e).__name__}: {one_line(str(e))[:300]}"}
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("--worker", "--probe"):
        sys.exit("usage: python -m assistant.bench.worker --worker|--probe < spec.json (run by `assistant bench`)")
    sys.exit(main(sys.argv[1]))
