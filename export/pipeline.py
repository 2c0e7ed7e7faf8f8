"""The three export commands as library calls: convert, quantize, verify, each recorded in the lock.

Every check that can fail fast (existing output, lock name taken, unknown type, not a Llama
directory) runs before the slow work, so a mistake costs milliseconds, not a conversion.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from assistant.store.lockfile import FileSource, Lock, LockError, ModelEntry, load_lock
from assistant.store.resolve import HashCache, resolve
from export.checkpoint import content_sha256, read_checkpoint
from export.errors import ExportError
from export.files import check_new_output
from export.gguf_writer import OUTTYPES, ExportResult, write_gguf
from export.graft import GraftResult, graft
from export.lock_entry import (
    EntrySpec,
    check_name_free,
    default_name,
    entry_for_path,
    gguf_locator,
    make_entry,
    record,
    tool_versions,
    training_record,
)
from export.patch import PatchResult, make_patch
from export.quantize import QuantResult, check_source, output_path, parse_types, quantize
from export.tokenizer import read_record, tokenizer_for
from export.verify import VerifyConfig, VerifyReport, verify


@dataclass(frozen=True)
class LockTarget:
    path: Path | None = None  # None: $ASSISTANT_LOCK, else the default models.lock
    enabled: bool = True  # False: write no entry (--no-lock)


@dataclass(frozen=True)
class GgufRequest:
    model_dir: Path
    out: Path | None = None  # default: <dir>.<OUTTYPE>.gguf beside the directory
    outtype: str = "f16"
    tokenizer_from: str | None = None  # lock name or GGUF path; default: tokenizer_from.json if present
    pre: str | None = None  # llama.cpp pre-tokenizer name for HF BPE, when it cannot be detected
    force: bool = False
    entry: EntrySpec = field(default_factory=EntrySpec)
    lock: LockTarget = field(default_factory=LockTarget)


@dataclass(frozen=True)
class GgufOutcome:
    result: ExportResult
    entry: ModelEntry | None
    lock_path: Path | None


@dataclass(frozen=True)
class QuantizeRequest:
    src: Path
    types: str  # "Q8_0,Q4_K_M"
    out_dir: Path | None = None  # default: beside the source
    force: bool = False
    threads: int = 0  # 0: llama.cpp's default
    entry: EntrySpec = field(default_factory=EntrySpec)
    lock: LockTarget = field(default_factory=LockTarget)
    base: str | None = None  # lock entry whose prompt style, stop and license carry over when the source has none
    provenance: dict | None = None  # recorded beside the tool's own (e.g. how a distilled student was trained)


@dataclass(frozen=True)
class QuantOutcome:
    result: QuantResult
    entry: ModelEntry | None


def _load_lock(target: LockTarget) -> Lock | None:
    try:
        return load_lock(target.path)
    except LockError:
        if target.enabled:
            raise
        return None  # --no-lock: a missing lock only matters for lock names


def _rel(path: Path, lock: Lock) -> str:
    return Path(os.path.relpath(Path(path).resolve(), lock.root.resolve())).as_posix()


def default_gguf_path(model_dir: Path, outtype: str) -> Path:
    model_dir = Path(model_dir).resolve()
    return model_dir.parent / f"{model_dir.name}.{OUTTYPES[outtype.lower()].name}.gguf"


def export_gguf(
    req: GgufRequest, cache: HashCache | None = None, on_tensor: Callable[[str], None] | None = None
) -> GgufOutcome:
    """Checkpoint directory -> GGUF file -> pinned models.lock entry."""
    cache = cache or HashCache()
    if req.outtype.lower() not in OUTTYPES:
        raise ExportError(f"--outtype {req.outtype!r} is not one of {', '.join(OUTTYPES)}")
    ckpt = read_checkpoint(req.model_dir)
    out = Path(req.out) if req.out else default_gguf_path(req.model_dir, req.outtype)
    check_new_output(out, req.force)
    lock = _load_lock(req.lock)
    name = req.entry.name or default_name(out)
    if req.lock.enabled:
        check_name_free(lock, name, FileSource(_rel(out, lock)), req.force)
    tok = tokenizer_for(
        ckpt.dir,
        ckpt.hparams.n_vocab,
        tokenizer_from=req.tokenizer_from,
        pre=req.pre,
        locate_gguf=gguf_locator(lock, cache),
    )
    result = write_gguf(ckpt, tok, out, outtype=req.outtype, force=req.force, on_tensor=on_tensor)
    if not req.lock.enabled:
        return GgufOutcome(result, None, None)
    provenance = {
        "tool": "assistant export gguf",
        "source_dir": _rel(ckpt.dir, lock),
        "source_sha256": content_sha256(ckpt.dir, cache.sha256),
        "outtype": result.outtype,
        "tokenizer": tok.source,
        **({"tokenizer_sha256": tok.source_sha256} if tok.source_sha256 else {}),
        "versions": tool_versions(),
    }
    spec = replace(
        req.entry,
        name=name,
        description=req.entry.description
        or f"{ckpt.name} exported to GGUF {result.outtype} by `assistant export gguf`",
    )
    entry = make_entry(out, lock, spec, base=tok.teacher, provenance=provenance, cache=cache)
    record(lock, entry, force=req.force)
    return GgufOutcome(result, entry, lock.path)


def quantize_file(
    req: QuantizeRequest, cache: HashCache | None = None, on_type: Callable[[str], None] | None = None
) -> list[QuantOutcome]:
    """One GGUF -> one quantized GGUF per requested type, each with a pinned lock entry."""
    from assistant.store.gguf_file import read_gguf

    cache = cache or HashCache()
    types = parse_types(req.types)
    src = Path(req.src)
    check_source(read_gguf(src))
    outs = [output_path(src, t, req.out_dir) for t in types]
    for out in outs:
        check_new_output(out, req.force)
    lock = _load_lock(req.lock)
    source_entry = entry_for_path(lock, src)
    base = source_entry or (lock.find(req.base) if lock is not None and req.base else None)
    names = [
        (req.entry.name if len(types) == 1 else f"{req.entry.name}-{t.lower()}")
        if req.entry.name
        else default_name(out)
        for t, out in zip(types, outs)
    ]
    if req.lock.enabled:
        for name, out in zip(names, outs):
            check_name_free(lock, name, FileSource(_rel(out, lock)), req.force)
    src_sha = cache.sha256(src)
    outcomes = []
    for t, out, name in zip(types, outs, names):
        if on_type:
            on_type(t)
        result = quantize(src, t, out, force=req.force, threads=req.threads)
        entry = None
        if req.lock.enabled:
            inherited = {
                k: v
                for k, v in (base.provenance if base else {}).items()
                if k in ("source_dir", "source_sha256", "tokenizer", "tokenizer_sha256") and source_entry
            }
            provenance = {
                "tool": "assistant export quantize",
                "quantized_from": {
                    "file": _rel(src, lock),
                    "sha256": src_sha,
                    **({"name": source_entry.name} if source_entry else {}),
                },
                **inherited,
                "fallback_tensors": len(result.fallbacks),
                **(req.provenance or {}),
                "versions": tool_versions(),
            }
            spec = replace(
                req.entry,
                name=name,
                roles=req.entry.roles or (base.roles if base else None),
                description=req.entry.description or f"{src.name} quantized to {t} by `assistant export quantize`",
            )
            entry = make_entry(out, lock, spec, base=base, provenance=provenance, cache=cache)
            lock = record(lock, entry, force=req.force)
        outcomes.append(QuantOutcome(result, entry))
    return outcomes


def verify_files(
    model_dir: Path,
    files: list[str],
    cfg: VerifyConfig = VerifyConfig(),
    *,
    lock_path: Path | None = None,
    cache: HashCache | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> VerifyReport:
    """``files`` are .gguf paths or models.lock names (verified against their pins first)."""
    cache = cache or HashCache()
    model_dir = Path(model_dir)
    read_checkpoint(model_dir)  # a clear error for a non-Llama directory before torch loads
    lock = _load_lock(LockTarget(lock_path, enabled=False))
    paths = []
    for f in files:
        if lock is not None and lock.find(f) is not None:
            paths.append(resolve(f, lock, cache, offline=True).path)
        else:
            paths.append(Path(f))
    tokenizer_gguf = None
    record_ = read_record(model_dir)
    if record_ and not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        ref = record_["gguf"]
        if (model_dir / ref).is_file():
            ref = str(model_dir / ref)  # recorded relative to the model directory
        tokenizer_gguf, _, _ = gguf_locator(lock, cache)(ref)
    return verify(model_dir, paths, cfg, tokenizer_gguf=tokenizer_gguf, on_file=on_file)


@dataclass(frozen=True)
class GraftRequest:
    student: Path  # a quantized student GGUF
    reference: Path  # the same student's F16/F32 export: its values say which tensors are unchanged
    base: str  # the lock name (or GGUF path) of the model the student was cut from
    patch: Path  # where the patch goes (beside the lock, so the repository can ship it)
    out: Path | None = None  # the grafted GGUF; default: <student stem>.grafted.gguf beside it
    student_lock: Path | None = None  # the lock holding the student's entry (default: the target lock)
    trained: Path | None = None  # the distilled student's directory: its provenance.json is recorded
    recipe: str | None = None  # the recipe it was trained with, as the user runs it
    force: bool = False
    entry: EntrySpec = field(default_factory=EntrySpec)
    lock: LockTarget = field(default_factory=LockTarget)


@dataclass(frozen=True)
class GraftOutcome:
    graft: GraftResult
    patch: PatchResult
    entry: ModelEntry | None
    installed: Path | None  # where pull would have put the file (the model store)


def _graft_description(student: Path, entry: ModelEntry | None, trained: dict, base: str) -> str:
    if trained:
        d = trained["distilled"]
        how = f"`assistant distill train --recipe {d['recipe']}`" if d["recipe"] else "`assistant distill train`"
        return (
            f"distilled from {d['teacher'] or '?'} by {how} ({d['steps']} steps, {d['tokens']:,} tokens), "
            f"grafted onto {base}"
        )
    return entry.description if entry else f"{student.name} grafted onto {base}"


def graft_student(req: GraftRequest, cache: HashCache | None = None) -> GraftOutcome:
    """Quantized student -> grafted onto its base -> a patch over the base -> a lock entry that pulls it."""
    import shutil

    from assistant.store.lockfile import PatchSource
    from assistant.store.verify import download_path

    cache = cache or HashCache()
    student = Path(req.student)
    out = Path(req.out) if req.out else student.with_name(student.name.removesuffix(".gguf") + ".grafted.gguf")
    check_new_output(out, req.force)
    check_new_output(Path(req.patch), req.force)
    lock = _load_lock(req.lock)
    if lock is None:
        raise ExportError("a graft needs models.lock to find its base", hint="pass --lock PATH")
    base = resolve(req.base, lock, cache)
    if req.lock.enabled and base.entry is None:
        raise ExportError(
            f"the base {req.base} is not a models.lock entry: a patch can only be pinned over a lock entry",
            hint="pin the base in models.lock first, or pass --no-lock",
        )
    name = req.entry.name or default_name(student)
    if req.lock.enabled:
        check_name_free(lock, name, FileSource(_rel(out, lock)), req.force)
    grafted = graft(student, Path(req.reference), base.path, out, force=req.force)
    patch = make_patch(out, base.path, Path(req.patch), force=req.force)
    entry = installed = None
    if req.lock.enabled:
        assert base.entry is not None
        student_entry = entry_for_path(load_lock(req.student_lock) if req.student_lock else lock, student)
        inherit = student_entry or base.entry
        trained = {}
        if req.trained is not None:
            record_file = Path(req.trained) / "provenance.json"
            try:
                trained = {"distilled": training_record(json.loads(record_file.read_text()), req.recipe or "")}
            except (OSError, ValueError) as e:
                raise ExportError(f"cannot read the training record {record_file}: {e}") from None
        provenance = {
            **(student_entry.provenance if student_entry else {}),
            **trained,
            "grafted": {
                "tool": "assistant export graft",
                "base": base.entry.name,
                "base_sha256": base.sha256,
                "student": {"file": _rel(student, lock), "sha256": cache.sha256(student)},
                "tensors_from_base": len(grafted.grafted),
                "tensors_trained": len(grafted.kept),
                "bytes_from_base": patch.shared_bytes,
                "patch_bytes": patch.size,
            },
            "versions": tool_versions(),
        }
        spec = replace(
            req.entry,
            name=name,
            roles=req.entry.roles or (student_entry.roles if student_entry else None),
            description=req.entry.description or _graft_description(student, student_entry, trained, base.entry.name),
        )
        entry = make_entry(out, lock, spec, base=inherit, provenance=provenance, cache=cache)
        entry = replace(
            entry,
            source=PatchSource(base.entry.name, _rel(Path(req.patch), lock), patch.size, patch.sha256),
            system=inherit.system,
            capabilities=inherit.capabilities,
        )
        lock = record(lock, entry, force=req.force)
        installed = download_path(entry)
        installed.parent.mkdir(parents=True, exist_ok=True)
        tmp = installed.with_name(installed.name + ".graft.part")
        shutil.copyfile(out, tmp)
        os.replace(tmp, installed)
    return GraftOutcome(grafted, patch, entry, installed)
