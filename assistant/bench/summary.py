"""A bench run's results: per-setting rows summarized from the workers' raw timings."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Sequence

from assistant.bench.config import BenchConfig
from assistant.bench.targets import Target, model_cost

SCHEMA = "assistant.bench/1"


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
    def from_dict(cls, d: dict) -> BenchRun:
        """A saved run back (to print or re-render it, e.g. as Markdown for the docs)."""
        return cls(
            d["command"],
            d["started"],
            d["config"],
            d["machine"],
            [BenchRow(**r) for r in d["rows"]],
            [CacheRow(**c) for c in d["prompt_cache"]],
            d.get("load_average", {}),
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
        cache = (
            CacheRow(target.name, threads, prefix, cfg.cache_suffix, status="error", error=error) if prefix else None
        )
        return rows, cache
    cost = model_cost(target.model.gguf) if target.model else None
    rows = []
    for setting in result["settings"]:
        runs = setting["runs"]
        n = setting["prompt_tokens"]
        ttft = [r["ttft_s"] for r in runs]
        prompt_tps = [r["prompt_tokens"] / r["ttft_s"] for r in runs]
        decode_tps = [r["decode_tokens"] / r["decode_s"] for r in runs]
        llama_prompt = [
            r["llama_prompt_tokens"] / (r["llama_prompt_ms"] / 1000) for r in runs if r["llama_prompt_ms"] > 0
        ]
        llama_decode = [
            r["llama_decode_tokens"] / (r["llama_decode_ms"] / 1000) for r in runs if r["llama_decode_ms"] > 0
        ]
        wall_decode = sum(r["decode_s"] for r in runs)
        llama_decode_s = sum(r["llama_decode_ms"] for r in runs) / 1000
        row = BenchRow(
            target.name,
            threads,
            n,
            cfg.gen_tokens,
            reps=len(runs),
            warmup=cfg.warmup,
            n_ctx=cfg.n_ctx(),
            load_s=result["load_s"],
            llama_load_s=result.get("llama_load_s"),
            peak_rss_bytes=result.get("peak_rss_bytes"),
            rss_before_load_bytes=result.get("rss_before_load_bytes"),
            other_load_cores=result.get("other_load_cores"),
            ttft_p50_s=percentile(ttft, 50),
            ttft_p90_s=percentile(ttft, 90),
            decode_s_mean=statistics.fmean(r["decode_s"] for r in runs),
            decode_tokens=runs[0]["decode_tokens"],
            llama_prompt_tps_mean=statistics.fmean(llama_prompt) if llama_prompt else None,
            llama_decode_tps_mean=statistics.fmean(llama_decode) if llama_decode else None,
            decode_overhead=1 - llama_decode_s / wall_decode if wall_decode > 0 and llama_decode_s > 0 else None,
            runs=runs,
            **base,
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
