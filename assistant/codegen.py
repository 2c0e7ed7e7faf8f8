"""`assistant generate` as a library call: resolve the model, render the prompt, generate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.engine import Engine, EngineConfig, Generation, Sampling, TextCallback
from assistant.lockfile import load_lock
from assistant.model_store import HashCache, ResolvedModel, offline_mode, resolve
from assistant.prompts import DEFAULT_SYSTEM, Request, extract_code


@dataclass(frozen=True)
class GenerateOptions:
    model: str | None = None  # lock name or .gguf path; None is the lock's default
    lock: Path | None = None
    offline: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: Sampling = field(default_factory=Sampling)
    prompt_style: str | None = None  # None: the model's own (from models.lock)
    system: str | None = DEFAULT_SYSTEM
    code_only: bool = False


@dataclass
class GenerateResult:
    model: ResolvedModel
    generation: Generation
    sampling: Sampling
    prompt_style: str
    code: str | None = None

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
        return d


def load_model(name: str | None, lock_path: Path | None = None, offline: bool = False) -> ResolvedModel:
    return resolve(name, load_lock(lock_path), HashCache(), offline=offline_mode(offline))


def generate(request: Request, options: GenerateOptions, on_text: TextCallback | None = None) -> GenerateResult:
    model = load_model(options.model, options.lock, options.offline)
    style = options.prompt_style or model.prompt_style
    sampling = options.sampling
    sampling = Sampling(**{**asdict(sampling), "stop": tuple(dict.fromkeys(sampling.stop + model.stop))})
    with Engine(model, options.engine) as engine:
        prompt = engine.render(request, style=style, system=options.system)
        generation = engine.generate(prompt, sampling, on_text=on_text)
    code = extract_code(generation.text) if options.code_only else None
    return GenerateResult(model, generation, sampling, style, code)
