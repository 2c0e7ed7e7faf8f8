"""What a training run shows while it runs: a rich live bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainDisplay:
    """Loss, tokens/s and ETA; validation metrics as they arrive."""

    def __init__(self, recipe, start_step: int, env=None, console: Console | None = None):
        self.recipe = recipe
        self.start_step = start_step
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None

    def start(self, description: str, params: int, notes: list[str], online_teacher: bool) -> None:
        source = "online teacher" if online_teacher else "teacher-logit cache"
        self.console.print(f"student: {description} ({params / 1e6:.1f}M parameters), distilling from the {source}")
        for note in notes:
            self.console.print(f"[yellow]note:[/yellow] {note}")
        if self.start_step:
            self.console.print(f"resuming at step {self.start_step}")
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]distill"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  ce {task.fields[ce]}  {task.fields[tps]} tok/s  {task.fields[val]}"
                ),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=self.recipe.max_steps, completed=self.start_step, loss="-", ce="-", tps="-", val=""
            )

    def update(self, step: int, row: dict[str, Any], val: dict[str, float]) -> None:
        val_text = "  ".join(f"{k} {v:.4g}" for k, v in val.items() if k != "val_ppl")
        if self.progress is not None:
            fields = {"loss": f"{row['loss']:.4f}", "ce": f"{row['ce']:.4f}", "val": val_text}
            if "tokens_per_s" in row:
                fields["tps"] = f"{row['tokens_per_s']:,.0f}"
            self.progress.update(self.task, completed=step, **fields)
        elif step % self.recipe.log_interval == 0 or step == self.recipe.max_steps:
            tps = f"  {row['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in row else ""
            print(
                f"step {step}/{self.recipe.max_steps}  loss {row['loss']:.4f}  ce {row['ce']:.4f}  div {row['div']:.4f}{tps}  {val_text}",
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
