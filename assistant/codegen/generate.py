"""`assistant generate` as a library call: resolve the model, render the prompt, generate."""

from __future__ import annotations

import ast
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from assistant.codegen.rerank import RerankResult
from assistant.errors import UsageError
from assistant.runtime.engine import Engine, EngineConfig, Generation, Sampling, TextCallback
from assistant.runtime.prompts import DEFAULT_SYSTEM, Request, extract_code
from assistant.store.lockfile import load_lock
from assistant.store.resolve import HashCache, ResolvedModel, offline_mode, resolve


@dataclass(frozen=True)
class GenerateOptions:
    model: str | None = None  # lock name or .gguf path; None is the lock's default
    lock: Path | None = None
    offline: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: Sampling = field(default_factory=Sampling)
    prompt_style: str | None = None  # None: the model's own (from models.lock)
    system: str | None = None  # None: the model's recipe (models.lock), else the tool's default; "": none
    code_only: bool = False
    rerank: str = "none"  # none, codet or cluster
    samples: int = 5  # candidates when reranking
    tests: int = 10  # generated asserts when reranking
    timeout_s: float = 10.0  # per sandboxed program when reranking


@dataclass
class GenerateResult:
    model: ResolvedModel
    generation: Generation
    sampling: Sampling
    prompt_style: str
    code: str | None = None
    rerank: RerankResult | None = None
    candidates: list[Generation] = field(default_factory=list)
    note: str = ""

    @property
    def output(self) -> str:
        return self.code if self.code is not None else self.generation.text

    def to_dict(self) -> dict:
        g = self.generation
        d = {
            "text": g.text,
            "model": {
                "name": self.model.name,
                "path": str(self.model.path),
                "sha256": self.model.sha256,
                "quantization": self.model.gguf.quantization,
                "parameters": self.model.gguf.n_params,
            },
            "prompt_style": self.prompt_style,
            "seed": g.seed,
            "finish_reason": g.finish_reason,
            "sampling": {k: v for k, v in asdict(self.sampling).items() if k != "seed"},
            "timings": asdict(g.timings),
        }
        if self.code is not None:
            d["code"] = self.code
        if self.rerank is not None:
            d["rerank"] = {
                "method": self.rerank.method,
                "chosen": self.rerank.chosen,
                "candidates": len(self.candidates),
                "tests": self.rerank.tests,
                "groups": self.rerank.explain_rows(),
            }
        if self.note:
            d["note"] = self.note
        return d


def load_model(name: str | None, lock_path: Path | None = None, offline: bool = False) -> ResolvedModel:
    """The lock's default when ``name`` is None; a missing pinned model is pulled (with progress) unless offline."""
    return resolve(name, load_lock(lock_path), HashCache(), offline=offline_mode(offline))


def system_message(option: str | None, model: ResolvedModel) -> str:
    """--system if given, else the model's recipe, else the tool's default ("" sends none)."""
    if option is not None:
        return option
    return model.system if model.system is not None else DEFAULT_SYSTEM


def generate(request: Request, options: GenerateOptions, on_text: TextCallback | None = None) -> GenerateResult:
    model = load_model(options.model, options.lock, options.offline)
    style = options.prompt_style or model.prompt_style
    sampling = replace(options.sampling, stop=tuple(dict.fromkeys(options.sampling.stop + model.stop)))
    with Engine(model, options.engine) as engine:
        prompt = engine.render(request, style=style, system=system_message(options.system, model))
        if options.rerank == "none":
            generation = engine.generate(prompt, sampling, on_text=on_text)
            result = GenerateResult(model, generation, sampling, style)
        else:
            result = _reranked(engine, request, prompt, sampling, options, style)
    if options.code_only:
        result.code = extract_code(result.generation.text)
    return result


def _reranked(
    engine: Engine, request: Request, prompt: str, sampling: Sampling, options: GenerateOptions, style: str
) -> GenerateResult:
    """CodeT / cluster reranking of ``options.samples`` candidates for a free-form request."""
    from assistant.codegen.rerank import generate_tests, main_function, rerank, sample_candidates, sandbox_runner
    from assistant.sandbox.limits import Limits

    if sampling.temperature == 0:
        raise UsageError("reranking needs varied candidates", hint="pass --temperature 0.8 (or similar)")
    if sampling.seed is None:
        sampling = replace(sampling, seed=secrets.randbits(31))
    candidates = sample_candidates(engine, prompt, options.samples, sampling)
    codes = [extract_code(g.text) for g in candidates]
    entry = main_function(codes)
    if entry is None:
        return GenerateResult(
            engine.model,
            candidates[0],
            sampling,
            style,
            candidates=candidates,
            note="no candidate defines a function: reranking skipped, first candidate shown",
        )
    tests, used, failed = generate_tests(engine, request.user_message(), entry, options.tests, sampling)
    valid = [c if _parses(c) else None for c in codes]
    runner = sandbox_runner(Limits(timeout_s=options.timeout_s))
    rr = rerank(options.rerank, valid, tests, runner, test_generations=used, test_parse_failures=failed)
    note = "" if tests else "the model wrote no usable asserts: every candidate ties, first valid one shown"
    return GenerateResult(
        engine.model, candidates[rr.chosen], sampling, style, rerank=rr, candidates=candidates, note=note
    )


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return bool(code.strip())
    except SyntaxError:
        return False
