"""Options that several commands share, declared once."""

from __future__ import annotations

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="Lock name or path to a .gguf file (default: the lock's default).")
OfflineOpt = typer.Option(False, "--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")
LockOpt = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to use.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
