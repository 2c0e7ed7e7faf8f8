"""The `assistant bench` command: argument parsing; the work is in assistant.bench, the views beside this.

Kept import-light (typer only) because assistant.cli.app imports it on every start-up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer


def bench(
    models: Optional[List[str]] = typer.Argument(
        None,
        help="Lock names or .gguf paths (default: the embedded model and every models.lock entry whose file is present).",
    ),
    threads: Optional[str] = typer.Option(
        None, "--threads", help="Comma-separated thread counts (default: physical cores)."
    ),
    prompt_tokens: str = typer.Option("128,512", "--prompt-tokens", help="Comma-separated prompt lengths in tokens."),
    gen_tokens: int = typer.Option(128, "--gen-tokens", help="Tokens generated per run (EOS is ignored)."),
    reps: int = typer.Option(5, "--reps", help="Measured repetitions per setting."),
    warmup: int = typer.Option(1, "--warmup", help="Uncounted warm-up runs per setting."),
    cache_prefix: Optional[int] = typer.Option(
        None,
        "--cache-prefix",
        help="Shared-prefix tokens for the prompt-cache test (default: largest --prompt-tokens; 0 skips it).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the run as JSON on stdout instead of tables."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Also save the run as JSON to FILE (for a later --baseline)."
    ),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV line per model and setting to FILE."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG of decode tok/s and TTFT per thread count (needs matplotlib)."
    ),
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", help="Show each figure as a ratio to a saved JSON run."
    ),
    lock: Optional[Path] = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to use."),
) -> None:
    """Benchmark local models: load time, TTFT, prompt/decode tokens/s, memory, bandwidth ceiling."""
    from assistant.atomic import check_output_file
    from assistant.bench import config as b
    from assistant.bench import report
    from assistant.bench.run import run_bench
    from assistant.cli.bench import views

    cfg = b.BenchConfig(
        models=tuple(models or ()),
        threads=b.parse_int_list(threads, "--threads") if threads else (),
        prompt_tokens=b.parse_int_list(prompt_tokens, "--prompt-tokens"),
        gen_tokens=gen_tokens,
        reps=reps,
        warmup=warmup,
        cache_prefix=cache_prefix,
        lock=lock,
    )
    cfg.validate()
    for path, flag in ((out, "--out"), (csv_out, "--csv"), (plot, "--plot")):
        if path:
            check_output_file(path, flag)
    if plot:
        views.require_matplotlib()
    base = report.load_baseline(baseline) if baseline else None
    run = run_bench(cfg, on_progress=lambda msg: typer.echo(f"bench: {msg}", err=True))
    ratios = report.baseline_ratios(run, base) if base is not None else None
    data = run.to_dict()
    if ratios is not None:
        data["baseline"] = {"file": str(baseline), "ratios": ratios}
    text = json.dumps(data, indent=2) + "\n"
    if out:
        report.write_text(out, text)
    if csv_out:
        report.write_text(csv_out, report.to_csv(run))
    if plot:
        views.write_plot(run, plot)
    if json_out:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        views.print_report(run, ratios)


def main() -> None:
    """`python -m assistant.bench ...`: the same command, with errors as one line (like the CLI)."""
    from assistant.guard import OneLineErrorCommand

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=OneLineErrorCommand)(bench)
    app(prog_name="python -m assistant.bench")
