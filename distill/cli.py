"""`assistant distill train | sweep | corpus | cache-logits`: argument parsing only.

Registered in assistant/cli/app.py with ``app.add_typer(distill_app, name="distill")``. Importing
this module stays cheap (no torch): heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from assistant.errors import UsageError
from assistant.guard import OneLineErrorGroup as _Group

distill_app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill a small student from a teacher: corpus, teacher-logit cache, training, α–T sweeps.",
)

from distill.data_cmd import cache_logits, corpus  # noqa: E402  (no heavy imports at its top)

distill_app.command("corpus")(corpus)
distill_app.command("cache-logits")(cache_logits)

RecipeOpt = typer.Option(None, "--recipe", "-r", help="TOML recipe (defaults otherwise; see distill/recipe.py).")
SetOpt = typer.Option(None, "--set", help="Override a recipe setting: key=value (student.hidden=384). Repeatable.")


def _recipe(recipe_path: Optional[Path], overrides: Optional[List[str]], **flags):
    from distill.recipe import Recipe, apply_overrides, load_recipe

    recipe = load_recipe(recipe_path) if recipe_path else Recipe()
    recipe = apply_overrides(recipe, overrides or [])
    changes = {k: v for k, v in flags.items() if v is not None}
    return recipe.replace(**changes) if changes else recipe


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    return values


@distill_app.command("train")
def train_cmd(
    recipe_path: Optional[Path] = RecipeOpt,
    overrides: Optional[List[str]] = SetOpt,
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Token corpus directory (assistant distill corpus)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Lock name, hf-id@revision or HF directory."),
    logit_cache: Optional[str] = typer.Option(
        None, "--logit-cache", help="Train from a teacher-logit cache instead of an online teacher."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="Run directory (checkpoints, metrics.jsonl, student/)."
    ),
    steps: Optional[int] = typer.Option(None, "--steps", help="max_steps."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the distillation term (0 = CE only)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-T", help="Distillation temperature."),
    nproc: int = typer.Option(
        1, "--nproc", help="Processes on this machine (torchrun + DDP; gloo on CPU, NCCL on GPUs)."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Discard the run directory's checkpoint instead of resuming."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Distill a student (resumes from the run directory's last checkpoint)."""
    recipe = _recipe(
        recipe_path,
        overrides,
        corpus=corpus,
        teacher=teacher,
        logit_cache=logit_cache,
        out=out,
        max_steps=steps,
        alpha=alpha,
        temperature=temperature,
    )
    if nproc > 1:
        raise typer.Exit(launch_distributed(recipe, nproc, restart))
    from distill.display import TrainDisplay
    from distill.train import train

    result = train(recipe, restart=restart, display_factory=None if json_out else TrainDisplay)
    summary = {
        "student": str(result.student_dir),
        "steps": result.steps,
        "tokens": result.tokens,
        "parameters": result.params,
        "stopped_early": result.stopped_early,
        **result.final,
    }
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        from distill.views import print_train_summary

        print_train_summary(summary)


def launch_distributed(recipe, nproc: int, restart: bool) -> int:
    """Run the recipe under torchrun with nproc local processes; return its exit code."""
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    launch = out / "recipe.launch.json"
    launch.write_text(json.dumps(recipe.to_dict(), indent=2))
    if restart:
        for p in out.glob("checkpoint-*"):
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        (out / "latest").unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "distill.train",
        str(launch),
    ]
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


@distill_app.command("sweep")
def sweep_cmd(
    recipe_path: Optional[Path] = RecipeOpt,
    overrides: Optional[List[str]] = SetOpt,
    alpha: str = typer.Option("0.1,0.5,0.9", "--alpha", help="Comma-separated α values."),
    temperature: str = typer.Option("0.5,1,2", "--temperature", "-T", help="Comma-separated T values."),
    one_factor: bool = typer.Option(
        False, "--one-factor", help="Vary α at the recipe's T, then T at its α (the seed's design), not the full grid."
    ),
    out: Path = typer.Option(
        Path("runs/sweep"), "--out", "-o", help="Sweep directory: one run per point, sweep.json/csv, heatmap.png."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Train one student per (α, T) point and tabulate validation CE, KL and top-1 agreement."""
    from distill.sweep import run_sweep, table_rows

    recipe = _recipe(recipe_path, overrides)
    alphas, temps = _floats(alpha, "--alpha"), _floats(temperature, "--temperature")
    points = run_sweep(recipe, alphas, temps, out, mode="one-factor" if one_factor else "grid")
    if json_out:
        typer.echo(json.dumps(table_rows(points)))
    else:
        from distill.views import print_sweep

        print_sweep(points, out)


@distill_app.command("pipeline")
def pipeline_cmd(
    recipe_path: Path = typer.Argument(
        ..., help="Pipeline TOML with [corpus], [cache] (optional), [distill] and [export] tables."
    ),
    stages: str = typer.Option(
        "corpus,cache,train,export",
        "--stages",
        help="Comma-separated subset, in order (the GPU machine runs corpus,cache,train).",
    ),
    overrides: Optional[List[str]] = SetOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Corpus → teacher-logit cache → distillation → GGUF → quantize → verify → models.lock, each stage resumable."""
    from dataclasses import asdict

    from distill.pipeline import load_pipeline, run_pipeline, with_overrides

    pipeline = with_overrides(load_pipeline(recipe_path), overrides or [])
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    say = lambda text: typer.echo(text, err=True)
    display = None
    if not json_out:
        from distill.display import TrainDisplay

        display = TrainDisplay
    result = run_pipeline(pipeline, chosen, say=say, display_factory=display)
    typer.echo(json.dumps(asdict(result), indent=2, default=str) if json_out else _pipeline_text(result))


def _pipeline_text(result) -> str:
    lines = [f"stages: {', '.join(result.stages)}"]
    if result.train:
        t = result.train
        lines.append(
            f"student: {t['student']} ({t['parameters'] / 1e6:.1f}M parameters, {t['steps']} steps, val CE {t.get('val_ce', float('nan')):.4f})"
        )
    if result.export:
        lines.append(
            f"exported: {', '.join(result.export['files'])}; lock: {', '.join(result.export['lock_names']) or '-'}"
        )
        if "verify" in result.export:
            lines.append(f"verify: {'passed' if result.export['verify']['passed'] else 'FAILED'}")
    return "\n".join(lines)
