"""What `assistant eval humaneval` shows: a progress bar while running and a summary table."""

from __future__ import annotations

import contextlib
from typing import Iterator

from assistant.evaluation.run import ProblemRecord, Summary


@contextlib.contextmanager
def progress_bar(total: int) -> Iterator:
    """Yields an ``on_problem`` callback that advances a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    passed = [0, 0]
    with Progress(
        TextColumn("[bold]humaneval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("eval", total=total, status="")

        def on_problem(record: ProblemRecord, done: int, total: int) -> None:
            passed[0] += record.correct
            passed[1] += record.n
            status = f"{record.task_id}  samples passing {passed[0]}/{passed[1]}"
            bar.update(task, completed=done, total=total, status=status)

        yield on_problem


def print_summary(summary: Summary, model_name: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=escape(
            f"{model_name}: {summary.problems} problems, n={summary.n}, {summary.config['prompt_style']} prompts"
        )
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary.pass_at_k.items():
        t.add_row(k, f"{v:.4f}")
    for method, value in summary.rerank_pass_at_1.items():
        t.add_row(f"pass@1 after {method} rerank (n={summary.n})", f"{value:.4f}")
    for k, v in sorted(summary.issues.items()):
        t.add_row(f"count: {k.replace('_', ' ')}", str(v))
    Console().print(t)
