"""The one place that turns user errors and Ctrl-C into one line on stderr and an exit code.

Three kinds of failure end here: our own ``AssistantError`` (message and hint), click's usage
errors (an option out of range, an unknown option: click and rich would print a five-line
box), and Ctrl-C. A ``KeyboardInterrupt`` raised with a message (``KeyboardInterrupt("3 of
5 problems saved ...")``) says what was kept; a bare one means nothing was written.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer 0.2x vendors its own click; earlier versions use the click package
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import UsageError as ClickUsageError  # type: ignore[assignment]  # same class, other home

from assistant.errors import AssistantError

INTERRUPTED = "interrupted; nothing was written"
# Modules only the training/export extras install: a laptop install gets a hint, not a traceback.
EXTRA_MODULES = {
    "torch": "distill",
    "transformers": "distill",
    "accelerate": "distill",
    "safetensors": "distill",
    "gguf": "export",
    "numpy": "distill",
    "tokenizers": "distill",
    "matplotlib": "distill",
}


def guarded_invoke(invoke: Callable[[Any], Any], ctx: Any) -> Any:
    try:
        return invoke(ctx)
    except AssistantError as e:
        fail(str(e), e.exit_code)
    except ClickUsageError as e:  # a sub-command's options are parsed inside its group's invoke
        usage_error(e)
    except KeyboardInterrupt as e:
        fail(f"interrupted; {e}" if str(e) else INTERRUPTED, 130)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_MODULES:
            raise
        extra = EXTRA_MODULES[top]
        fail(
            f"this command needs {top}, which the base install leaves out: pip install 'local-code-assistant[{extra}]'",
            1,
        )


def usage_error(e: ClickUsageError) -> NoReturn:
    """click's message on one line, with the help command as the hint."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e  # typer prints the help for a bare group, as it should
    message = e.format_message().strip().rstrip(".")
    if e.ctx is not None:
        message += f"; see '{e.ctx.command_path} --help'"
    fail(message, e.exit_code)


def fail(message: str, code: int) -> NoReturn:
    sys.stdout.flush()
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


class OneLineErrorGroup(TyperGroup):
    # click's Context and typer's share no static type across typer versions: Any, not a lie.
    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as e:  # the group's own options: `assistant --bogus`
            usage_error(e)

    def invoke(self, ctx: Any) -> Any:
        return guarded_invoke(super().invoke, ctx)


class OneLineErrorCommand(TyperCommand):
    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as e:  # a stand-alone command's own options
            usage_error(e)

    def invoke(self, ctx: Any) -> Any:
        return guarded_invoke(super().invoke, ctx)
