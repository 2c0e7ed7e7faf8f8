"""Resolve a model name from models.lock (or a path) to a verified local file, with its recipe.

Network is touched only when a pinned, downloadable model is missing (the first use of the
default pulls it with progress), never when the file is present and never in offline mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from assistant.store.gguf_file import GGUFInfo, read_gguf
from assistant.store.lockfile import SYSTEM_TEMPLATE, Lock, ModelEntry
from assistant.store.progress import PullProgress
from assistant.store.pull import Downloader, hf_download, pull
from assistant.store.verify import (  # re-exported: the store's public names
    HashCache,
    ModelError,
    Status,
    Verification,
    download_path,
    locate,
    offline_mode,
    raise_for,
    sha256_file,
    verify,
    verify_file,
)

#: Overrides the lock's default model (a lock name or a .gguf path), like --model for every command.
MODEL_ENV = "ASSISTANT_MODEL"

__all__ = [
    "HashCache",
    "ModelError",
    "ResolvedModel",
    "Status",
    "Verification",
    "default_model",
    "download_path",
    "locate",
    "offline_mode",
    "pull",
    "resolve",
    "sha256_file",
    "verify",
    "verify_file",
]


@dataclass(frozen=True)
class ResolvedModel:
    """A model file ready to load, with its prompt recipe (from the lock, else from the GGUF)."""

    path: Path
    sha256: str
    gguf: GGUFInfo
    entry: ModelEntry | None = None  # None for a plain path given by the user

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.path.name

    @property
    def prompt_style(self) -> str:
        if self.entry:
            return self.entry.prompt_style
        return "chat" if self.gguf.chat_template else "completion"

    @property
    def stop(self) -> tuple[str, ...]:
        return self.entry.stop if self.entry else ()

    @property
    def system(self) -> str | None:
        """The recipe's system message: None means "no recipe" (use the tool's default),
        "" means send none so that the chat template's own default applies."""
        if self.entry is None or self.entry.system is None:
            return None
        return "" if self.entry.system == SYSTEM_TEMPLATE else self.entry.system

    @property
    def capabilities(self) -> tuple[str, ...]:
        if self.entry:
            return self.entry.capabilities
        # A plain file: only what its header shows (FIM tokens need the vocabulary, which is not read).
        return (("chat",) if self.gguf.chat_template else ()) + ("completion",)

    @property
    def context_length(self) -> int:
        if self.entry:
            return self.entry.context_length
        return int(self.gguf.context_length or 2048)


def default_model(lock: Lock) -> str:
    """$ASSISTANT_MODEL if set, else the lock's ``default``."""
    return os.environ.get(MODEL_ENV, "").strip() or lock.default


def resolve(
    name_or_path: str | None,
    lock: Lock,
    cache: HashCache,
    *,
    offline: bool = False,
    downloader: Downloader = hf_download,
    progress: PullProgress | None = None,
) -> ResolvedModel:
    """Turn ``--model`` (lock name, or a path to a .gguf) into a verified, loadable file."""
    name = name_or_path or default_model(lock)
    entry = lock.find(name)
    if entry is None:
        candidate = Path(name).expanduser()
        if candidate.suffix == ".gguf" or candidate.exists() or os.sep in name:
            info = read_gguf(candidate)  # raises a clear error for missing/not-GGUF/truncated
            return ResolvedModel(candidate.resolve(), cache.sha256(candidate), info, None)
        if not name_or_path and os.environ.get(MODEL_ENV, "").strip():
            raise ModelError(
                f"{MODEL_ENV}={name!r} is neither a model in {lock.path.name} nor a .gguf path; "
                f"known models: {', '.join(lock.names())}",
                hint=f"fix or unset {MODEL_ENV}",
            )
        lock.get(name)  # raises "unknown model" with the known names
    assert entry is not None
    v = verify(entry, lock, cache)
    if v.status == Status.MISSING and entry.downloadable and entry.pinned:
        v, _ = pull(entry, lock, cache, offline=offline, downloader=downloader, progress=progress)
    raise_for(v, entry)
    assert v.path is not None and v.sha256 is not None
    return ResolvedModel(v.path, v.sha256, read_gguf(v.path), entry)
