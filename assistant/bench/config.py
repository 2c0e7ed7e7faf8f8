"""What one `assistant bench` run measures: its settings, checked before any model loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assistant.errors import AssistantError, UsageError
from assistant.runtime.hardware import physical_cores

GIB = 1 << 30


class BenchError(AssistantError):
    """A benchmark could not be set up or its output could not be written."""


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = ()  # lock names or .gguf paths; () = default + every present lock entry
    threads: tuple[int, ...] = ()  # () = physical cores
    prompt_tokens: tuple[int, ...] = (128, 512)
    gen_tokens: int = 128
    reps: int = 5
    warmup: int = 1
    cache_prefix: int | None = (
        None  # shared-prefix length of the prompt-cache test; None = max(prompt_tokens), 0 = skip
    )
    cache_suffix: int = 16  # tokens after the shared prefix that differ between the two requests
    bandwidth_bytes: int = GIB
    bandwidth_reps: int = 5
    lock: Path | None = None
    timeout_s: float = 3600.0  # per worker process

    def resolved_threads(self) -> tuple[int, ...]:
        return self.threads or (physical_cores(),)

    def resolved_cache_prefix(self) -> int:
        return max(self.prompt_tokens) if self.cache_prefix is None else self.cache_prefix

    def n_ctx(self) -> int:
        """The context each worker allocates: room for the longest run and the cache test."""
        need = max(self.prompt_tokens) + self.gen_tokens
        prefix = self.resolved_cache_prefix()
        if prefix:
            need = max(need, prefix + self.cache_suffix + 1)
        return need

    def validate(self) -> None:
        """Reject impossible settings before any model is loaded."""
        if not self.prompt_tokens:
            raise UsageError("--prompt-tokens needs at least one value", hint="e.g. --prompt-tokens 128,512")
        if any(t < 1 for t in self.threads):
            raise UsageError(f"--threads must be 1 or more, not {min(self.threads)}", hint="e.g. --threads 1,2,4")
        if min(self.prompt_tokens) < 2:
            raise UsageError(
                f"--prompt-tokens must be 2 or more, not {min(self.prompt_tokens)}",
                hint="a one-token prompt is decode, not prompt processing",
            )
        if self.gen_tokens < 2:
            raise UsageError(
                f"--gen-tokens must be 2 or more, not {self.gen_tokens}", hint="decode speed needs at least two tokens"
            )
        if self.reps < 1:
            raise UsageError(f"--reps must be 1 or more, not {self.reps}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, not {self.warmup}")
        if self.cache_prefix is not None and self.cache_prefix < 0:
            raise UsageError(
                f"--cache-prefix must be 0 or more, not {self.cache_prefix}", hint="0 skips the prompt-cache test"
            )
        if self.cache_suffix < 1 or self.bandwidth_bytes < (1 << 20) or self.bandwidth_reps < 1:
            raise UsageError("cache_suffix, bandwidth_bytes (>= 1 MiB) and bandwidth_reps must be positive")


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), in the user's order, duplicates dropped."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UsageError(
                f"{option} must be comma-separated integers, not {text!r}", hint=f"e.g. {option} 1,2"
            ) from None
        if value not in values:
            values.append(value)
    if not values:
        raise UsageError(f"{option} needs at least one value", hint=f"e.g. {option} 1,2")
    return tuple(values)


def command_line(cfg: BenchConfig) -> str:
    """The `assistant bench` invocation equivalent to ``cfg`` (recorded in every result)."""
    parts = ["assistant", "bench", *cfg.models]
    parts += ["--threads", ",".join(map(str, cfg.resolved_threads()))]
    parts += ["--prompt-tokens", ",".join(map(str, cfg.prompt_tokens))]
    parts += ["--gen-tokens", str(cfg.gen_tokens), "--reps", str(cfg.reps), "--warmup", str(cfg.warmup)]
    if cfg.cache_prefix is not None:
        parts += ["--cache-prefix", str(cfg.cache_prefix)]
    return " ".join(parts)


def one_line(text: str) -> str:
    return " ".join(text.split())
