"""`assistant bench`: load time, time to first token, prompt and decode speed, memory,
and how close decode gets to the machine's memory-bandwidth ceiling.

Why it is built this way:

* Every (model, threads) pair runs in a fresh ``python -m assistant.bench --worker``
  process, so load time and peak memory are that model's alone, and a model that fails
  to load (or crashes llama.cpp) becomes an error row instead of ending the run.
* Peak memory is ``VmHWM`` from /proc on Linux, not ``ru_maxrss``: after fork/vfork+exec
  Linux carries the parent's peak into the child's ``ru_maxrss`` (measured: a parent that
  once held 2 GiB made every child report 2 GiB), so ``ru_maxrss`` is only the fallback
  elsewhere. The memory-bandwidth copy also runs in its own process for the same reason.
* Generation goes through ``Llama.generate`` (the path ``Engine`` uses) with greedy
  sampling, and we simply keep taking tokens: ``Llama.generate`` never stops on its own
  (end-of-generation handling is the Engine's), so every run yields exactly
  ``gen_tokens`` tokens whatever the model wants to say.
* Prompts are slices of real standard-library source, a different file per repetition,
  tokenized by the model under test and cut to exactly the requested token count; the
  KV cache is cleared before each run, so no prompt cache flatters the figures.
* llama.cpp's own timers (``llama_perf_context`` after ``llama_synchronize``; they read
  zero before it) sit beside the wall clock, so the Python overhead is visible.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from assistant import plots
from assistant.atomic import atomic_write_bytes, atomic_write_text
from assistant.errors import AssistantError, UsageError
from assistant.store.gguf_file import GGUFInfo
from assistant.runtime.hardware import physical_cores
from assistant.store.lockfile import Lock, load_lock
from assistant.store.resolve import HashCache, ModelError, ResolvedModel, locate, resolve

SCHEMA = "assistant.bench/1"
GIB = 1 << 30
KV_TYPE_BYTES = 2  # llama.cpp's default KV cache type is F16
RESULT_MARK = "BENCH-RESULT "  # the worker's JSON line on stdout; anything else there is noise
Progress = Callable[[str], None]


class BenchError(AssistantError):
    """A benchmark could not be set up or its output could not be written."""


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = ()  # lock names or .gguf paths; () = default + every present lock entry
    threads: tuple[int, ...] = ()  # () = physical cores
    prompt_tokens: tuple[int, ...] = (128, 512)
    gen_tokens: int = 128
    reps: int = 5
    warmup: int = 1
    cache_prefix: int | None = None  # shared-prefix length of the prompt-cache test; None = max(prompt_tokens), 0 = skip
    cache_suffix: int = 16  # tokens after the shared prefix that differ between the two requests
    bandwidth_bytes: int = GIB
    bandwidth_reps: int = 5
    lock: Path | None = None
    timeout_s: float = 3600.0  # per worker process

    def resolved_threads(self) -> tuple[int, ...]:
        return self.threads or (physical_cores(),)

    def resolved_cache_prefix(self) -> int:
        return max(self.prompt_tokens) if self.cache_prefix is None else self.cache_prefix

    def n_ctx(self) -> int:
        """The context each worker allocates: room for the longest run and the cache test."""
        need = max(self.prompt_tokens) + self.gen_tokens
        prefix = self.resolved_cache_prefix()
        if prefix:
            need = max(need, prefix + self.cache_suffix + 1)
        return need

    def validate(self) -> None:
        """Reject impossible settings before any model is loaded."""
        if not self.prompt_tokens:
            raise UsageError("--prompt-tokens needs at least one value", hint="e.g. --prompt-tokens 128,512")
        if any(t < 1 for t in self.threads):
            raise UsageError(f"--threads must be 1 or more, not {min(self.threads)}", hint="e.g. --threads 1,2,4")
        if min(self.prompt_tokens) < 2:
            raise UsageError(
                f"--prompt-tokens must be 2 or more, not {min(self.prompt_tokens)}",
                hint="a one-token prompt is decode, not prompt processing",
            )
        if self.gen_tokens < 2:
            raise UsageError(f"--gen-tokens must be 2 or more, not {self.gen_tokens}", hint="decode speed needs at least two tokens")
        if self.reps < 1:
            raise UsageError(f"--reps must be 1 or more, not {self.reps}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, not {self.warmup}")
        if self.cache_prefix is not None and self.cache_prefix < 0:
            raise UsageError(f"--cache-prefix must be 0 or more, not {self.cache_prefix}", hint="0 skips the prompt-cache test")
        if self.cache_suffix < 1 or self.bandwidth_bytes < (1 << 20) or self.bandwidth_reps < 1:
            raise UsageError("cache_suffix, bandwidth_bytes (>= 1 MiB) and bandwidth_reps must be positive")


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), in the user's order, duplicates dropped."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"{option} must be comma-separated integers, not {text!r}", hint=f"e.g. {option} 1,2") from None
        if value not in values:
            values.append(value)
    if not values:
        raise UsageError(f"{option} needs at least one value", hint=f"e.g. {option} 1,2")
    return tuple(values)


def command_line(cfg: BenchConfig) -> str:
    """The `assistant bench` invocation equivalent to ``cfg`` (recorded in every result)."""
    parts = ["assistant", "bench", *cfg.models]
    parts += ["--threads", ",".join(map(str, cfg.resolved_threads()))]
    parts += ["--prompt-tokens", ",".join(map(str, cfg.prompt_tokens))]
    parts += ["--gen-tokens", str(cfg.gen_tokens), "--reps", str(cfg.reps), "--warmup", str(cfg.warmup)]
    if cfg.cache_prefix is not None:
        parts += ["--cache-prefix", str(cfg.cache_prefix)]
    return " ".join(parts)


# -- models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One model to benchmark, or why it cannot be (reported in its rows)."""

    name: str
    model: ResolvedModel | None
    error: str | None = None


def select_targets(names: Sequence[str], lock: Lock, cache: HashCache) -> list[Target]:
    """Named models, or the default plus every lock entry whose file is present.

    An unknown name or a path that does not exist is a usage error (raised); a model that
    exists but does not verify or parse becomes a Target with an error, so the others run.
    """
    if not names:
        names = [lock.default]
        for entry in lock.models:
            try:
                present = locate(entry, lock).is_file()
            except ModelError:
                present = False
            if present and entry.name not in names:
                names.append(entry.name)
    for name in names:
        if lock.find(name) is None and not Path(name).expanduser().exists():
            resolve(name, lock, cache, offline=True)  # raises "unknown model ..." or "not found"
            raise UsageError(f"unknown model {name!r}")  # pragma: no cover - resolve always raises here
    targets: list[Target] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            targets.append(Target(name, resolve(name, lock, cache, offline=True)))
        except AssistantError as e:
            targets.append(Target(name, None, _one_line(str(e))))
    return targets


def check_context(targets: Sequence[Target], cfg: BenchConfig) -> None:
    """Every loadable model must hold the longest prompt plus the generated tokens."""
    need = cfg.n_ctx()
    if need == max(cfg.prompt_tokens) + cfg.gen_tokens:
        why = f"--prompt-tokens {max(cfg.prompt_tokens)} + --gen-tokens {cfg.gen_tokens}"
        fix = "lower --prompt-tokens or --gen-tokens"
    else:
        why = f"--cache-prefix {cfg.resolved_cache_prefix()} + {cfg.cache_suffix} differing tokens + 1"
        fix = "lower --cache-prefix"
    for t in targets:
        if t.model is None:
            continue
        limit = t.model.context_length
        if need > limit:
            raise UsageError(f"{t.name} has a {limit}-token context but the run needs {need} ({why})", hint=f"{fix} to fit {limit}")


@dataclass(frozen=True)
class ModelCost:
    """Bytes that must come from memory for one decoded token (the roofline's numerator)."""

    weight_bytes: int  # every weight matrix once; of an untied input embedding only one row
    kv_bytes_per_position: int | None  # K and V of one context position over all layers

    def bytes_per_token(self, context: float) -> float:
        return self.weight_bytes + (self.kv_bytes_per_position or 0) * context


def _arch_int(info: GGUFInfo, key: str) -> int | None:
    value = info.arch_value(key)
    if isinstance(value, list):  # per-layer values (some architectures): take the largest
        value = max(value) if value else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_cost(info: GGUFInfo) -> ModelCost:
    """From the GGUF tensor table; the input embedding is a row lookup unless it is tied."""
    sizes = {t.name: t.n_bytes for t in info.tensors}
    if any(v is None for v in sizes.values()) or not sizes:
        weights = info.file_size - info.data_offset  # a tensor type we cannot size: use the data section
    else:
        weights = sum(v for v in sizes.values() if v is not None)
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        if embd is not None and "output.weight" in sizes and len(embd.shape) == 2:
            weights -= sizes["token_embd.weight"] or 0
            weights += (sizes["token_embd.weight"] or 0) // max(embd.shape[1], 1)  # one row per token
    layers = _arch_int(info, "block_count")
    heads = _arch_int(info, "attention.head_count")
    kv_heads = _arch_int(info, "attention.head_count_kv") or heads
    width = _arch_int(info, "embedding_length")
    kv = None
    if layers and heads and kv_heads and width:
        k_dim = _arch_int(info, "attention.key_length") or width // heads
        v_dim = _arch_int(info, "attention.value_length") or width // heads
        kv = layers * kv_heads * (k_dim + v_dim) * KV_TYPE_BYTES
    return ModelCost(int(weights), kv)


# -- prompts ----------------------------------------------------------------------------------


def code_files(min_bytes: int = 16_000) -> list[str]:
    """Real Python source to cut prompts from: the interpreter's standard library (sorted,
    so every worker and every machine with this Python sees the same files)."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    files = [p for p in sorted(stdlib.glob("*.py")) if p.is_file() and p.stat().st_size >= min_bytes]
    if len(files) < 8:  # a zipped or stripped stdlib: fall back to this package's own source
        files = sorted(p for p in Path(__file__).resolve().parents[1].rglob("*.py") if p.stat().st_size >= 2_000)
    if not files:
        raise BenchError("no Python source found to build benchmark prompts from", hint="run with a standard CPython install")
    return [str(p) for p in files]


def _middle(text: str) -> str:
    """The text from the first line break past the middle: code, not a module docstring."""
    cut = text.find("\n", len(text) // 2)
    return text[cut + 1 :] if cut >= 0 else text


def code_prompt(
    tokenize: Callable[[str], list[int]],
    head: Sequence[int],
    n: int,
    index: int,
    files: Sequence[str],
    *,
    middle: bool = False,
) -> list[int]:
    """Exactly ``n`` tokens: ``head`` (BOS, if the model wants one) then source of file
    ``index`` (wrapping through the list), continuing into the next file if it is short."""
    tokens = list(head)[:n]
    i = index
    while len(tokens) < n:
        if i - index >= len(files):
            raise BenchError(f"the prompt corpus has fewer than {n} tokens", hint="lower --prompt-tokens")
        text = Path(files[i % len(files)]).read_text(encoding="utf-8", errors="replace")
        if middle:
            text = _middle(text)
        want = n - len(tokens)
        chars = want * 6 + 256
        while True:
            piece = tokenize(text[:chars])
            if len(piece) >= want or chars >= len(text):
                break
            chars *= 2
        tokens += piece[:want]
        i += 1
    return tokens


# -- measurement helpers (run inside the worker and probe processes) ----------------------------


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory: VmHWM on Linux (see the module docstring)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure_bandwidth(n_bytes: int = GIB, reps: int = 5) -> float:
    """Memory bandwidth in bytes/s: the best of ``reps`` numpy copies of ``n_bytes``,
    counting bytes read plus bytes written (STREAM's convention for copy)."""
    import numpy as np

    src = np.ones(n_bytes // 8, dtype=np.float64)  # ones, not empty: every page is touched before timing
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def power_source(root: Path = Path("/sys/class/power_supply"), system: str | None = None) -> str:
    """'battery', 'ac' or 'unknown', from what the OS says (battery runs are throttled)."""
    system = system or platform.system()
    if system == "Darwin":
        try:
            out = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if "Battery Power" in out:
            return "battery"
        return "ac" if "AC Power" in out else "unknown"
    if system != "Linux":
        return "unknown"
    try:
        supplies = list(root.iterdir())
    except OSError:
        return "unknown"

    def read(p: Path, name: str) -> str:
        try:
            return (p / name).read_text().strip()
        except OSError:
            return ""

    batteries = [p for p in supplies if read(p, "type") == "Battery"]
    mains = [p for p in supplies if read(p, "type") in ("Mains", "USB", "USB_C", "USB_PD")]
    if any(read(p, "status") == "Discharging" for p in batteries):
        return "battery"
    if any(read(p, "online") == "1" for p in mains) or batteries:
        return "ac"
    return "unknown"


def simd_flags(system_info: str) -> list[str]:
    """The features llama.cpp reports as on ('AVX2 = 1 | ...') in its system info."""
    flags = []
    for part in system_info.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1" and name.strip():
            flags.append(name.strip())
    return flags


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if platform.system() == "Darwin":
        try:
            return int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5).stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_record(n_bytes: int, reps: int) -> dict:
    """CPU, cores, SIMD flags as llama.cpp sees them, memory, OS, versions, power, bandwidth."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    bandwidth = measure_bandwidth(n_bytes, reps)
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpus_available": affinity,
        "simd": simd_flags(info),
        "llama_system_info": info,
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "power": power_source(),
        "versions": {
            "python": platform.python_version(),
            "llama_cpp_python": _version("llama_cpp_python") or getattr(llama_cpp, "__version__", None),
            "numpy": _version("numpy"),
            "local_code_assistant": _version("local-code-assistant"),
        },
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_gib_s": bandwidth / GIB,
        "bandwidth_method": f"best of {reps} numpy copies of {n_bytes / GIB:g} GiB, bytes read + written",
    }


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
            runs.append({"fresh_s": fresh_s, "fresh_evaluated": fresh_n, "reuse_s": reuse_s, "reuse_evaluated": reuse_n})
    return runs


def worker(spec: dict) -> dict:
    """Load one model at one thread count in this (fresh) process and run every setting."""
    import llama_cpp as lc

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
        return {"status": "error", "error": f"llama.cpp could not load the model: {_one_line(str(e))}"}
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
            [sys.executable, "-m", "assistant.bench", *args],
            input=json.dumps(payload), capture_output=True, text=True, timeout=timeout_s, env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"benchmark process timed out after {timeout_s:.0f} s"}
    return parse_worker_output(done.returncode, done.stdout, done.stderr)


def _worker_main(mode: str) -> int:
    """`python -m assistant.bench --worker|--probe`: JSON spec on stdin, one result line out."""
    spec = json.loads(sys.stdin.read() or "{}")
    try:
        if mode == "--probe":
            result = {"status": "ok", **machine_record(spec["bandwidth_bytes"], spec["bandwidth_reps"])}
        else:
            result = worker(spec)
    except Exception as e:  # report, never traceback: the parent turns this into the row's error
        result = {"status": "error", "error": f"{type(e).__name__}: {_one_line(str(e))[:300]}"}
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# -- results ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class BenchRow:
    """One model at one thread count and one prompt length."""

    model: str
    threads: int
    prompt_tokens: int
    gen_tokens: int
    status: str = "ok"
    error: str | None = None
    path: str | None = None
    sha256: str | None = None
    quantization: str | None = None
    file_size: int | None = None
    parameters: int | None = None
    reps: int = 0
    warmup: int = 0
    n_ctx: int | None = None
    load_s: float | None = None
    llama_load_s: float | None = None
    peak_rss_bytes: int | None = None
    rss_before_load_bytes: int | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    prompt_tps_mean: float | None = None
    prompt_tps_sd: float | None = None
    decode_tps_mean: float | None = None
    decode_tps_sd: float | None = None
    decode_s_mean: float | None = None
    decode_tokens: int | None = None
    llama_prompt_tps_mean: float | None = None
    llama_decode_tps_mean: float | None = None
    decode_overhead: float | None = None  # share of wall-clock decode time outside llama.cpp's timer
    weight_bytes_per_token: int | None = None
    kv_bytes_per_token: float | None = None  # at the mean context position of the decode
    bytes_per_token: float | None = None
    ceiling_tps: float | None = None
    ceiling_share: float | None = None
    other_load_cores: float | None = None  # cores other processes kept busy while this worker ran
    runs: list[dict] = field(default_factory=list)


@dataclass
class CacheRow:
    """TTFT of a request sharing a long prefix with the previous one, with and without reuse."""

    model: str
    threads: int
    prefix_tokens: int
    suffix_tokens: int
    status: str = "ok"
    error: str | None = None
    reps: int = 0
    ttft_fresh_p50_s: float | None = None
    ttft_reuse_p50_s: float | None = None
    speedup: float | None = None
    fresh_evaluated_tokens: int | None = None
    reuse_evaluated_tokens: int | None = None
    runs: list[dict] = field(default_factory=list)


@dataclass
class BenchRun:
    command: str
    started: str
    config: dict
    machine: dict
    rows: list[BenchRow]
    prompt_cache: list[CacheRow]
    load_average: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "started": self.started,
            "config": self.config,
            "machine": self.machine,
            "load_average": self.load_average,
            "rows": [asdict(r) for r in self.rows],
            "prompt_cache": [asdict(r) for r in self.prompt_cache],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BenchRun":
        """A saved run back (to print or re-render it, e.g. as Markdown for the docs)."""
        return cls(
            d["command"], d["started"], d["config"], d["machine"],
            [BenchRow(**r) for r in d["rows"]], [CacheRow(**c) for c in d["prompt_cache"]], d.get("load_average", {}),
        )


def _model_fields(target: Target) -> dict:
    m = target.model
    if m is None:
        return {}
    return {
        "path": str(m.path),
        "sha256": m.sha256,
        "quantization": m.gguf.quantization,
        "file_size": m.gguf.file_size,
        "parameters": m.gguf.n_params,
    }


def summarize(
    target: Target, threads: int, cfg: BenchConfig, result: dict, bandwidth: float | None
) -> tuple[list[BenchRow], CacheRow | None]:
    """Rows for one worker result: figures per prompt length, or the error in each row."""
    base = _model_fields(target)
    prefix = cfg.resolved_cache_prefix()
    if result.get("status") != "ok":
        error = result.get("error") or "failed"
        rows = [
            BenchRow(target.name, threads, n, cfg.gen_tokens, status="error", error=error, **base)
            for n in cfg.prompt_tokens
        ]
        cache = CacheRow(target.name, threads, prefix, cfg.cache_suffix, status="error", error=error) if prefix else None
        return rows, cache
    cost = model_cost(target.model.gguf) if target.model else None
    rows = []
    for setting in result["settings"]:
        runs = setting["runs"]
        n = setting["prompt_tokens"]
        ttft = [r["ttft_s"] for r in runs]
        prompt_tps = [r["prompt_tokens"] / r["ttft_s"] for r in runs]
        decode_tps = [r["decode_tokens"] / r["decode_s"] for r in runs]
        llama_prompt = [r["llama_prompt_tokens"] / (r["llama_prompt_ms"] / 1000) for r in runs if r["llama_prompt_ms"] > 0]
        llama_decode = [r["llama_decode_tokens"] / (r["llama_decode_ms"] / 1000) for r in runs if r["llama_decode_ms"] > 0]
        wall_decode = sum(r["decode_s"] for r in runs)
        llama_decode_s = sum(r["llama_decode_ms"] for r in runs) / 1000
        row = BenchRow(
            target.name, threads, n, cfg.gen_tokens, reps=len(runs), warmup=cfg.warmup, n_ctx=cfg.n_ctx(),
            load_s=result["load_s"], llama_load_s=result.get("llama_load_s"),
            peak_rss_bytes=result.get("peak_rss_bytes"), rss_before_load_bytes=result.get("rss_before_load_bytes"),
            other_load_cores=result.get("other_load_cores"),
            ttft_p50_s=percentile(ttft, 50), ttft_p90_s=percentile(ttft, 90),
            decode_s_mean=statistics.fmean(r["decode_s"] for r in runs), decode_tokens=runs[0]["decode_tokens"],
            llama_prompt_tps_mean=statistics.fmean(llama_prompt) if llama_prompt else None,
            llama_decode_tps_mean=statistics.fmean(llama_decode) if llama_decode else None,
            decode_overhead=1 - llama_decode_s / wall_decode if wall_decode > 0 and llama_decode_s > 0 else None,
            runs=runs, **base,
        )
        row.prompt_tps_mean, row.prompt_tps_sd = _mean_sd(prompt_tps)
        row.decode_tps_mean, row.decode_tps_sd = _mean_sd(decode_tps)
        if cost is not None:
            context = n + cfg.gen_tokens / 2  # mean number of positions attended during decode
            row.weight_bytes_per_token = cost.weight_bytes
            row.kv_bytes_per_token = (cost.kv_bytes_per_position or 0) * context
            row.bytes_per_token = cost.bytes_per_token(context)
            if bandwidth:
                row.ceiling_tps = bandwidth / row.bytes_per_token
                row.ceiling_share = row.decode_tps_mean / row.ceiling_tps
        rows.append(row)
    cache = None
    if prefix:
        cruns = result.get("cache_runs") or []
        cache = CacheRow(target.name, threads, prefix, cfg.cache_suffix, reps=len(cruns), runs=cruns)
        if cruns:
            cache.ttft_fresh_p50_s = percentile([r["fresh_s"] for r in cruns], 50)
            cache.ttft_reuse_p50_s = percentile([r["reuse_s"] for r in cruns], 50)
            cache.speedup = cache.ttft_fresh_p50_s / cache.ttft_reuse_p50_s if cache.ttft_reuse_p50_s else None
            cache.fresh_evaluated_tokens = int(statistics.median(r["fresh_evaluated"] for r in cruns))
            cache.reuse_evaluated_tokens = int(statistics.median(r["reuse_evaluated"] for r in cruns))
    return rows, cache


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), else None."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / hz


def _children_cpu_s() -> float:
    try:
        import resource
    except ImportError:
        return 0.0
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_others(run: Callable[[], dict]) -> tuple[dict, float | None]:
    """Run ``run`` (a worker) and return its result and the cores other processes kept busy
    meanwhile: the machine's busy CPU time minus our child's, over the wall time. A shared
    machine disturbs the figures; this says how much, so a run can be judged or repeated."""
    busy0, child0, t0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    result = run()
    busy1, child1, wall = _busy_cpu_s(), _children_cpu_s(), time.perf_counter() - t0
    if busy0 is None or busy1 is None or wall <= 0:
        return result, None
    return result, max(0.0, (busy1 - busy0) - (child1 - child0)) / wall


DISTURBED_CORES = 0.25  # others' average load above which a row is flagged


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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
    load_before = _load_average()
    say(f"measuring memory bandwidth ({cfg.bandwidth_bytes / GIB:g} GiB copy, best of {cfg.bandwidth_reps})")
    machine = _subprocess(["--probe"], {"bandwidth_bytes": cfg.bandwidth_bytes, "bandwidth_reps": cfg.bandwidth_reps}, cfg.timeout_s)
    bandwidth = machine.get("bandwidth_bytes_per_s") if machine.get("status") == "ok" else None
    files = code_files()
    rows: list[BenchRow] = []
    caches: list[CacheRow] = []
    for target in targets:
        for n_threads in threads:
            t0 = time.perf_counter()
            if target.model is None:
                result = {"status": "error", "error": target.error}
            else:
                spec = {
                    "path": str(target.model.path), "n_ctx": cfg.n_ctx(), "threads": n_threads,
                    "prompt_tokens": list(cfg.prompt_tokens), "gen_tokens": cfg.gen_tokens, "reps": cfg.reps,
                    "warmup": cfg.warmup, "cache_prefix": cfg.resolved_cache_prefix(), "cache_suffix": cfg.cache_suffix,
                    "files": files,
                }
                say(f"{target.name}: {n_threads} thread(s) ...")
                result, others = measure_others(lambda: _subprocess(["--worker"], spec, cfg.timeout_s))
                result = {**result, "other_load_cores": others}
            new_rows, cache_row = summarize(target, n_threads, cfg, result, bandwidth)
            rows += new_rows
            if cache_row is not None:
                caches.append(cache_row)
            status = "ok" if result.get("status") == "ok" else f"error: {result.get('error')}"
            say(f"{target.name}: {n_threads} thread(s) {status} ({time.perf_counter() - t0:.1f} s)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config.update(threads=list(threads), models=[t.name for t in targets], n_ctx=cfg.n_ctx(),
                  cache_prefix=cfg.resolved_cache_prefix(),
                  prompt_corpus={"root": str(Path(files[0]).parent), "files": len(files)})
    return BenchRun(command_line(cfg), started, config, machine, rows, caches,
                    {"before": load_before, "after": _load_average()})


# -- output -------------------------------------------------------------------------------------

CSV_EXCLUDE = {"runs"}


def to_csv(run: BenchRun) -> str:
    """One line per (model, threads, prompt tokens); per-repetition runs stay in the JSON."""
    names = [f.name for f in fields(BenchRow) if f.name not in CSV_EXCLUDE]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for r in run.rows:
        d = asdict(r)
        w.writerow({k: ("" if d[k] is None else d[k]) for k in names})
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise BenchError(f"cannot write {path}: {e.strerror or e}", hint="choose a writable path") from None


def require_matplotlib() -> None:
    plots.require_matplotlib(BenchError)


def plot_png(run: BenchRun) -> bytes:
    """Decode tokens/s (± sd) and TTFT p50 against thread count, one line per model and prompt length."""
    plt = plots.pyplot(BenchError)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series: dict[tuple[str, int], list[BenchRow]] = {}
    for r in run.rows:
        if r.status == "ok":
            series.setdefault((r.model, r.prompt_tokens), []).append(r)
    for (model, n), rs in series.items():
        rs = sorted(rs, key=lambda r: r.threads)
        x = [r.threads for r in rs]
        label = f"{model} ({n}-token prompt)"
        ax1.errorbar(x, [r.decode_tps_mean for r in rs], yerr=[r.decode_tps_sd for r in rs], marker="o", capsize=3, label=label)
        ax2.plot(x, [1000 * r.ttft_p50_s for r in rs], marker="o", label=label)
    threads = sorted({r.threads for r in run.rows})
    for ax, title, ylabel in (
        (ax1, "decode speed (mean ± sd)", "tokens/s"),
        (ax2, "time to first token (p50)", "ms"),
    ):
        ax.set_title(title)
        ax.set_xlabel("threads")
        ax.set_ylabel(ylabel)
        ax.set_xticks(threads)
        ax.grid(alpha=0.3)
    if series:
        ax1.legend(fontsize=7)
    else:
        ax1.text(0.5, 0.5, "no successful runs", ha="center", transform=ax1.transAxes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_plot(run: BenchRun, path: Path) -> None:
    data = plot_png(run)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise BenchError(f"cannot write {path}: {e.strerror or e}", hint="choose a writable path") from None


RATIO_FIGURES = (
    "load_s", "ttft_p50_s", "ttft_p90_s", "prompt_tps_mean", "decode_tps_mean",
    "llama_decode_tps_mean", "peak_rss_bytes", "ceiling_share",
)


def load_baseline(path: Path) -> dict:
    """A saved JSON run (``--json`` or ``--out``); checked now so a bad file fails before the run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"baseline file not found: {path}", hint="save a run first with `assistant bench --out FILE`") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"baseline {path} is not a readable JSON run: {e}", hint="pass a file written by `assistant bench --out`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("rows"), list):
        raise BenchError(f"baseline {path} is not an `assistant bench` result ({SCHEMA})", hint="pass a file written by `assistant bench --out`")
    return data


def baseline_ratios(run: BenchRun | dict, baseline: dict) -> list[dict]:
    """current ÷ baseline for each figure of each (model, threads, prompt tokens) in both runs."""
    current = run.to_dict() if isinstance(run, BenchRun) else run
    key = lambda r: (r["model"], r["threads"], r["prompt_tokens"])  # noqa: E731
    old = {key(r): r for r in baseline["rows"] if r.get("status") == "ok"}
    out = []
    for r in current["rows"]:
        b = old.get(key(r))
        if r.get("status") != "ok" or b is None:
            continue
        ratios = {}
        for f in RATIO_FIGURES:
            x, y = r.get(f), b.get(f)
            ratios[f] = x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None
        out.append({"model": r["model"], "threads": r["threads"], "prompt_tokens": r["prompt_tokens"], **ratios})
    return out


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f}"


def _f(x: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x * scale, fmt) + suffix


SPEED_HEADERS = (
    "model", "quant", "thr", "prompt", "load s", "TTFT p50 / p90 ms", "prompt tok/s", "decode tok/s",
    "llama.cpp decode tok/s (python %)", "peak RSS MB", "ceiling tok/s", "share",
)
CACHE_HEADERS = ("model", "thr", "prefix + suffix", "fresh ms", "reused ms", "speedup", "tokens evaluated fresh / reused")


def speed_cells(r: BenchRow) -> list[str]:
    """One row of the speed table as text (shared by the terminal and Markdown views)."""
    head = [r.model, r.quantization or "-", str(r.threads), str(r.prompt_tokens)]
    if r.status != "ok":
        return head + ["error (below)"] + [""] * (len(SPEED_HEADERS) - len(head) - 1)
    return head + [
        _f(r.load_s, ".2f"),
        f"{_f(r.ttft_p50_s, '.0f', 1000)} / {_f(r.ttft_p90_s, '.0f', 1000)}",
        f"{_f(r.prompt_tps_mean, '.0f')} ± {_f(r.prompt_tps_sd, '.0f')}",
        f"{_f(r.decode_tps_mean, '.1f')} ± {_f(r.decode_tps_sd, '.1f')}",
        f"{_f(r.llama_decode_tps_mean, '.1f')} ({_f(r.decode_overhead, '.1f', 100, '%')})",
        _mb(r.peak_rss_bytes),
        _f(r.ceiling_tps, ".0f"),
        _f(r.ceiling_share, ".0f", 100, "%"),
    ]


def cache_cells(r: CacheRow) -> list[str]:
    head = [r.model, str(r.threads), f"{r.prefix_tokens} + {r.suffix_tokens}"]
    if r.status != "ok" or r.ttft_reuse_p50_s is None:
        return head + ["error (below)", "", "", ""]
    return head + [
        _f(r.ttft_fresh_p50_s, ".0f", 1000), _f(r.ttft_reuse_p50_s, ".0f", 1000), _f(r.speedup, ".1f", 1, "x"),
        f"{r.fresh_evaluated_tokens} / {r.reuse_evaluated_tokens}",
    ]


def disturbed_lines(run: BenchRun) -> list[str]:
    """Which (model, threads) ran while other processes kept the CPU busy."""
    seen: dict[tuple[str, int], str] = {}
    for r in run.rows:
        if r.other_load_cores is not None and r.other_load_cores > DISTURBED_CORES:
            seen.setdefault(
                (r.model, r.threads),
                f"{r.model} at {r.threads} thread(s) ran while other processes kept {r.other_load_cores:.1f} of "
                f"{run.machine.get('logical_cpus', '?')} CPUs busy: its figures are disturbed; re-run on a quiet machine",
            )
    return list(seen.values())


def error_lines(run: BenchRun) -> list[str]:
    """Each failing model's message once (a row per setting would repeat it)."""
    seen: dict[str, str] = {}
    for r in [*run.rows, *run.prompt_cache]:
        if r.status != "ok" and r.model not in seen:
            seen[r.model] = f"{r.model}: {r.error}"
    return list(seen.values())


RATIO_LABELS = {
    "load_s": "load", "ttft_p50_s": "TTFT p50", "ttft_p90_s": "TTFT p90", "prompt_tps_mean": "prompt tok/s",
    "decode_tps_mean": "decode tok/s", "llama_decode_tps_mean": "llama.cpp decode", "peak_rss_bytes": "peak RSS",
    "ceiling_share": "ceiling share",
}


def machine_line(run: BenchRun) -> str:
    m = run.machine
    if m.get("status") != "ok":
        return f"machine probe failed ({m.get('error')}): no bandwidth ceiling"
    mem = m.get("memory_bytes")
    v = m.get("versions", {})
    return (
        f"{m['cpu']}, {m['physical_cores']} cores / {m['logical_cpus']} logical ({m['cpus_available']} available), "
        f"{_f(mem, '.0f', 1 / GIB, ' GiB')} RAM, {m['os']}, power: {m['power']}; "
        f"SIMD: {' '.join(m['simd'])}; memory bandwidth {m['bandwidth_gib_s']:.1f} GiB/s ({m['bandwidth_method']}); "
        f"llama-cpp-python {v.get('llama_cpp_python')}, numpy {v.get('numpy')}, Python {v.get('python')}; "
        f"load average {run.load_average.get('before')} -> {run.load_average.get('after')}"
    )


def markdown(run: BenchRun) -> str:
    """The speed and prompt-cache tables as Markdown (for docs/benchmarks.md)."""

    def table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
        esc = lambda c: c.replace("|", "\\|")  # noqa: E731
        return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
            "| " + " | ".join(esc(c) for c in row) + " |" for row in rows
        ]

    lines = table(SPEED_HEADERS, [speed_cells(r) for r in run.rows])
    if run.prompt_cache:
        lines += [""] + table(CACHE_HEADERS, [cache_cells(r) for r in run.prompt_cache])
    notes = [f"- error: {e}" for e in error_lines(run)] + [f"- note: {n}" for n in disturbed_lines(run)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def print_report(run: BenchRun, ratios: list[dict] | None = None, console=None) -> None:
    """The human view: machine line, the speed table, the prompt-cache table, baseline ratios."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a pipe or file: do not squeeze the table into 80 columns
    console.print(machine_line(run), highlight=False)

    def table(title: str, headers: Sequence[str], rows: list[list[str]], errors: list[bool]) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
        name_width = min(48, max([len(h) for h in headers[:1]] + [len(row[0]) for row in rows]))
        for h in headers:
            left = h in ("model", "quant")
            t.add_column(h, justify="left" if left else "right", overflow="fold" if left else "ellipsis",
                         min_width=name_width if h == "model" else None)
        last = None
        for row, bad in zip(rows, errors):
            if last is not None and row[0] != last:
                t.add_section()
            last = row[0]
            t.add_row(*row, style="red" if bad else None)
        return t

    console.print(table(run.command, SPEED_HEADERS, [speed_cells(r) for r in run.rows], [r.status != "ok" for r in run.rows]))
    if run.prompt_cache:
        console.print(table(
            "prompt cache: TTFT (p50) of a second request that shares a prefix with the first",
            CACHE_HEADERS, [cache_cells(r) for r in run.prompt_cache], [r.status != "ok" for r in run.prompt_cache],
        ))
    for line in error_lines(run):
        console.print(f"error: {line}", style="red", highlight=False)
    for line in disturbed_lines(run):
        console.print(f"note: {line}", style="yellow", highlight=False)
    if ratios is not None:
        if not ratios:
            console.print("no (model, threads, prompt tokens) in common with the baseline", style="yellow")
            return
        rows = [[r["model"], str(r["threads"]), str(r["prompt_tokens"]), *[_f(r[f], ".3f") for f in RATIO_FIGURES]] for r in ratios]
        console.print(table(
            "ratio to baseline (times and memory: >1 is worse; speeds and share: >1 is better)",
            ("model", "thr", "prompt", *(RATIO_LABELS[f] for f in RATIO_FIGURES)), rows, [False] * len(rows),
        ))
