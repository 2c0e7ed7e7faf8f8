"""Which models a bench run measures, and the bytes each must read from memory per decoded token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from assistant.bench.config import BenchConfig, one_line
from assistant.errors import AssistantError, UsageError
from assistant.store.gguf_file import GGUFInfo
from assistant.store.lockfile import Lock
from assistant.store.resolve import HashCache, ModelError, ResolvedModel, locate, resolve

KV_TYPE_BYTES = 2  # llama.cpp's default KV cache type is F16


@dataclass(frozen=True)
class Target:
    """One model to benchmark, or why it cannot be (reported in its rows)."""

    name: str
    model: ResolvedModel | None
    error: str | None = None


def select_targets(names: Sequence[str], lock: Lock, cache: HashCache) -> list[Target]:
    """Named models, or the default plus every lock entry whose file is present.

    An unknown name or a path that does not exist is a usage error (raised); a model that
    exists but does not verify or parse becomes a Target with an error, so the others run.
    """
    if not names:
        names = [lock.default]
        for entry in lock.models:
            try:
                present = locate(entry, lock).is_file()
            except ModelError:
                present = False
            if present and entry.name not in names:
                names.append(entry.name)
    for name in names:
        if lock.find(name) is None and not Path(name).expanduser().exists():
            resolve(name, lock, cache, offline=True)  # raises "unknown model ..." or "not found"
            raise UsageError(f"unknown model {name!r}")  # pragma: no cover - resolve always raises here
    targets: list[Target] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            targets.append(Target(name, resolve(name, lock, cache, offline=True)))
        except AssistantError as e:
            targets.append(Target(name, None, one_line(str(e))))
    return targets


def check_context(targets: Sequence[Target], cfg: BenchConfig) -> None:
    """Every loadable model must hold the longest prompt plus the generated tokens."""
    need = cfg.n_ctx()
    if need == max(cfg.prompt_tokens) + cfg.gen_tokens:
        why = f"--prompt-tokens {max(cfg.prompt_tokens)} + --gen-tokens {cfg.gen_tokens}"
        fix = "lower --prompt-tokens or --gen-tokens"
    else:
        why = f"--cache-prefix {cfg.resolved_cache_prefix()} + {cfg.cache_suffix} differing tokens + 1"
        fix = "lower --cache-prefix"
    for t in targets:
        if t.model is None:
            continue
        limit = t.model.context_length
        if need > limit:
            raise UsageError(
                f"{t.name} has a {limit}-token context but the run needs {need} ({why})", hint=f"{fix} to fit {limit}"
            )


@dataclass(frozen=True)
class ModelCost:
    """Bytes that must come from memory for one decoded token (the roofline's numerator)."""

    weight_bytes: int  # every weight matrix once; of an untied input embedding only one row
    kv_bytes_per_position: int | None  # K and V of one context position over all layers

    def bytes_per_token(self, context: float) -> float:
        return self.weight_bytes + (self.kv_bytes_per_position or 0) * context


def _arch_int(info: GGUFInfo, key: str) -> int | None:
    value = info.arch_value(key)
    if isinstance(value, list):  # per-layer values (some architectures): take the largest
        value = max(value) if value else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_cost(info: GGUFInfo) -> ModelCost:
    """From the GGUF tensor table; the input embedding is a row lookup unless it is tied."""
    sizes = {t.name: t.n_bytes for t in info.tensors}
    if any(v is None for v in sizes.values()) or not sizes:
        weights = info.file_size - info.data_offset  # a tensor type we cannot size: use the data section
    else:
        weights = sum(v for v in sizes.values() if v is not None)
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        if embd is not None and "output.weight" in sizes and len(embd.shape) == 2:
            weights -= sizes["token_embd.weight"] or 0
            weights += (sizes["token_embd.weight"] or 0) // max(embd.shape[1], 1)  # one row per token
    layers = _arch_int(info, "block_count")
    heads = _arch_int(info, "attention.head_count")
    kv_heads = _arch_int(info, "attention.head_count_kv") or heads
    width = _arch_int(info, "embedding_length")
    kv = None
    if layers and heads and kv_heads and width:
        k_dim = _arch_int(info, "attention.key_length") or width // heads
        v_dim = _arch_int(info, "attention.value_length") or width // heads
        kv = layers * kv_heads * (k_dim + v_dim) * KV_TYPE_BYTES
    return ModelCost(int(weights), kv)
