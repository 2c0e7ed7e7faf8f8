"""`assistant generate`: parse the options, call assistant.codegen, print or stream the result."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from assistant.cli.options import JsonOpt, LockOpt, ModelOpt, OfflineOpt

if TYPE_CHECKING:
    from assistant.codegen.generate import GenerateResult


# Far more than any context window holds (131k tokens at ~4 bytes each is 0.5 MiB): anything
# longer is refused before it is decoded or tokenized, and never read into memory whole.
MAX_STDIN_BYTES = 4 << 20


def _read_stdin(limit: int = MAX_STDIN_BYTES) -> str:
    """Piped stdin as strict UTF-8 (a leading BOM dropped); too long or not UTF-8 is one line."""
    from assistant.errors import UsageError

    stream = sys.stdin
    if stream is None or stream.closed or stream.isatty():
        return ""
    raw = stream.buffer.read(limit + 1) if hasattr(stream, "buffer") else stream.read(limit + 1).encode("utf-8")
    if len(raw) > limit:
        raise UsageError(
            f"stdin is too long: more than {limit >> 20} MiB, far beyond any model's context window",
            hint="pipe only the part the model needs, e.g. head -c 100000 FILE | assistant generate ...",
        )
    return _decode_utf8(raw, "stdin")


def _decode_utf8(raw: bytes, what: str) -> str:
    """Strict UTF-8: a silently replaced byte would change the code the model is asked about."""
    from assistant.errors import UsageError

    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UsageError(
            f"{what} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line})",
            hint="convert it first, e.g. iconv -f latin1 -t utf-8 FILE",
        ) from None


def _utf8_arg(value: str | None, what: str) -> str | None:
    """An argument the shell passed as bytes that are not UTF-8 (Python keeps them as surrogates)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _decode_utf8(os.fsencode(value), what)
    return value


def generate(
    prompt: Optional[str] = typer.Argument(
        None, help="The instruction; stdin (UTF-8, up to 4 MiB), if piped, becomes context."
    ),
    model: Optional[str] = ModelOpt,
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", min=1),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", "-t", min=0.0, help="0 is greedy (default; 0.8 with --rerank)."
    ),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(40, "--top-k", min=0),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", min=0.0),
    seed: Optional[int] = typer.Option(  # max: llama.cpp reads 0xFFFFFFFF as "random"; larger ones wrap
        None, "--seed", min=0, max=0xFFFFFFFE, help="Seed for sampling (default: random, reported by --json)."
    ),
    stop: Optional[List[str]] = typer.Option(
        None, "--stop", help=r"Stop sequence (repeatable; escapes \n \t \\ \xNN \uNNNN); added to the model's own."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Default: physical cores."),
    ctx: Optional[int] = typer.Option(None, "--ctx", min=16, help="Context window (default: model's, at most 4096)."),
    prompt_style: Optional[str] = typer.Option(
        None, "--prompt-style", help="chat or completion (default: the model's)."
    ),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat models."),
    code_only: bool = typer.Option(False, "--code-only", help="Print only the first code block of the answer."),
    json_out: bool = JsonOpt,
    stats: bool = typer.Option(False, "--stats", help="Print timings to stderr."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write the output to FILE (atomically) instead of stdout."
    ),
    rerank: str = typer.Option(
        "none", "--rerank", help="none, codet or cluster: sample candidates and rank them by executing generated tests."
    ),
    samples: int = typer.Option(5, "--samples", min=2, help="Candidates to rerank."),
    tests: int = typer.Option(10, "--tests", min=1, help="Asserts to ask the model for when reranking."),
    explain: bool = typer.Option(False, "--explain", help="Show the reranking agreement table on stderr."),
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Generate code for PROMPT on a local model, streaming to the terminal."""
    from assistant.atomic import check_output_file
    from assistant.codegen import generate as codegen
    from assistant.errors import UsageError
    from assistant.runtime.engine import EngineConfig, Sampling
    from assistant.runtime.prompts import Request
    from assistant.runtime.stops import unescape

    if prompt_style not in (None, "chat", "completion"):
        raise UsageError(f"--prompt-style must be chat or completion, not {prompt_style!r}")
    if rerank not in ("none", "codet", "cluster"):
        raise UsageError(f"--rerank must be none, codet or cluster, not {rerank!r}")
    if temperature is None:
        temperature = 0.0 if rerank == "none" else 0.8
    stops = tuple(unescape(_utf8_arg(s, "a --stop value") or "") for s in stop or ())
    prompt, system = _utf8_arg(prompt, "the prompt argument"), _utf8_arg(system, "--system")
    if out is not None:
        check_output_file(out)
    request = Request(prompt or "", _read_stdin())
    if not request.user_message().strip():
        raise UsageError(
            "the prompt is empty", hint='pass one, e.g. assistant generate "a function that reverses a string"'
        )
    options = codegen.GenerateOptions(
        model=model,
        lock=lock,
        offline=offline,
        engine=EngineConfig(n_ctx=ctx, n_threads=threads),
        sampling=Sampling(max_tokens, temperature, top_p, top_k, repeat_penalty=repeat_penalty, seed=seed, stop=stops),
        prompt_style=prompt_style,
        system=system,  # None: the model's recipe from models.lock
        code_only=code_only,
        rerank=rerank,
        samples=samples,
        tests=tests,
    )
    streaming = not (json_out or code_only or out or rerank != "none")
    with _spinner(not streaming, "generating"):
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
    cut = _cut_note(result, max_tokens)
    if cut:
        typer.echo(f"note: {cut}", err=True)
    if result.note:
        typer.echo(f"note: {result.note}", err=True)
    if explain and result.rerank is not None:
        print_rerank(result)


def _spinner(wanted: bool, message: str) -> contextlib.AbstractContextManager:
    """A spinner on stderr while nothing else shows progress; never in a pipe or a log file."""
    if not wanted or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _cut_note(result: GenerateResult, max_tokens: int) -> str:
    """Why the answer stops mid-way, when it does: the token budget or a full context window."""
    g = result.generation
    if g.finish_reason != "length":
        return ""
    t = g.timings
    if t.generated_tokens >= max_tokens:
        return f"the output was cut at --max-tokens {max_tokens}; pass a larger -n to let it finish"
    return (
        f"the output was cut: the context window is full ({t.prompt_tokens} prompt + {t.generated_tokens} "
        "generated tokens); pass a larger --ctx or a shorter prompt"
    )


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


def print_rerank(result) -> None:
    """The agreement table behind a reranked answer, on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rr = result.rerank
    console = Console(stderr=True)
    tests = Table(title=f"{len(rr.tests)} generated tests")
    tests.add_column("#", justify="right")
    tests.add_column("assert")
    tests.add_column("passed by", justify="right")
    for j, t in enumerate(rr.tests):
        tests.add_row(str(j), escape(t), f"{sum(row[j].passed for row in rr.matrix)}/{len(rr.matrix)}")
    groups = Table(title=escape(f"{rr.method}: groups of candidates (chosen: #{rr.chosen})"))
    for col in ("candidates", "tests passed", "score"):
        groups.add_column(col)
    for g in rr.explain_rows():
        groups.add_row(" ".join(f"#{m}" for m in g["members"]), str(g["tests_passed"]), str(g["score"]))
    console.print(tests, groups)
