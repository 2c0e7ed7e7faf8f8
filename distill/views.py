"""Rich tables for the distill commands."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_train_summary(summary: dict) -> None:
    table = Table(title="distillation run", show_header=False)
    for key, value in summary.items():
        table.add_row(key, _fmt(value))
    Console().print(table)


def print_sweep(points, out: Path) -> None:
    from distill.sweep import METRICS

    table = Table(title=f"α–T sweep ({out})")
    for col in ("alpha", "T", *METRICS):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(f"{p.alpha:g}", f"{p.temperature:g}", *(_fmt(p.metrics.get(m)) for m in METRICS))
    Console().print(table)
    Console().print(f"heatmap: {out / 'heatmap.png'}")
