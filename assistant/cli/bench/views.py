"""What `assistant bench` shows: the rich tables on the terminal and the PNG plot."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from assistant import plots
from assistant.atomic import atomic_write_bytes
from assistant.bench.config import BenchError
from assistant.bench.report import (
    CACHE_HEADERS,
    RATIO_FIGURES,
    RATIO_LABELS,
    SPEED_HEADERS,
    cache_cells,
    disturbed_lines,
    error_lines,
    fmt,
    machine_line,
    speed_cells,
)
from assistant.bench.summary import BenchRow, BenchRun


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
        ax1.errorbar(
            x, [r.decode_tps_mean for r in rs], yerr=[r.decode_tps_sd for r in rs], marker="o", capsize=3, label=label
        )
        ttft_ms = [math.nan if r.ttft_p50_s is None else 1000 * r.ttft_p50_s for r in rs]  # nan: a gap
        ax2.plot(x, ttft_ms, marker="o", label=label)
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


KEY_COLUMNS = 4  # model, quant, thr, prompt: repeated in each part of a table split to fit the terminal


def print_report(run: BenchRun, ratios: list[dict] | None = None, console=None) -> None:
    """The human view: machine line, the speed table, the prompt-cache table, baseline ratios.

    Figures are never cut: a table wider than the terminal is split into parts that each
    repeat the key columns (model, threads, ...). Names, paths and errors are printed as
    text, not rich markup.
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a pipe or file: do not squeeze the table into 80 columns
    console.print(escape(machine_line(run)), highlight=False)

    def show(title: str, headers: Sequence[str], rows: list[list[str]], errors: list[bool], keys: int) -> None:
        for t in fitted_tables(console, title, headers, rows, errors, keys):
            console.print(t)

    show(
        run.command,
        SPEED_HEADERS,
        [speed_cells(r) for r in run.rows],
        [r.status != "ok" for r in run.rows],
        KEY_COLUMNS,
    )
    if run.prompt_cache:
        show(
            "prompt cache: TTFT (p50) of a second request that shares a prefix with the first",
            CACHE_HEADERS,
            [cache_cells(r) for r in run.prompt_cache],
            [r.status != "ok" for r in run.prompt_cache],
            2,
        )
    for line in error_lines(run):
        console.print(escape(f"error: {line}"), style="red", highlight=False)
    for line in disturbed_lines(run):
        console.print(escape(f"note: {line}"), style="yellow", highlight=False)
    if ratios is not None:
        if not ratios:
            console.print("no (model, threads, prompt tokens) in common with the baseline", style="yellow")
            return
        rows = [
            [r["model"], str(r["threads"]), str(r["prompt_tokens"]), *[fmt(r[f], ".3f") for f in RATIO_FIGURES]]
            for r in ratios
        ]
        show(
            "ratio to baseline (times and memory: >1 is worse; speeds and share: >1 is better)",
            ("model", "thr", "prompt", *(RATIO_LABELS[f] for f in RATIO_FIGURES)),
            rows,
            [False] * len(rows),
            3,
        )


def fitted_tables(
    console, title: str, headers: Sequence[str], rows: list[list[str]], errors: list[bool], keys: int
) -> list:
    """The table as it is when it fits ``console.width``; else as few compact parts as fit, each
    repeating the first ``keys`` columns.

    In a compact part every column but the model's is exactly as wide as its longest cell (or
    header word; headers wrap), so rich never shortens a figure to ``0.…``.
    """
    from rich.measure import Measurement

    unbounded = console.options.update_width(100_000)  # rich caps a measurement at the width it is given
    whole = list(range(len(headers)))
    natural = _table(title, headers, rows, errors)
    if Measurement.get(console, unbounded, natural).maximum <= console.width:
        return [natural]

    def build(columns: Sequence[int], part_title: str | None):
        return _table(
            part_title, [headers[i] for i in columns], [[row[i] for i in columns] for row in rows], errors, compact=True
        )

    def width(columns: Sequence[int]) -> int:
        return Measurement.get(console, unbounded, build(columns, None)).minimum

    key_cols = whole[: min(keys, len(headers))]
    parts: list[list[int]] = [[]]
    for j in whole[len(key_cols) :]:
        if parts[-1] and width(key_cols + parts[-1] + [j]) > console.width:
            parts.append([])
        parts[-1].append(j)
    return [build(key_cols + part, title if n == 0 else None) for n, part in enumerate(parts)]


def _table(title: str | None, headers: Sequence[str], rows: list[list[str]], errors: list[bool], compact: bool = False):
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title) if title else None, box=box.SIMPLE_HEAVY, title_justify="left")
    name_width = min(48, max([len(h) for h in headers[:1]] + [len(row[0]) for row in rows]))
    for n, h in enumerate(headers):
        left = h in ("model", "quant")
        fixed = None
        if compact and h != "model":
            fixed = max([len(row[n]) for row in rows] + [len(word) for word in h.split()])
        t.add_column(
            h,
            justify="left" if left else "right",
            overflow="fold" if left or compact else "ellipsis",
            min_width=name_width if h == "model" else None,
            width=fixed,
        )
    last = None
    for row, bad in zip(rows, errors):
        if last is not None and row[0] != last:
            t.add_section()
        last = row[0]
        t.add_row(*(escape(c) for c in row), style="red" if bad else None)
    return t
