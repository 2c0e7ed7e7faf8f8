"""What `assistant models ...` shows: rows as plain dicts (for --json) and rich tables."""

from __future__ import annotations

from pathlib import Path

from assistant.store.lockfile import load_lock
from assistant.store.resolve import HashCache, ModelError, locate, offline_mode, pull, verify


def _human_size(n: float | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _human_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def list_rows(lock_path: Path | None) -> list[dict]:
    from assistant.store.resolve import default_model

    lock = load_lock(lock_path)
    default = default_model(lock)
    rows = []
    for m in lock.models:
        try:
            path = locate(m, lock)
            present = path.is_file()
        except ModelError:
            path, present = None, False
        rows.append(
            {
                "name": m.name,
                "default": m.name == default,
                "teacher": m.name == lock.teacher,
                "best": m.name == lock.best,
                "roles": list(m.roles),
                "format": m.format,
                "quantization": m.quantization,
                "parameters": m.parameters,
                "context_length": m.context_length,
                "license": m.license,
                "prompt_style": m.prompt_style,
                "system": m.system,
                "stop": list(m.stop),
                "capabilities": list(m.capabilities),
                "size": m.size,
                "sha256": m.sha256,
                "pinned": m.pinned,
                "unpinned": m.unpinned,
                "source": m.source.describe(),
                "sources": [s.describe() for s in m.sources],
                "present": present,
                "path": str(path) if path else None,
            }
        )
    return rows


def print_list(rows: list[dict]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="models.lock", box=box.SIMPLE_HEAD)
    table.add_column("name", overflow="fold", min_width=20)
    for col in ("quant", "params", "size", "roles"):
        table.add_column(col, no_wrap=col != "roles")
    table.add_column("state", no_wrap=True)
    for r in rows:
        state = "[yellow]unpinned[/]" if not r["pinned"] else ("[green]present[/]" if r["present"] else "missing")
        table.add_row(
            escape(r["name"])
            + (" *" if r["default"] else "")
            + (" T" if r.get("teacher") else "")
            + (" +" if r.get("best") else ""),
            r["quantization"],
            _human_params(r["parameters"]),
            _human_size(r["size"]),
            " ".join(r["roles"]),
            state,
        )
    Console().print(table)
    Console().print(
        "* default model, T default teacher, + best quality; `--json` adds context, prompt recipe, "
        "capabilities, license, sources, sha256"
    )


def verify_rows(lock_path: Path | None, name: str | None, *, rehash: bool = False) -> list[dict]:
    lock = load_lock(lock_path)
    entries = [lock.get(name)] if name else list(lock.models)
    cache = HashCache()
    rows = []
    for m in entries:
        v = verify(m, lock, cache, rehash=rehash)
        rows.append(
            {
                "name": m.name,
                "status": v.status.value,
                "path": str(v.path) if v.path else None,
                "detail": v.detail,
                "expected_sha256": m.sha256,
                "actual_sha256": v.sha256,
            }
        )
    return rows


def print_verify(rows: list[dict]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colors = {"ok": "green", "missing": "dim", "unpinned": "yellow"}
    table = Table(title="verify", box=box.SIMPLE_HEAD)
    table.add_column("name", overflow="fold", min_width=20)
    table.add_column("status", no_wrap=True)
    table.add_column("path or reason", overflow="fold")
    for r in rows:
        c = colors.get(r["status"], "red")
        detail = r["path"] if r["status"] == "ok" else r["detail"]
        table.add_row(escape(r["name"]), f"[{c}]{escape(r['status'])}[/]", escape(str(detail)))
    Console().print(table)


def pull_row(lock_path: Path | None, name: str, *, pin: bool, offline: bool) -> dict:
    lock = load_lock(lock_path)
    entry = lock.get(name)
    v, lock = pull(entry, lock, HashCache(), offline=offline_mode(offline), pin=pin)
    return {
        "name": name,
        "status": v.status.value,
        "path": str(v.path),
        "sha256": v.sha256,
        "size": entry.size,
        "sources": [s.describe() for s in entry.sources],
    }
