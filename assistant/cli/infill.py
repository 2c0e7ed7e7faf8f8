"""`assistant infill FILE --at LINE:COL` and `assistant eval infill`: argument parsing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from assistant.cli.options import JsonOpt, LockOpt, ModelOpt, OfflineOpt


def _cursor(at: str) -> tuple[int, int]:
    from assistant.errors import UsageError

    try:
        line, col = (int(x) for x in at.split(":"))
    except ValueError:
        raise UsageError(f"--at {at!r} is not LINE:COL", hint="pass 1-based numbers, e.g. --at 12:5") from None
    return line, col


def infill(
    file: Path = typer.Argument(..., help="The source file; the gap is at the cursor."),
    at: str = typer.Option(..., "--at", help="Cursor as LINE:COL, 1-based (COL may be one past the line's end)."),
    model: Optional[str] = ModelOpt,
    extra: Optional[list[Path]] = typer.Option(None, "--extra", help="Another project file as context (repeatable)."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0),
    seed: Optional[int] = typer.Option(None, "--seed", min=0),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop sequence (repeatable)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    ctx: Optional[int] = typer.Option(None, "--ctx", min=256),
    in_place: bool = typer.Option(False, "--in-place", "-i", help="Insert the infill into FILE (atomically)."),
    json_out: bool = JsonOpt,
    stats: bool = typer.Option(False, "--stats", help="Print timings to stderr."),
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Fill in the code at a cursor in FILE with a fill-in-the-middle model; prints the middle."""
    from assistant.codegen.generate import load_model
    from assistant.runtime.engine import Engine, EngineConfig, Sampling
    from assistant.runtime.fim import ExtraFile, InfillRequest, require_fim, split_at
    from assistant.runtime.fim import infill as run_infill

    line, col = _cursor(at)
    text = _read(file)
    prefix, suffix = split_at(text, line, col)
    extras = tuple(ExtraFile(str(p), _read(p)) for p in extra or ())
    resolved = load_model(model, lock, offline)
    with Engine(resolved, EngineConfig(n_ctx=ctx, n_threads=threads)) as engine:
        fim = require_fim(engine)
        result = run_infill(
            engine,
            InfillRequest(prefix, suffix, extras, str(file)),
            Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed, stop=tuple(stop or ())),
            fim=fim,
        )
    if in_place:
        from assistant.atomic import atomic_write_text

        atomic_write_text(file, prefix + result.text + suffix)
    if json_out:
        g = result.generation
        p = result.prompt
        typer.echo(
            json.dumps(
                {
                    "text": result.text,
                    "model": {"name": resolved.name, "sha256": resolved.sha256},
                    "fim": result.family,
                    "cursor": {"line": line, "col": col},
                    "finish_reason": g.finish_reason,
                    "seed": g.seed,
                    "prompt": {
                        "tokens": len(p.tokens),
                        "prefix_tokens": p.prefix_tokens,
                        "suffix_tokens": p.suffix_tokens,
                        "line_tokens": p.line_tokens,
                        "prefix_trimmed": p.prefix_trimmed,
                        "suffix_trimmed": p.suffix_trimmed,
                        "extra_files": list(p.extra_files),
                        "dropped_files": list(p.dropped_files),
                    },
                    "timings": g.timings.__dict__,
                },
                indent=2,
            )
        )
    elif not in_place:
        sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")
    if stats:
        t = result.generation.timings
        typer.echo(
            f"{resolved.name}: prompt {t.prompt_tokens} tok | first token {t.ttft_s * 1000:.0f} ms | "
            f"{t.generated_tokens} tok at {t.decode_tps:.1f} tok/s | {result.generation.finish_reason}",
            err=True,
        )
    if result.prompt.dropped_files:
        typer.echo(f"note: left out for lack of context: {', '.join(result.prompt.dropped_files)}", err=True)


def _read(path: Path) -> str:
    from assistant.errors import UsageError

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="pass the path of a source file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory", hint="pass the path of a source file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text", hint="infill works on text source files") from None


def eval_infill(
    model: Optional[str] = ModelOpt,
    kind: str = typer.Option("single,multi", "--kind", help="single, multi or both (comma-separated)."),
    route: str = typer.Option("fim,chat", "--route", help="fim, chat or both: FIM tokens vs the chat template."),
    per_problem: int = typer.Option(1, "--per-problem", min=1, help="Masked spans drawn per problem (seeded)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N tasks of each kind."),
    seed: int = typer.Option(0, "--seed", min=0),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds per program in the sandbox."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    out: Path = typer.Option(Path("runs/infill"), "--out", help="Directory for results.jsonl and summary.json."),
    json_out: bool = JsonOpt,
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """HumanEval single-/multi-line infilling pass@1 (greedy), scored in the sandbox."""
    from assistant.codegen.generate import load_model
    from assistant.evaluation.humaneval import load_problems
    from assistant.evaluation.infilling import InfillConfig, run_infilling
    from assistant.runtime.engine import Engine, EngineConfig
    from assistant.sandbox.limits import Limits
    from assistant.sandbox.pool import run_many

    cfg = InfillConfig(
        kinds=tuple(k.strip() for k in kind.split(",") if k.strip()),
        routes=tuple(r.strip() for r in route.split(",") if r.strip()),
        per_problem=per_problem,
        seed=seed,
        limit=limit,
        timeout_s=timeout,
    )
    cfg.validate()
    resolved = load_model(model, lock, offline)
    problems = load_problems()
    done = [0]

    def progress(row) -> None:
        done[0] += 1
        if not json_out:
            typer.echo(f"\r{done[0]} tasks scored ({row.kind}/{row.route})", err=True, nl=False)

    with Engine(resolved, EngineConfig(n_threads=threads)) as engine:
        summary = run_infilling(engine, problems, cfg, lambda ps, t: run_many(ps, Limits(timeout_s=t)), out, progress)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo("", err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"HumanEval infilling, {resolved.name} (greedy pass@1)")
    for col in ("kind", "route", "tasks", "passed", "pass@1", "s/task"):
        table.add_column(col, justify="right" if col not in ("kind", "route") else "left")
    for k, by_route in summary.results.items():
        for r, s in by_route.items():
            table.add_row(k, r, str(s["tasks"]), str(s["passed"]), f"{s['pass@1']:.1%}", f"{s['mean_seconds']:.2f}")
    Console().print(table)
