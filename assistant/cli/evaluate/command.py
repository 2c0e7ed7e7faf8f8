"""`assistant eval humaneval`: argument parsing; the work is in assistant.evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from assistant.cli.options import JsonOpt, LockOpt, ModelOpt, OfflineOpt


def eval_humaneval(
    model: Optional[str] = ModelOpt,
    samples: int = typer.Option(1, "-n", "--samples", min=1, help="Samples per problem."),
    k: str = typer.Option("1", "-k", help="Comma-separated k values for pass@k."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    max_tokens: int = typer.Option(512, "--max-tokens", min=16),
    prompt_style: Optional[str] = typer.Option(
        None, "--prompt-style", help="chat or completion (default: the model's)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N problems."),
    rerank: str = typer.Option(
        "none", "--rerank", help="none, codet, cluster, or codet,cluster (both from one execution matrix)."
    ),
    tests: int = typer.Option(10, "--tests", min=1, help="Generated asserts per problem for reranking."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=0xFFFFFFFE, help="Seed of the first sample; sample i uses seed+i."
    ),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds per program in the sandbox."),
    system: Optional[str] = typer.Option(
        None, "--system", help="System message for chat prompts (default: the chat template's own)."
    ),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="JSONL in HumanEval's schema (default: HumanEval)."),
    out: Path = typer.Option(Path("runs/humaneval"), "--out", help="Results directory (reruns resume)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    json_out: bool = JsonOpt,
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """HumanEval pass@k of a local model, executed in the sandbox; resumable."""
    from assistant.atomic import check_output_dir
    from assistant.cli.evaluate import views as eval_views
    from assistant.codegen.generate import load_model
    from assistant.errors import UsageError
    from assistant.evaluation import run as evaluate
    from assistant.runtime.engine import Engine, EngineConfig
    from assistant.sandbox.limits import Limits
    from assistant.sandbox.pool import run_many

    try:
        ks = tuple(sorted({int(x) for x in k.split(",") if x.strip()}))
    except ValueError:
        raise UsageError(f"-k must be comma-separated integers, not {k!r}") from None
    check_output_dir(out)
    resolved = load_model(model, lock, offline)
    cfg = evaluate.EvalConfig(
        n=samples,
        ks=ks,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        prompt_style=prompt_style or resolved.prompt_style,
        rerank=rerank,
        tests=tests,
        seed=seed,
        timeout_s=timeout,
        system=system,
    )
    cfg.validate()
    run_programs = lambda programs, timeout_s: run_many(programs, Limits(timeout_s=timeout_s))
    problems = evaluate.load_problems(dataset)  # a bad --dataset fails before the model loads
    total = min(limit, len(problems)) if limit else len(problems)
    with Engine(resolved, EngineConfig(n_threads=threads)) as engine:
        with eval_views.progress_bar(total) as on_problem:
            summary = evaluate.run_eval(
                engine, cfg, out, run_programs, dataset=dataset, limit=limit, on_problem=on_problem
            )
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        eval_views.print_summary(summary, resolved.name)
