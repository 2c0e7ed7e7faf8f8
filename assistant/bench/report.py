"""A bench run as files and text: CSV, baseline ratios, the table cells and Markdown.

The terminal tables and the plot are views of these, beside the command (assistant/cli/bench/).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Sequence

from assistant.atomic import atomic_write_text
from assistant.bench.config import GIB, BenchError
from assistant.bench.machine import DISTURBED_CORES
from assistant.bench.summary import SCHEMA, BenchRow, BenchRun, CacheRow

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


RATIO_FIGURES = (
    "load_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "prompt_tps_mean",
    "decode_tps_mean",
    "llama_decode_tps_mean",
    "peak_rss_bytes",
    "ceiling_share",
)


def load_baseline(path: Path) -> dict:
    """A saved JSON run (``--json`` or ``--out``); checked now so a bad file fails before the run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(
            f"baseline file not found: {path}", hint="save a run first with `assistant bench --out FILE`"
        ) from None
    except (OSError, ValueError) as e:
        raise BenchError(
            f"baseline {path} is not a readable JSON run: {e}", hint="pass a file written by `assistant bench --out`"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("rows"), list):
        raise BenchError(
            f"baseline {path} is not an `assistant bench` result ({SCHEMA})",
            hint="pass a file written by `assistant bench --out`",
        )
    return data


def baseline_ratios(run: BenchRun | dict, baseline: dict) -> list[dict]:
    """current ÷ baseline for each figure of each (model, threads, prompt tokens) in both runs."""
    current = run.to_dict() if isinstance(run, BenchRun) else run
    key = lambda r: (r["model"], r["threads"], r["prompt_tokens"])
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


def fmt(x: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x * scale, fmt) + suffix


SPEED_HEADERS = (
    "model",
    "quant",
    "thr",
    "prompt",
    "load s",
    "TTFT p50 / p90 ms",
    "prompt tok/s",
    "decode tok/s",
    "llama.cpp decode tok/s (python %)",
    "peak RSS MB",
    "ceiling tok/s",
    "share",
)
CACHE_HEADERS = (
    "model",
    "thr",
    "prefix + suffix",
    "fresh ms",
    "reused ms",
    "speedup",
    "tokens evaluated fresh / reused",
)


def speed_cells(r: BenchRow) -> list[str]:
    """One row of the speed table as text (shared by the terminal and Markdown views)."""
    head = [r.model, r.quantization or "-", str(r.threads), str(r.prompt_tokens)]
    if r.status != "ok":
        return head + ["error (below)"] + [""] * (len(SPEED_HEADERS) - len(head) - 1)
    return head + [
        fmt(r.load_s, ".2f"),
        f"{fmt(r.ttft_p50_s, '.0f', 1000)} / {fmt(r.ttft_p90_s, '.0f', 1000)}",
        f"{fmt(r.prompt_tps_mean, '.0f')} ± {fmt(r.prompt_tps_sd, '.0f')}",
        f"{fmt(r.decode_tps_mean, '.1f')} ± {fmt(r.decode_tps_sd, '.1f')}",
        f"{fmt(r.llama_decode_tps_mean, '.1f')} ({fmt(r.decode_overhead, '.1f', 100, '%')})",
        _mb(r.peak_rss_bytes),
        fmt(r.ceiling_tps, ".0f"),
        fmt(r.ceiling_share, ".0f", 100, "%"),
    ]


def cache_cells(r: CacheRow) -> list[str]:
    head = [r.model, str(r.threads), f"{r.prefix_tokens} + {r.suffix_tokens}"]
    if r.status != "ok" or r.ttft_reuse_p50_s is None:
        return head + ["error (below)", "", "", ""]
    return head + [
        fmt(r.ttft_fresh_p50_s, ".0f", 1000),
        fmt(r.ttft_reuse_p50_s, ".0f", 1000),
        fmt(r.speedup, ".1f", 1, "x"),
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
    rows: list[BenchRow | CacheRow] = [*run.rows, *run.prompt_cache]
    for r in rows:
        if r.status != "ok" and r.model not in seen:
            seen[r.model] = f"{r.model}: {r.error}"
    return list(seen.values())


RATIO_LABELS = {
    "load_s": "load",
    "ttft_p50_s": "TTFT p50",
    "ttft_p90_s": "TTFT p90",
    "prompt_tps_mean": "prompt tok/s",
    "decode_tps_mean": "decode tok/s",
    "llama_decode_tps_mean": "llama.cpp decode",
    "peak_rss_bytes": "peak RSS",
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
        f"{fmt(mem, '.0f', 1 / GIB, ' GiB')} RAM, {m['os']}, power: {m['power']}; "
        f"SIMD: {' '.join(m['simd'])}; memory bandwidth {m['bandwidth_gib_s']:.1f} GiB/s ({m['bandwidth_method']}); "
        f"llama-cpp-python {v.get('llama_cpp_python')}, numpy {v.get('numpy')}, Python {v.get('python')}; "
        f"load average {run.load_average.get('before')} -> {run.load_average.get('after')}"
    )


def markdown(run: BenchRun) -> str:
    """The speed and prompt-cache tables as Markdown (for docs/benchmarks.md)."""

    def table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
        esc = lambda c: c.replace("|", "\\|")
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
