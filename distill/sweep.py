"""α–T sweeps: run a grid (or one factor at a time, as the seed study did) and tabulate validation metrics."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from assistant.atomic import atomic_write_bytes, atomic_write_text
from distill.recipe import Recipe

METRICS = ("val_ce", "val_kl", "val_top1")


@dataclass
class SweepPoint:
    alpha: float
    temperature: float
    out: str
    metrics: dict[str, float] = field(default_factory=dict)


def sweep_points(base: Recipe, alphas: list[float], temperatures: list[float], mode: str) -> list[tuple[float, float]]:
    """grid: every (α, T); one-factor: α varies at the base T, then T varies at the base α."""
    if mode == "grid":
        pairs = [(a, t) for a in alphas for t in temperatures]
    elif mode == "one-factor":
        pairs = [(a, base.temperature) for a in alphas] + [(base.alpha, t) for t in temperatures]
    else:
        raise ValueError(f"mode must be grid or one-factor, got {mode!r}")
    return list(dict.fromkeys(pairs))  # ordered, without repeats


def point_dir(root: Path, alpha: float, temperature: float) -> Path:
    return root / f"alpha{alpha:g}_T{temperature:g}"


def run_sweep(
    base: Recipe,
    alphas: list[float],
    temperatures: list[float],
    out: Path,
    *,
    mode: str = "grid",
    train_fn: Callable | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> list[SweepPoint]:
    """Train every point (each resumable in its own directory) and collect its final validation metrics.

    The tables and heatmap are rewritten after each point.
    """
    from distill.train import train

    train_fn = train_fn or train
    points = []
    for alpha, temperature in sweep_points(base, alphas, temperatures, mode):
        run_dir = point_dir(out, alpha, temperature)
        recipe = base.replace(alpha=alpha, temperature=temperature, out=str(run_dir))
        done = _finished(run_dir, recipe)
        metrics = done if done is not None else train_fn(recipe).final
        point = SweepPoint(alpha, temperature, str(run_dir), metrics)
        points.append(point)
        write_results(points, out)  # after every point, so a stopped sweep shows what it has so far
        if on_point:
            on_point(point)
    return points


def _finished(run_dir: Path, recipe: Recipe) -> dict | None:
    """Final metrics of a point whose student was already written by the same recipe."""
    prov = run_dir / "student" / "provenance.json"
    if not prov.is_file():
        return None
    data = json.loads(prov.read_text())
    return data["final_metrics"] if data.get("recipe_hash") == recipe.hash() else None


def table_rows(points: list[SweepPoint]) -> list[dict]:
    return [{"alpha": p.alpha, "temperature": p.temperature, **{m: p.metrics.get(m) for m in METRICS}} for p in points]


def write_results(points: list[SweepPoint], out: Path) -> None:
    """sweep.json, sweep.csv and heatmap.png (one panel per metric) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(points)
    atomic_write_text(out / "sweep.json", json.dumps(rows, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["alpha", "temperature", *METRICS])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    heatmap(points, out / "heatmap.png")


def heatmap(points: list[SweepPoint], path: Path) -> None:
    """α × T grid per metric; cells a one-factor sweep did not run stay blank."""
    import numpy as np

    from assistant.plots import pyplot

    plt = pyplot()

    alphas = sorted({p.alpha for p in points})
    temps = sorted({p.temperature for p in points})
    metrics = [m for m in METRICS if any(p.metrics.get(m) is not None for p in points)]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = np.full((len(alphas), len(temps)), np.nan)
        for p in points:
            value = p.metrics.get(metric)
            if value is not None:
                grid[alphas.index(p.alpha), temps.index(p.temperature)] = value
        image = ax.imshow(
            np.ma.masked_invalid(grid), cmap="viridis_r" if metric != "val_top1" else "viridis", aspect="auto"
        )
        ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("alpha")
        ax.set_title(metric)
        for i in range(len(alphas)):
            for j in range(len(temps)):
                if not math.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
