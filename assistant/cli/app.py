"""The `assistant` command line: argument parsing only; the work lives in the modules."""

from __future__ import annotations

import typer

from assistant.guard import OneLineErrorGroup as _Group

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
from assistant.cli.asserts.command import asserts, eval_asserts  # noqa: E402
from assistant.cli.bench.command import bench  # noqa: E402
from assistant.cli.evaluate.command import eval_humaneval  # noqa: E402
from assistant.cli.fidelity.command import fidelity  # noqa: E402
from assistant.cli.generate import generate  # noqa: E402
from assistant.cli.infill import eval_infill, infill  # noqa: E402
from assistant.cli.models.command import models_list, models_path, models_pull, models_verify  # noqa: E402
from assistant.cli.serve import serve  # noqa: E402
from distill.cli import distill_app  # noqa: E402
from export.cli import export_app  # noqa: E402

app.command("bench")(bench)
app.add_typer(export_app, name="export")
app.add_typer(distill_app, name="distill")
app.command("asserts")(asserts)
eval_app.command("asserts")(eval_asserts)
app.command("fidelity")(fidelity)
app.command("generate")(generate)
models_app.command("list")(models_list)
models_app.command("verify")(models_verify)
models_app.command("path")(models_path)
models_app.command("pull")(models_pull)
eval_app.command("humaneval")(eval_humaneval)
app.command("serve")(serve)
app.command("infill")(infill)
eval_app.command("infill")(eval_infill)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
