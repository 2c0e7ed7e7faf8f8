"""What `assistant fidelity` shows: a progress bar, two tables (agreement, distributions), a plot."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from assistant import plots
from assistant.errors import AssistantError
from assistant.fidelity.run import FidelityReport, RelationSummary


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def arrow(a: str, b: str) -> str:
    return f"{a} → {b}"


def _skips(s: RelationSummary) -> str:
    if not s.skipped:
        return "0"
    return f"{sum(s.skipped.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) + ")"


def _keeps(side, executes: bool) -> str:
    return f"{pct(side.keeps_exact)} / {pct(side.keeps_exec)}" if executes else pct(side.keeps_exact)


def _agree(s: RelationSummary, executes: bool, which: str) -> str:
    exact = getattr(s, f"agree_exact_{which}")
    if not executes:
        return pct(exact)
    return f"{pct(exact)} / {pct(getattr(s, f'agree_exec_{which}'))}"


def agreement_rows(report: FidelityReport) -> list[list[str]]:
    """Rows of the agreement table (also used for docs): relation first, 'original' and 'overall' rows."""
    ex = report.executes
    rows = []
    o = report.original
    rows.append(
        [
            "original",
            str(o.n),
            "—",
            _agree(o, ex, "original"),
            "—",
            "—",
            "—",
            pct(o.teacher.pass_original),
            pct(o.student.pass_original),
            "—",
            "—",
        ]
    )
    for s in [*report.relations, report.overall]:
        rows.append(
            [
                s.relation,
                str(s.n),
                _skips(s),
                _agree(s, ex, "original"),
                _agree(s, ex, "transformed"),
                _keeps(s.teacher, ex),
                _keeps(s.student, ex),
                arrow(pct(s.teacher.pass_original), pct(s.teacher.pass_transformed)),
                arrow(pct(s.student.pass_original), pct(s.student.pass_transformed)),
                ratio(s.drop_ratio),
                ratio(s.flip_ratio),
            ]
        )
    return rows


AGREEMENT_COLUMNS = [
    "relation",
    "n",
    "skipped",
    "S=T orig",
    "S=T trans",
    "T keeps",
    "S keeps",
    "pass T",
    "pass S",
    "drop S/T",
    "flips S/T",
]
DIST_COLUMNS = ["relation", "n", "positions", "JSD (bits)", "top-1 agree", "high-conf kept", "calib. gap"]


def distribution_rows(report: FidelityReport) -> list[list[str]]:
    rows = []
    o = report.original.dist_original
    rows.append(
        [
            "original",
            str(report.original.n),
            str(o.positions if o else 0),
            num(o.jsd if o else None),
            pct(o.top1 if o else None),
            pct(o.hcp if o else None),
            num(o.cae if o else None, 3),
        ]
    )
    for s in [*report.relations, report.overall]:
        a, b = s.dist_original, s.dist_transformed
        get = lambda d, k: getattr(d, k) if d else None
        rows.append(
            [
                s.relation,
                str(s.n),
                str(b.positions if b else 0),
                arrow(num(get(a, "jsd")), num(get(b, "jsd"))),
                arrow(pct(get(a, "top1")), pct(get(b, "top1"))),
                arrow(pct(get(a, "hcp")), pct(get(b, "hcp"))),
                arrow(num(get(a, "cae"), 3), num(get(b, "cae"), 3)),
            ]
        )
    return rows


def markdown(report: FidelityReport) -> str:
    """Both tables as GitHub markdown (for docs/)."""
    out = []
    tables = [(AGREEMENT_COLUMNS, agreement_rows(report))]
    if report.vocab.shared:
        tables.append((DIST_COLUMNS, distribution_rows(report)))
    else:
        out += [f"Distribution metrics skipped: {report.vocab.detail}.", ""]
    for cols, rows in tables:
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def print_report(report: FidelityReport) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    t, s = report.teacher["name"], report.student["name"]
    kind = "exact / execution" if report.executes else "exact"
    a = Table(
        title=escape(
            f"fidelity of {s} (S) to {t} (T): {report.task}, {report.items} items, {report.prompt_style} prompts"
        ),
        caption=f"agreement and 'keeps' ({kind}) are shares of items; pass X → Y: original → transformed; "
        "ratios: student's drop (or flip rate) over the teacher's",
    )
    for c in AGREEMENT_COLUMNS:
        a.add_column(c, justify="left" if c in ("relation", "skipped") else "right")
    for r in agreement_rows(report):
        a.add_row(*map(escape, r))
    console.print(a)
    if not report.vocab.shared:
        console.print(
            escape(f"distribution metrics skipped: {report.vocab.detail} (teacher {t}, student {s})"), style="yellow"
        )
        return
    d = Table(
        title="next-token distributions along the teacher's greedy output (original → transformed)",
        caption=f"JSD in bits (0 = identical); high-conf kept: teacher p ≥ {report.config['confidence']} and the "
        "student keeps that token as sure; calib. gap: mean |p_T − p_S| of the teacher's token by confidence bin",
    )
    for c in DIST_COLUMNS:
        d.add_column(c, justify="left" if c == "relation" else "right")
    for r in distribution_rows(report):
        d.add_row(*map(escape, r))
    console.print(d)


@contextlib.contextmanager
def progress() -> Iterator:
    """Yields (set_total, on_variant) callbacks driving a rich progress bar on stderr."""
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
        TextColumn("[bold]fidelity"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("fidelity", total=None, status="preparing variants")

        def set_total(n: int) -> None:
            bar.update(task, total=n, status="")

        def on_variant(variant, done: int, total: int) -> None:
            bar.update(task, completed=done, status=f"{variant.item_id} {variant.relation}")

        yield set_total, on_variant


class PlotError(AssistantError):
    """--plot cannot be written."""


def require_matplotlib() -> None:
    plots.require_matplotlib(PlotError)


def plot_png(report: FidelityReport) -> bytes:
    """Three panels: each model keeping its own output, JSD per relation, calibration alignment."""
    import io

    plt = plots.pyplot(PlotError)

    rels = [r for r in report.relations if r.n] or report.relations  # relations that applied to no item: left out
    names = [r.relation for r in rels]
    x = list(range(len(rels)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    ax = axes[0]
    w = 0.27
    keep = lambda side: (side.keeps_exec if report.executes else side.keeps_exact) or 0.0
    ax.bar([i - w for i in x], [keep(r.teacher) for r in rels], w, label="teacher keeps its output")
    ax.bar(x, [keep(r.student) for r in rels], w, label="student keeps its output")
    agree = [(r.agree_exec_transformed if report.executes else r.agree_exact_transformed) or 0.0 for r in rels]
    ax.bar([i + w for i in x], agree, w, label="student = teacher (transformed)")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylim(0, 1.35)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of items" + (" (execution)" if report.executes else " (exact)"))
    ax.set_title("prediction agreement per relation")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[1]
    if report.vocab.shared:
        j0 = [(r.dist_original.jsd if r.dist_original else 0) or 0 for r in rels]
        j1 = [(r.dist_transformed.jsd if r.dist_transformed else 0) or 0 for r in rels]
        ax.bar([i - 0.2 for i in x], j0, 0.4, label="original")
        ax.bar([i + 0.2 for i in x], j1, 0.4, label="transformed")
        ax.set_ylim(0, max(j0 + j1 + [1e-3]) * 1.3)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    else:
        ax.text(0.5, 0.5, report.vocab.detail, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("mean JSD per token (bits)")
    ax.set_title("teacher vs student next-token distributions")
    ax = axes[2]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for label, dist in (("original", report.overall.dist_original), ("transformed", report.overall.dist_transformed)):
        if dist is None:
            continue
        pts = [(c["teacher"], c["student"]) for c in dist.curve() if c["n"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("teacher's probability of its token (binned)")
    ax.set_ylabel("student's probability of that token")
    ax.set_title("calibration alignment")
    ax.legend(fontsize=8)
    fig.suptitle(f"{report.student['name']} vs {report.teacher['name']}: {report.task}, {report.items} items")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_plot(report: FidelityReport, path: Path) -> None:
    from assistant.atomic import atomic_write_bytes

    data = plot_png(report)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise PlotError(f"cannot write {path}: {e.strerror or e}", hint="choose a writable path") from None
