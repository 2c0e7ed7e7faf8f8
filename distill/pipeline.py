"""One recipe, the whole chain: corpus → (teacher-logit cache) → distillation → GGUF → quantize →
verify → models.lock entries.

Every stage is resumable or skipped when its output already exists, and `stages` picks a subset,
so the GPU machine (no llama.cpp there) runs corpus/cache/train and this machine runs export.
The recipe is TOML with tables `[corpus]`, `[cache]` (optional), `[distill]` (a distill.recipe
Recipe) and `[export]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import tomllib

from assistant.errors import UsageError
from distill.recipe import Recipe

STAGES = ("corpus", "cache", "train", "export")


@dataclass(frozen=True)
class CorpusStage:
    out: str
    tokenizer: str | None = None  # default: the teacher
    roots: tuple[str, ...] = ()  # default: this interpreter's stdlib and site-packages
    max_tokens: int | None = None
    max_files: int | None = None
    val_fraction: float = 0.02


@dataclass(frozen=True)
class CacheStage:
    out: str
    top_k: int = 64
    batch_size: int = 8
    device: str = "cpu"
    dtype: str | None = None
    backend: str = "torch"  # "llama.cpp": the GGUF teacher itself, on the CPU
    threads: int = 1  # llama.cpp threads


@dataclass(frozen=True)
class ExportStage:
    name: str  # lock name prefix: <name>-<type>
    types: tuple[str, ...] = ("Q8_0",)
    out_dir: str = "models"
    gguf_dir: str | None = None  # where the F16 intermediate goes (default: the run directory)
    license: str | None = None  # default: the teacher's
    verify: bool = True
    lock: str | None = None  # models.lock to write (default: $ASSISTANT_LOCK, else the repo's)


@dataclass(frozen=True)
class Pipeline:
    corpus: CorpusStage
    distill: Recipe
    export: ExportStage
    cache: CacheStage | None = None
    source: str = ""


@dataclass
class PipelineResult:
    stages: list[str] = field(default_factory=list)
    corpus: dict[str, Any] | None = None
    cache: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    export: dict[str, Any] | None = None


def _table(cls, data: dict, where: str):
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**data)
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from None


def load_pipeline(path: Path) -> Pipeline:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"pipeline recipe {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"pipeline recipe {path} is not valid TOML: {e}") from None
    missing = [t for t in ("corpus", "distill", "export") if t not in data]
    if missing:
        raise UsageError(f"{path}: missing table(s) {', '.join(f'[{t}]' for t in missing)}")
    unknown = set(data) - {"corpus", "cache", "distill", "export"}
    if unknown:
        raise UsageError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    recipe = Recipe.from_dict(data["distill"], where=f"{path} [distill]")
    corpus = _table(CorpusStage, data["corpus"], f"{path} [corpus]")
    cache = _table(CacheStage, data["cache"], f"{path} [cache]") if "cache" in data else None
    export = _table(ExportStage, data["export"], f"{path} [export]")
    recipe = recipe.replace(corpus=corpus.out, **({"logit_cache": cache.out} if cache else {}))
    return Pipeline(corpus, recipe, export, cache, str(path))


def run_pipeline(
    p: Pipeline, stages: tuple[str, ...] = STAGES, *, say: Callable[[str], None] = print, display_factory=None
) -> PipelineResult:
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UsageError(f"unknown stage(s) {', '.join(bad)}: choose from {', '.join(STAGES)}")
    result = PipelineResult(list(stages))
    recipe = p.distill

    if "corpus" in stages:
        result.corpus = build_corpus_stage(p, say)
    if "cache" in stages and p.cache is not None:
        result.cache = build_cache_stage(p, say)
    if p.cache is not None and recipe.train_blocks is None and Path(p.cache.out, "manifest.json").is_file():
        from distill.logit_cache import LogitCache

        recipe = recipe.replace(train_blocks=LogitCache.open(p.cache.out, verify=False).n_blocks)
    if "train" in stages:
        from distill.train import train

        say(f"train: {recipe.out}")
        r = train(recipe, display_factory=display_factory)
        result.train = {
            "student": str(r.student_dir),
            "steps": r.steps,
            "tokens": r.tokens,
            "parameters": r.params,
            **r.final,
        }
    if "export" in stages:
        result.export = export_stage(p, Path(recipe.out) / "student", say)
    return result


def build_corpus_stage(p: Pipeline, say: Callable[[str], None]) -> dict:
    from distill.corpus import CorpusConfig, TokenCorpus, build_corpus
    from distill.tokenizer import load_tokenizer

    c = p.corpus
    if Path(c.out, "manifest.json").is_file():
        corpus = TokenCorpus.open(c.out)  # verifies every shard
        say(f"corpus: reusing {c.out}")
        return {"path": c.out, "manifest_sha256": corpus.manifest_sha256, "reused": True}
    say(f"corpus: building {c.out}")
    config = CorpusConfig(
        roots=tuple(Path(r) for r in c.roots),
        val_fraction=c.val_fraction,
        max_tokens=c.max_tokens,
        max_files=c.max_files,
    )
    return build_corpus(load_tokenizer(c.tokenizer or p.distill.teacher), config, c.out).to_dict()


def build_cache_stage(p: Pipeline, say: Callable[[str], None]) -> dict:
    from distill.logit_cache import cache_teacher_logits

    c, r = p.cache, p.distill
    say(f"cache: teacher logits into {c.out}")
    max_blocks = r.train_blocks  # None: every training block
    manifest = cache_teacher_logits(
        p.corpus.out,
        r.teacher,
        c.out,
        block_size=r.block_size,
        k=c.top_k,
        max_blocks=max_blocks,
        batch_size=c.batch_size,
        device=c.device,
        dtype=c.dtype,
        backend=c.backend,
        threads=c.threads,
        note=say,
    )
    return manifest.to_dict()


def export_stage(p: Pipeline, student_dir: Path, say: Callable[[str], None]) -> dict:
    """F16 GGUF (not pinned: an intermediate), then each quantized type pinned in models.lock, then verify."""
    from export.lock_entry import EntrySpec, training_record
    from export.pipeline import GgufRequest, LockTarget, QuantizeRequest, export_gguf, quantize_file, verify_files
    from export.verify import VerifyConfig

    e = p.export
    if not (student_dir / "config.json").is_file():
        raise UsageError(f"no student at {student_dir}: run the train stage first")
    lock = LockTarget(Path(e.lock) if e.lock else None)
    f16 = Path(e.gguf_dir or student_dir.parent) / f"{e.name}.F16.gguf"
    say(f"export: {f16}")
    export_gguf(GgufRequest(model_dir=student_dir, out=f16, outtype="f16", force=True, lock=LockTarget(enabled=False)))
    provenance = (
        json.loads((student_dir / "provenance.json").read_text()) if (student_dir / "provenance.json").is_file() else {}
    )
    description = (
        f"distilled from {provenance.get('teacher', {}).get('source', '?')} by `assistant distill pipeline {p.source}` "
        f"({provenance.get('student', {}).get('parameters', 0) / 1e6:.1f}M parameters, {provenance.get('tokens', 0):,} training tokens, "
        f"recipe {provenance.get('recipe_hash', '?')[:12]})"
    )
    Path(e.out_dir).mkdir(parents=True, exist_ok=True)
    say(f"quantize: {', '.join(e.types)} into {e.out_dir}")
    outcomes = quantize_file(
        QuantizeRequest(
            src=f16,
            types=",".join(e.types),
            out_dir=Path(e.out_dir),
            force=True,
            entry=EntrySpec(name=e.name, roles=("generate", "student"), license=e.license, description=description),
            lock=lock,
            base=p.distill.teacher,  # same tokenizer and chat format: the teacher's stop and prompt style
            provenance={"distilled": training_record(provenance, p.source)},
        )
    )
    files = [str(o.result.path) for o in outcomes]
    out: dict[str, Any] = {"f16": str(f16), "files": files, "lock_names": [o.entry.name for o in outcomes if o.entry]}
    if e.verify:
        say("verify: exported files against the PyTorch student")
        report = verify_files(student_dir, files, VerifyConfig(), lock_path=Path(e.lock) if e.lock else None)
        out["verify"] = report.to_dict()
        (student_dir.parent / "verify.json").write_text(json.dumps(out["verify"], indent=2, default=str))
    return out


def with_overrides(p: Pipeline, overrides: list[str]) -> Pipeline:
    from distill.recipe import apply_overrides

    return replace(p, distill=apply_overrides(p.distill, overrides)) if overrides else p
