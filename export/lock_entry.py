"""models.lock entries for exported and quantized files.

Every file the export stage writes is pinned at once (size, sha256, a `file` source relative
to the lock), so `assistant generate --model NAME` verifies and loads it with no extra step,
and its provenance says what it was made from and with which tools.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import FileSource, Lock, ModelEntry, save_lock
from assistant.store.resolve import HashCache, ModelError, locate, resolve
from export.errors import ExportError

#: Distributions whose versions decide what an exported file contains.
TOOL_PACKAGES = ("gguf", "llama-cpp-python", "torch", "transformers")
DEFAULT_ROLES = ("generate",)
UNKNOWN_LICENSE = "unknown"


@dataclass(frozen=True)
class EntrySpec:
    """What the user chose for the lock entry; everything else is read from the file."""

    name: str | None = None  # default: from the file name
    roles: tuple[str, ...] | None = None  # default: ("generate",); quantize keeps its source's roles
    license: str | None = None  # default: the base entry's (the teacher whose tokenizer it shares), else "unknown"
    description: str = ""


def tool_versions() -> dict[str, str]:
    versions = {}
    for pkg in TOOL_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def training_record(provenance: dict, recipe_path: str) -> dict:
    """What models.lock keeps about how a student was made (the full record is its run's provenance.json)."""
    return {
        "recipe": recipe_path,
        "recipe_hash": provenance.get("recipe_hash", ""),
        "teacher": provenance.get("teacher", {}).get("source", ""),
        "teacher_sha256": provenance.get("teacher", {}).get("sha256") or "",
        "corpus_manifest_sha256": provenance.get("corpus", {}).get("manifest_sha256", ""),
        "logit_cache_manifest_sha256": (provenance.get("logit_cache") or {}).get("manifest_sha256", ""),
        "steps": provenance.get("steps", 0),
        "tokens": provenance.get("tokens", 0),
        "final_metrics": provenance.get("final_metrics", {}),
    }


def default_name(path: Path) -> str:
    """``student.Q4_K_M.gguf`` -> ``student-q4_k_m``: predictable, and unique per file."""
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return stem.lower().replace(".", "-").replace(" ", "-")


def entry_for_path(lock: Lock | None, path: Path) -> ModelEntry | None:
    """The lock entry whose file is ``path``, if any (so a copied tokenizer brings its prompt style)."""
    if lock is None:
        return None
    target = Path(path).resolve()
    for entry in lock.models:
        try:
            if locate(entry, lock) == target:
                return entry
        except ModelError:
            continue
    return None


def gguf_locator(lock: Lock | None, cache: HashCache) -> Callable[[str], tuple[Path, ModelEntry | None, str]]:
    """``ref`` (a lock name or a .gguf path) -> (verified path, its lock entry or None, sha256)."""

    def locate_gguf(ref: str) -> tuple[Path, ModelEntry | None, str]:
        if lock is not None and lock.find(ref) is not None:
            resolved = resolve(ref, lock, cache, offline=True)  # verifies size and sha256
            return resolved.path, resolved.entry, resolved.sha256
        path = Path(ref).expanduser()
        if not path.is_file():
            known = f"known names: {', '.join(lock.names())}" if lock is not None else "no models.lock loaded"
            raise ExportError(f"tokenizer source {ref!r} is neither a models.lock name nor a GGUF file", hint=known)
        read_gguf(path)  # a clear error for a non-GGUF
        return path.resolve(), entry_for_path(lock, path), cache.sha256(path)

    return locate_gguf


def make_entry(
    path: Path,
    lock: Lock,
    spec: EntrySpec,
    *,
    base: ModelEntry | None,
    provenance: dict[str, Any],
    cache: HashCache,
) -> ModelEntry:
    """A pinned entry for ``path``; prompt style, system message, stop, capabilities and license come
    from ``base`` when given (an export of a student keeps its teacher's prompt recipe)."""
    info = read_gguf(path)
    rel = Path(os.path.relpath(Path(path).resolve(), lock.root.resolve())).as_posix()
    if base is not None:
        prompt_style, system, stop, capabilities = base.prompt_style, base.system, base.stop, base.capabilities
        license = base.license
    else:
        prompt_style, system, stop, capabilities = ("chat" if info.chat_template else "completion"), None, (), ()
        license = UNKNOWN_LICENSE
    return ModelEntry(
        name=spec.name or default_name(Path(path)),
        roles=tuple(spec.roles or DEFAULT_ROLES),
        format="gguf",
        quantization=info.quantization,
        parameters=info.n_params,
        context_length=int(info.context_length or 2048),
        license=spec.license or license,
        prompt_style=prompt_style,
        system=system,
        capabilities=tuple(capabilities),
        source=FileSource(rel),
        stop=tuple(stop),
        size=Path(path).stat().st_size,
        sha256=cache.sha256(Path(path)),
        description=spec.description,
        provenance=provenance,
    )


def check_name_free(lock: Lock, name: str, source: FileSource, force: bool) -> None:
    """An entry of the same name for another file is only replaced with --force."""
    existing = lock.find(name)
    if existing is not None and not force and existing.source != source:
        raise ExportError(
            f"models.lock already has a model named {name!r} ({existing.source.describe()})",
            hint="choose another --name, or pass --force to replace that entry",
        )


def record(lock: Lock, entry: ModelEntry, *, force: bool = False) -> Lock:
    """Add or replace ``entry`` through the lock module and save the lock atomically."""
    check_name_free(lock, entry.name, entry.source, force)
    new = lock.with_entry(entry)
    save_lock(new)
    return new
