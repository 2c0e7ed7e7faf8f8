"""What runs on a context: text generation (chat or raw) and infilling, as scheduler work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from assistant.runtime.engine import Sampling
from assistant.server.errors import ApiError
from assistant.server.params import Body
from assistant.server.scheduler import ModelHandle, Push, Work, WorkResult

if TYPE_CHECKING:
    from assistant.runtime.engine import Engine
    from assistant.runtime.fim import FimTokens, InfillRequest

MAX_N = 8


def cached_prefix(engine: Engine, tokens: list[int]) -> int:
    """How many leading prompt tokens the context's KV cache already holds."""
    held = engine.llm._input_ids
    n = 0
    for a, b in zip(held, tokens, strict=False):
        if int(a) != b:
            break
        n += 1
    return n


def sampling_for(
    params: Body,
    *,
    max_tokens: int | None,
    default_max: int,
    cap: int,
    model_stop: tuple[str, ...] = (),
) -> Sampling:
    """The engine's sampling from a request's fields (the same names and bounds in all three APIs);
    ``max_tokens`` is clamped to the server's cap."""
    base = Sampling()
    want = default_max if max_tokens is None else max_tokens
    if want < 1:
        raise ApiError(400, f"max_tokens must be at least 1, not {want}", param="max_tokens")
    temperature = params.number("temperature", None, lo=0, hi=2)
    top_p = params.number("top_p", None, lo=0, hi=1)
    top_k = params.integer("top_k", None, lo=0)
    repeat_penalty = params.number("repeat_penalty", None, lo=0)
    return Sampling(
        max_tokens=min(want, cap),
        temperature=base.temperature if temperature is None else temperature,
        top_p=base.top_p if top_p is None else top_p,
        top_k=base.top_k if top_k is None else top_k,
        repeat_penalty=base.repeat_penalty if repeat_penalty is None else repeat_penalty,
        seed=params.integer("seed", None),
        stop=params.stops("stop") + tuple(model_stop),
    )


def check_fits(model: ModelHandle, prompt: str) -> int:
    """The prompt's token count, or 400 before any streaming starts when it cannot fit the context."""
    n = len(model.engine.tokenize(prompt))
    if n >= model.engine.n_ctx:
        raise ApiError(
            400,
            f"the prompt is {n} tokens but the context window is {model.engine.n_ctx}; shorten it",
            code="context_length_exceeded",
        )
    return n


def text_work(prompt: str, sampling: Sampling, n: int = 1) -> Work:
    """Generate ``n`` continuations of ``prompt`` (seeds seed, seed+1, ... when a seed is given)."""

    def run(engine: Engine, push: Push, cancelled: Callable[[], bool]) -> WorkResult:
        tokens = engine.tokenize(prompt)
        cached = cached_prefix(engine, tokens)
        gens = []
        for i in range(n):
            s = replace(sampling, seed=None if sampling.seed is None else sampling.seed + i)
            gens.append(engine.generate(prompt, s, _pusher(push, i), tokens=tokens, cancel=cancelled))
            if gens[-1].finish_reason == "cancelled":
                break
        return WorkResult(gens, cached)

    return run


def _pusher(push: Push, index: int) -> Callable[[str], None]:
    return lambda text: push(index, text)


def infill_work(request: InfillRequest, sampling: Sampling, fim: FimTokens) -> Work:
    def run(engine: Engine, push: Push, cancelled: Callable[[], bool]) -> WorkResult:
        from assistant.runtime.fim import infill

        held = [int(t) for t in engine.llm._input_ids]
        res = infill(engine, request, sampling, fim=fim, on_text=lambda text: push(0, text), cancel=cancelled)
        cached = 0
        for a, b in zip(held, res.prompt.tokens, strict=False):
            if a != b:
                break
            cached += 1
        info: dict[str, Any] = {"prompt": res.prompt}
        return WorkResult([res.generation], cached, info)

    return run


def chat_prompt(engine: Engine, messages: list[dict[str, str]]) -> str:
    """The model's own chat template over the messages, ending with the assistant's turn."""
    formatter = getattr(engine, "_chat", None)
    if formatter is None:
        raise ApiError(400, f"{engine.model.name} has no chat template; use the completions route instead")
    try:
        return str(formatter(messages=messages).prompt)
    except Exception as e:  # template errors are Jinja's own types
        raise ApiError(400, f"the chat template of {engine.model.name} failed on these messages: {e}") from None


def parse_messages(raw: list[Any], param: str = "messages") -> list[dict[str, str]]:
    """OpenAI/Ollama messages: role plus string content (or OpenAI's list of text parts)."""
    if not raw:
        raise ApiError(400, f"'{param}' must be a non-empty array", param=param)
    out = []
    for i, m in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object", param=where)
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool", "developer"):
            raise ApiError(400, f"'{where}.role' must be system, user, assistant or tool, not {role!r}", param=where)
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for p in content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ApiError(
                        400, f'\'{where}.content\' may hold only text parts ({{"type": "text"}})', param=where
                    )
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string", param=where)
        if m.get("images"):
            raise ApiError(400, f"'{where}.images': this server runs text-only models", param=where)
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out
