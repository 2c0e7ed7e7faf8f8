"""The one place that turns user errors and Ctrl-C into one line on stderr and an exit code."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand, TyperGroup

from assistant.errors import AssistantError

INTERRUPTED = "interrupted; nothing was written"
# Modules only the training/export extras install: a laptop install gets a hint, not a traceback.
EXTRA_MODULES = {"torch": "distill", "transformers": "distill", "accelerate": "distill", "safetensors": "distill", "gguf": "export", "numpy": "distill", "tokenizers": "distill", "matplotlib": "distill"}


def guarded_invoke(invoke, ctx):
    try:
        return invoke(ctx)
    except AssistantError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        fail(INTERRUPTED, 130)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_MODULES:
            raise
        extra = EXTRA_MODULES[top]
        fail(f"this command needs {top}, which the base install leaves out: pip install 'local-code-assistant[{extra}]'", 1)


def fail(message: str, code: int) -> None:
    sys.stdout.flush()
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


class OneLineErrorGroup(TyperGroup):
    def invoke(self, ctx):
        return guarded_invoke(super().invoke, ctx)


class OneLineErrorCommand(TyperCommand):
    def invoke(self, ctx):
        return guarded_invoke(super().invoke, ctx)
