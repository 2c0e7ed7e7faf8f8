"""Terminal and JSON renderings of the export commands' results (rich tables on stdout)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

MB = 1e6


def _console():
    """stdout; piped output gets a wide fixed width so tables are not cut to 80 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def gguf_dict(outcome) -> dict:
    r = outcome.result
    d = {
        "path": str(r.path),
        "outtype": r.outtype,
        "size": r.size,
        "tensors": r.n_tensors,
        "parameters": r.n_params,
        "tied_embeddings": r.tied_embeddings,
        "tokenizer": r.tokenizer,
        "seconds": round(r.seconds, 3),
    }
    if outcome.entry is not None:
        d["lock"] = {"name": outcome.entry.name, "path": str(outcome.lock_path), "sha256": outcome.entry.sha256}
    return d


def print_gguf(outcome) -> None:
    d = gguf_dict(outcome)
    c = _console()
    c.print(
        f"wrote {d['path']}: {d['outtype']}, {d['size'] / MB:.1f} MB, {d['tensors']} tensors, "
        f"{d['parameters']:,} parameters ({'tied' if d['tied_embeddings'] else 'untied'} embeddings), "
        f"tokenizer {d['tokenizer']}, {d['seconds']:.1f} s"
    )
    if "lock" in d:
        c.print(
            f"models.lock: {d['lock']['name']} ({d['lock']['path']}); try `assistant generate --model {d['lock']['name']} ...`"
        )


def quantize_dicts(outcomes) -> list[dict]:
    rows = []
    for o in outcomes:
        r = o.result
        rows.append(
            {
                "path": str(r.path),
                "type": r.qtype,
                "size": r.size,
                "seconds": round(r.seconds, 3),
                "tensor_types": r.type_counts,
                "fallbacks": [{**asdict(n), "reason": n.reason} for n in r.fallbacks],
                "mixed": len(r.notes) - len(r.fallbacks),
                **({"lock_name": o.entry.name, "sha256": o.entry.sha256} if o.entry is not None else {}),
            }
        )
    return rows


def print_quantize(outcomes) -> None:
    from rich.table import Table

    t = Table(title="assistant export quantize")
    for col in ("file", "type", "size MB", "tensor types", "fallbacks", "lock name"):
        t.add_column(col, justify="right" if col in ("size MB", "fallbacks") else "left")
    for row in quantize_dicts(outcomes):
        types = ", ".join(f"{k}×{v}" for k, v in sorted(row["tensor_types"].items()))
        t.add_row(
            Path(row["path"]).name,
            row["type"],
            f"{row['size'] / MB:.1f}",
            types,
            str(len(row["fallbacks"])),
            row.get("lock_name", "-"),
        )
    c = _console()
    c.print(t)
    for row in quantize_dicts(outcomes):
        if row["fallbacks"]:
            names = ", ".join(f["name"] for f in row["fallbacks"][:6])
            more = f" and {len(row['fallbacks']) - 6} more" if len(row["fallbacks"]) > 6 else ""
            f0 = row["fallbacks"][0]
            c.print(
                f"note: {row['type']}: {len(row['fallbacks'])} tensors fell back from {f0['expected']} "
                f"({f0['reason']}): {names}{more}. Keep model dims multiples of 256 for K-quants."
            )


def print_verify(report) -> None:
    from rich.table import Table

    t = Table(
        title=f"assistant export verify: {report.n_prompts} held-out code prompts, {report.n_new} greedy tokens each, "
        f"{report.positions} positions; decode speed at {report.speed_threads} threads"
    )
    cols = (
        "file",
        "type",
        "MB",
        "tokens",
        "greedy=torch",
        "KL/torch",
        "top1/torch",
        "KL/F16",
        "top1/F16",
        "tok/s",
        "result",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("file", "type", "result") else "right")
    for f in report.files:
        total = report.n_new * report.n_prompts
        t.add_row(
            Path(f.path).name,
            f.quantization,
            f"{f.size / MB:.1f}",
            "same" if f.tokenization_identical else f"{len(f.tokenization_mismatches)} differ",
            f"{sum(f.greedy_matched)}/{total}",
            f"{f.kl_mean:.2e}",
            f"{f.top1:.4f}",
            _fmt(f.kl_f16, ".2e"),
            _fmt(f.top1_f16, ".4f"),
            _fmt(f.decode_tps, ".1f"),
            "ok" if f.passed else "FAIL: " + "; ".join(f.problems),
        )
    _console().print(t)


def graft_dict(outcome) -> dict:
    g, p = outcome.graft, outcome.patch
    d = {
        "path": str(g.path),
        "size": g.size,
        "tensors_from_base": len(g.grafted),
        "tensors_trained": len(g.kept),
        "patch": {"path": str(p.path), "size": p.size, "sha256": p.sha256, "bytes_from_base": p.shared_bytes},
    }
    if outcome.entry is not None:
        d["lock"] = {"name": outcome.entry.name, "sha256": outcome.entry.sha256, "installed": str(outcome.installed)}
    return d


def print_graft(outcome) -> None:
    d = graft_dict(outcome)
    c = _console()
    c.print(
        f"wrote {d['path']}: {d['size'] / MB:.1f} MB, {d['tensors_from_base']} tensors from the base, "
        f"{d['tensors_trained']} the student's own"
    )
    p = d["patch"]
    c.print(
        f"patch {p['path']}: {p['size'] / MB:.1f} MB ({p['bytes_from_base'] / MB:.1f} MB come from the base), sha256 {p['sha256'][:12]}"
    )
    if "lock" in d:
        c.print(f"models.lock: {d['lock']['name']}; try `assistant generate --model {d['lock']['name']} ...`")
