"""`assistant distill corpus` and `assistant distill cache-logits`: argument parsing and printing.

The work is in distill.corpus and distill.logit_cache. Importing this module costs only typer:
numpy, tokenizers and torch are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer

DEFAULT_TEACHER = "smollm2-135m-instruct"  # = distill.tokenizer.DEFAULT_TEACHER, kept here so --help stays cheap
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


@contextlib.contextmanager
def _bar(label: str, unit: str) -> Iterator:
    """A rich progress bar on stderr when it is a terminal; yields update(completed, total, status) or None."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit + " {task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=None, status="")

        def update(completed: int, total: int, status: str = "") -> None:
            bar.update(task, completed=min(completed, total), total=total, status=status)

        yield update


def corpus(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (built beside it, then renamed into place)."),
    roots: Optional[List[Path]] = typer.Option(
        None,
        "--roots",
        "--root",
        help="Directory or .py file to collect (repeatable; default: this Python's stdlib and site-packages).",
    ),
    tokenizer: str = typer.Option(
        DEFAULT_TEACHER,
        "--tokenizer",
        help="The teacher's tokenizer: models.lock name, .gguf, model directory, tokenizer.json or id@revision.",
    ),
    val_fraction: float = typer.Option(
        0.02, "--val-fraction", min=0.0, max=0.99, help="Share of files (by content hash) in the validation split."
    ),
    shard_tokens: int = typer.Option(1 << 24, "--shard-tokens", min=1, help="Tokens per shard file."),
    max_files: Optional[int] = typer.Option(None, "--max-files", min=1, help="Stop after this many kept files."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", min=1, help="Stop after the file that brings the total to this many tokens."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out directory."),
    task: str = typer.Option(
        "code", "--task", help="code (a token stream of Python files) or asserts (prompt → assertion examples)."
    ),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset",
        help="--task asserts: the assertion dataset folder (default: the one `assistant eval asserts` uses).",
    ),
    block_size: Optional[int] = typer.Option(
        None, "--block-size", min=2, help="--task asserts: tokens per example row (the training block size)."
    ),
    max_examples: Optional[int] = typer.Option(
        None, "--max-examples", min=1, help="--task asserts: only the first N train examples."
    ),
    max_val_examples: Optional[int] = typer.Option(
        None, "--max-val-examples", min=1, help="--task asserts: only the first N validation examples."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Collect, filter, decontaminate and tokenize Python files into memory-mapped token shards
    (or, with --task asserts, one masked prompt → assertion row per example)."""
    from assistant.atomic import check_output_dir
    from distill.corpus import CorpusConfig, build_corpus, check_out_dir
    from distill.tokenizer import load_tokenizer

    if task != "code":
        _example_corpus(
            task,
            out,
            tokenizer,
            dataset,
            block_size,
            max_examples,
            max_val_examples,
            shard_tokens,
            force,
            json_out,
            code_options={
                "--roots": bool(roots),
                "--max-files": max_files is not None,
                "--max-tokens": max_tokens is not None,
            },
        )
        return
    asserts_only = {
        "--dataset": dataset is not None,
        "--block-size": block_size is not None,
        "--max-examples": max_examples is not None,
        "--max-val-examples": max_val_examples is not None,
    }
    given = [name for name, used in asserts_only.items() if used]
    if given:
        from assistant.errors import UsageError

        raise UsageError(f"{', '.join(given)} only apply to --task asserts")
    config = CorpusConfig(
        roots=tuple(roots or ()),
        val_fraction=val_fraction,
        shard_tokens=shard_tokens,
        max_files=max_files,
        max_tokens=max_tokens,
    )
    config.validate()
    check_out_dir(out.expanduser().resolve(), force)  # before the tokenizer's seconds
    check_output_dir(out)
    tok = load_tokenizer(tokenizer)
    with _bar("corpus", "tokens" if max_tokens else "files") as update:
        progress = None
        if update is not None:

            def progress(scanned: int, total: int, tokens: int) -> None:
                if max_tokens:
                    update(tokens, max_tokens, f"({scanned:,}/{total:,} files)")
                else:
                    update(scanned, total, f"({tokens:,} tokens)")

        result = build_corpus(tok, config, out, force=force, progress=progress)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    d = result.to_dict()
    f, t = d["files"], d["tokens"]
    skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items()) or "none"
    typer.echo(
        f"wrote {d['path']}: {f['kept']} files ({f['train']} train, {f['validation']} validation) of {f['seen']} read, "
        f"{t['train']:,} train + {t['validation']:,} validation tokens, {d['seconds']:.1f} s"
    )
    typer.echo(f"skipped: {skipped}")
    typer.echo(
        f"tokenizer {d['tokenizer']['source']} (sha256 {d['tokenizer']['sha256'][:12]}); manifest sha256 {d['manifest_sha256']}"
    )


def _example_corpus(
    task: str,
    out: Path,
    tokenizer: str,
    dataset: Optional[Path],
    block_size: Optional[int],
    max_examples: Optional[int],
    max_val_examples: Optional[int],
    shard_tokens: int,
    force: bool,
    json_out: bool,
    code_options: dict,
) -> None:
    """`corpus --task asserts`: the example corpus (distill.example_corpus), checks first, tokenizer last."""
    from assistant.atomic import check_output_dir
    from assistant.errors import UsageError
    from distill.corpus import check_out_dir
    from distill.example_corpus import ExampleCorpusConfig, build_example_corpus, dataset_identity
    from distill.tokenizer import load_tokenizer

    given = [name for name, used in code_options.items() if used]
    if given:
        raise UsageError(f"{', '.join(given)} only apply to --task code")
    if block_size is None:
        raise UsageError(f"--task {task} needs --block-size N (tokens per example row, as the training run will use)")
    config = ExampleCorpusConfig(
        block_size=block_size,
        dataset_dir=dataset,
        max_examples=max_examples,
        max_val_examples=max_val_examples,
        shard_tokens=shard_tokens,
        task=task,
    )
    config.validate()
    check_out_dir(out.expanduser().resolve(), force)
    check_output_dir(out)
    dataset_identity(config.dataset())  # a folder that is no dataset fails before the tokenizer's seconds
    tok = load_tokenizer(tokenizer)
    with _bar("examples", "examples") as update:
        result = build_example_corpus(
            tok, config, out, force=force, progress=(lambda done, total: update(done, total)) if update else None
        )
    d = result.to_dict()
    if json_out:
        typer.echo(json.dumps(d, indent=2))
        return
    tr, va = d["splits"]["train"], d["splits"]["validation"]
    typer.echo(
        f"wrote {d['path']}: {tr['n_rows']} train + {va['n_rows']} validation rows of {d['block_size']} + 1 tokens, "
        f"{d['seconds']:.1f} s"
    )
    typer.echo(
        f"dropped (target does not fit): train {tr['dropped']}, validation {va['dropped']}; "
        f"prompts cut from the left: train {tr['truncated']}, validation {va['truncated']}; "
        f"target tokens: train {tr['n_target_tokens']:,}, validation {va['n_target_tokens']:,}"
    )
    typer.echo(
        f"tokenizer {d['tokenizer']['source']} (sha256 {d['tokenizer']['sha256'][:12]}); manifest sha256 {d['manifest_sha256']}"
    )


def cache_logits(
    corpus_dir: Path = typer.Option(
        ..., "--corpus", help="A directory written by `assistant distill corpus` (token or example corpus)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Cache directory (a rerun with the same settings resumes)."),
    block_size: int = typer.Option(..., "--block-size", min=1, help="Tokens per block, as the training run will use."),
    teacher: str = typer.Option(
        DEFAULT_TEACHER, "--teacher", help="models.lock name, id@revision or HF model directory."
    ),
    top_k: int = typer.Option(64, "--top-k", min=1, help="Log-probabilities kept per token."),
    split: str = typer.Option("train", "--split", help="train or validation."),
    max_blocks: Optional[int] = typer.Option(None, "--max-blocks", min=1, help="Only the first N blocks of the split."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Blocks per teacher forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="Teacher weights: float32 (default), bfloat16 or float16."
    ),
    backend: str = typer.Option(
        "torch", "--backend", help="torch (dequantized PyTorch teacher) or llama.cpp (the GGUF itself, CPU)."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="llama.cpp threads (--backend llama.cpp)."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the teacher once over a corpus split and store its top-k log-probabilities per token."""
    from distill.logit_cache import cache_teacher_logits

    with _bar("teacher", "blocks") as update:
        result = cache_teacher_logits(
            corpus_dir,
            teacher,
            out,
            block_size=block_size,
            k=top_k,
            split=split,
            max_blocks=max_blocks,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            backend=backend,
            threads=threads,
            progress=(lambda done, total: update(done, total)) if update else None,
            note=lambda text: typer.echo(f"note: {text}", err=True),
        )
    d = result.to_dict()
    if json_out:
        typer.echo(json.dumps(d, indent=2))
        return
    where = (
        f"{d['tokens']:,} target positions of {d['n_blocks']} examples"
        if d.get("positions") == "targets"
        else f"{d['n_blocks']} blocks x {d['block_size']} tokens"
    )
    typer.echo(
        f"wrote {d['path']}: {where} of {d['split']}, top-{d['k']}, "
        f"{d['bytes'] / 1e6:.1f} MB in {d['shards']} shards ({d['shards_reused']} reused), {d['seconds']:.1f} s"
    )
    typer.echo(
        f"{d['bytes_per_token']} bytes/token vs {d['full_fp16_bytes_per_token']:,} for fp16 logits "
        f"({100 * d['ratio_to_fp16_logits']:.2f}%); teacher {d['teacher']['source']} (sha256 {d['teacher']['sha256'][:12]}, "
        f"{d['teacher'].get('backend', 'torch')})"
    )
