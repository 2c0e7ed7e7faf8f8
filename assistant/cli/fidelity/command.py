"""The `assistant fidelity` command: argument parsing and printing; the work is in assistant.fidelity.run.

Kept import-light (typer only at the top) because assistant.cli.app imports it on every start-up.
Registered in assistant/cli/app.py with ``app.command("fidelity")(fidelity)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

ASSERT_SCHEMA_HINT = (
    'pass --dataset FILE.jsonl: one JSON object a line with "prompt" (Python test code in which the assertion '
    'is replaced by <AssertPlaceHolder>) and "target" (that assertion); optional "id" and "mask"; or --dataset DIR '
    "built by `python -m assistant.asserts.dataset DIR` (its test split)"
)


def _writable(path: Path, flag: str) -> None:
    from assistant.errors import UsageError

    parent = path.expanduser().resolve().parent
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory", hint="pass a file name")
    if not parent.is_dir():
        raise UsageError(
            f"{flag} {path}: directory {parent} does not exist", hint="create it first or choose another path"
        )
    from assistant.atomic import check_output_file

    check_output_file(path, flag)  # /proc, a read-only folder


def fidelity(
    student: str = typer.Option(..., "--student", "-s", help="Lock name or path to a .gguf file."),
    teacher: Optional[str] = typer.Option(
        None, "--teacher", "-t", help="Lock name or .gguf path (default: the lock's default model)."
    ),
    task: str = typer.Option(
        "completion", "--task", help="completion (HumanEval prompts) or asserts (masked assertions, needs --dataset)."
    ),
    relations: Optional[List[str]] = typer.Option(
        None, "--relations", "-r", help="Comma-separated metamorphic relations (repeatable), 'default' or 'all'."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", min=1, help="Only the first N items."),
    ids: Optional[str] = typer.Option(
        None, "--ids", help="Only these items, comma-separated (HumanEval task ids or dataset ids)."
    ),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset",
        help="completion: JSONL in HumanEval's schema (default HumanEval); asserts: JSONL with prompt and target, or a mined dataset directory.",
    ),
    max_tokens: int = typer.Option(384, "--max-tokens", min=1, help="Tokens per answer (greedy)."),
    prompt_style: Optional[str] = typer.Option(
        None, "--prompt-style", help="chat or completion (default: the teacher's)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the relations' choices (synonyms, dead-code forms)."),
    confidence: float = typer.Option(
        0.9, "--confidence", help="High-confidence threshold on the teacher's token probability."
    ),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds per program in the sandbox."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Default: physical cores."),
    ctx: Optional[int] = typer.Option(
        None, "--ctx", min=256, help="Context window (default: the model's, at most 4096)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the full report as JSON instead of tables."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as GitHub markdown (for docs/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the full JSON report to FILE."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG: agreement, JSD and calibration per relation (needs matplotlib)."
    ),
    offline: bool = typer.Option(False, "--offline", help="Never touch the network (also HF_HUB_OFFLINE=1)."),
    lock: Optional[Path] = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to use."),
) -> None:
    """Metamorphic fidelity: does STUDENT behave like TEACHER on behaviour-preserving input changes?"""
    from assistant.cli.fidelity import views
    from assistant.errors import UsageError
    from assistant.fidelity import run as fid
    from assistant.fidelity.relations.registry import parse_relations

    names = parse_relations(",".join(relations) if relations else None)
    cfg = fid.FidelityConfig(
        task=task,
        relations=tuple(names),
        limit=limit,
        max_tokens=max_tokens,
        prompt_style=prompt_style,
        seed=seed,
        confidence=confidence,
        timeout_s=timeout,
        dataset=str(dataset) if dataset else None,
    )
    cfg.validate()
    if plot:
        views.require_matplotlib()
        _writable(plot, "--plot")
    if out:
        _writable(out, "--out")
    if task == "asserts" and dataset is None:
        raise UsageError("--task asserts needs an assertion dataset", hint=ASSERT_SCHEMA_HINT)
    wanted = [i.strip() for i in ids.split(",") if i.strip()] if ids else None
    report = _run(cfg, teacher, student, dataset, limit, wanted, threads, ctx, offline, lock)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if out:
        from assistant.atomic import atomic_write_text

        atomic_write_text(out, text)
    if plot:
        views.write_plot(report, plot)
    if json_out:
        typer.echo(text, nl=False)
    elif markdown:
        typer.echo(views.markdown(report))
    else:
        views.print_report(report)


def _run(cfg, teacher, student, dataset, limit, wanted, threads, ctx, offline, lock):
    from assistant.cli.fidelity import views
    from assistant.codegen.generate import load_model
    from assistant.evaluation.humaneval import load_problems
    from assistant.fidelity import run as fid
    from assistant.fidelity.tasks import AssertTask, CompletionTask, Task, load_assert_items
    from assistant.runtime.engine import Engine, EngineConfig
    from assistant.sandbox.limits import Limits
    from assistant.sandbox.pool import run_many

    task_obj: Task
    if cfg.task == "asserts":
        items = _select(load_assert_items(dataset), lambda i: i.id, wanted, limit)
        task_obj = AssertTask(items)
    else:
        problems = _select(load_problems(dataset), lambda p: p.task_id, wanted, limit)
        limits = Limits(timeout_s=cfg.timeout_s)
        task_obj = CompletionTask(problems, lambda programs: run_many(programs, limits))
    t_model = load_model(teacher, lock, offline)
    s_model = load_model(student, lock, offline)
    engine_cfg = EngineConfig(n_ctx=ctx, n_threads=threads)
    with Engine(t_model, engine_cfg) as t_engine:
        # the same file twice (the sanity check): one engine, every answer still generated twice
        s_engine = t_engine if s_model.sha256 == t_model.sha256 else Engine(s_model, engine_cfg)
        try:
            with views.progress() as (set_total, on_variant):
                return fid.run_fidelity(
                    t_engine, s_engine, task_obj, cfg, on_variant=on_variant, variants_ready=set_total
                )
        finally:
            if s_engine is not t_engine:
                s_engine.close()


def _select(items: list, key, wanted: list[str] | None, limit: int | None) -> list:
    """--ids (in the order given), then --limit."""
    from assistant.errors import UsageError

    if wanted:
        by_id = {key(i): i for i in items}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            sample = ", ".join(list(by_id)[:3])
            raise UsageError(f"--ids names unknown items {', '.join(missing)}", hint=f"ids look like {sample}")
        items = [by_id[w] for w in dict.fromkeys(wanted)]
    return items[:limit] if limit else items
