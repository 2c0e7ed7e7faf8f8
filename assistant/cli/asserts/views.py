"""What `assistant asserts` and `assistant eval asserts` show: rich tables on the terminal.

Everything that comes from the module, the model or the user (names, paths, errors, code) is
escaped: rich would read ``[/...]`` in it as markup and crash or drop text.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from assistant.asserts.pipeline import AssertsReport
from assistant.asserts.validate import ERRORED, FAILING, KEPT


def print_report(report: AssertsReport, *, stderr: bool = False, show_failing: int = 10) -> None:
    """Per function: generated / kept / failing / errored; then the failing cases and error reasons."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=stderr)
    t = Table(title=escape(f"assertions for {report.module} ({report.model['name']})"))
    t.add_column("function")
    for col in ("generated", "kept", "failing", "errored"):
        t.add_column(col, justify="right")
    for f in report.functions:
        t.add_row(escape(f.name), str(f.generated), str(f.count(KEPT)), str(f.count(FAILING)), str(f.count(ERRORED)))
    totals = report.totals()
    t.add_section()
    t.add_row("total", *(str(totals[k]) for k in ("generated", "kept", "failing", "errored")), style="bold")
    console.print(t)
    for f in report.functions:
        if f.note:
            console.print(f"{f.name}: {f.note}", markup=False, highlight=False, soft_wrap=True)
    if report.import_error:
        console.print(f"[red]the module did not import in the sandbox:[/red] {escape(report.import_error)}")
    reasons = report.errored_reasons()
    if reasons:
        console.print(escape("dropped (errored): " + ", ".join(f"{k} {v}" for k, v in reasons.items())))
    failing = [
        (f.name, c, v) for f in report.functions for c, v in zip(f.candidates, f.verdicts) if v.status == FAILING
    ]
    if failing:
        console.print(f"failing ({len(failing)}; a model mistake or a real bug, not in the test file):")
        for name, c, v in failing[:show_failing]:
            code = " ".join(c.code.splitlines()[-1:])
            console.print(f"  {name}: {code}  # {v.detail or v.reason}", markup=False, highlight=False, soft_wrap=True)
        if len(failing) > show_failing:
            console.print(f"  ... and {len(failing) - show_failing} more (--json lists all)")
    if report.coverage:
        cov = report.coverage
        console.print(
            f"line coverage of {escape(report.module)} by the kept assertions: {cov.covered}/{cov.statements} = "
            f"{cov.percent:.1f}% (importing it alone covers {cov.import_only})"
        )
    console.print(
        f"kept {totals['kept']} of {totals['generated']} candidates ({100 * report.kept_rate:.0f}%)"
        + (f"; wrote {escape(report.out)}" if report.out and report.out != "-" else "")
    )


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator:
    """Yields ``on_step(name, done, total)`` that advances a progress bar on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"[bold]{escape(label)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total, status="")

        def on_step(name: str, done: int, todo: int) -> None:
            bar.update(task, completed=done, total=todo, status=escape(name))

        yield on_step


def print_eval(summary: dict) -> None:
    """The eval's metrics: exact match and similarity against ground truth (and the reference)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=escape(
            f"assertion generation: {summary['model']['name']} on {summary['examples']} {summary['split']} examples"
        )
    )
    t.add_column("against")
    t.add_column("exact match", justify="right")
    t.add_column("similarity", justify="right")
    gt = summary["ground_truth"]
    t.add_row("ground truth", f"{gt['exact_match']:.4f}", f"{gt['similarity']:.4f}")
    ref = summary.get("reference")
    if ref:
        t.add_row(escape(f"reference {ref['name']}"), f"{ref['exact_match']:.4f}", f"{ref['similarity']:.4f}")
        t.add_row(
            escape(f"{ref['name']} vs ground truth"),
            f"{ref['ground_truth']['exact_match']:.4f}",
            f"{ref['ground_truth']['similarity']:.4f}",
        )
    Console().print(t)
    line = f"{summary['ms_per_sample']:.0f} ms per sample; {summary['no_assertion']} answers held no assertion"
    if ref:
        line += f"; reference {ref['ms_per_sample']:.0f} ms per sample"
    Console().print(escape(line))
