"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions (``suffix`` is real FIM)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from assistant.server.errors import ApiError
from assistant.server.jobs import MAX_N, chat_prompt, check_fits, infill_work, parse_messages, sampling_for, text_work
from assistant.server.params import Body
from assistant.server.plumbing import endpoint, read_body, sse, stream, wait_result
from assistant.server.scheduler import Cancelled, ModelHandle, Ticket, WorkResult
from assistant.server.state import ServerState

DEFAULT_COMPLETION_TOKENS = 256


def _usage(result: WorkResult) -> dict[str, int]:
    prompt = result.generations[0].timings.prompt_tokens if result.generations else 0
    done = sum(g.timings.generated_tokens for g in result.generations)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _sampling(state: ServerState, model: ModelHandle, body: Body, default_max: int | None) -> Any:
    max_tokens = body.integer("max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = body.integer("max_tokens", None)
    for unsupported in ("logprobs", "echo", "tools", "functions", "response_format", "best_of"):
        v = body.data.get(unsupported)
        if v not in (None, False, 0, [], "text") and not (unsupported == "response_format" and v == {"type": "text"}):
            raise ApiError(400, f"'{unsupported}' is not supported by this server", param=unsupported)
    body.number("presence_penalty", 0.0, lo=-2, hi=2)  # accepted for compatibility; not applied
    body.number("frequency_penalty", 0.0, lo=-2, hi=2)
    return sampling_for(
        body,
        max_tokens=max_tokens,
        default_max=default_max or state.cap(model),
        cap=state.cap(model),
        model_stop=model.resolved.stop,
    )


def routes(state: ServerState) -> list[Route]:
    def model_card(m: ModelHandle) -> dict[str, Any]:
        return {
            "id": m.name,
            "object": "model",
            "created": int(state.started),
            "owned_by": "local",
            "meta": {
                "fim": m.fim is not None,
                "n_ctx": m.engine.n_ctx,
                "sha256": m.resolved.sha256,
                "quantization": m.resolved.gguf.quantization,
            },
        }

    @endpoint
    async def models(request: Request) -> Response:
        state.model(None)  # 503 while loading
        return JSONResponse({"object": "list", "data": [model_card(m) for m in state.models.values()]})

    def _stream_options(body: Body) -> bool:
        return body.object("stream_options").flag("include_usage", False)

    @endpoint
    async def chat(request: Request) -> Response:
        body = await read_body(request)
        model = state.model(body.text("model"))
        messages = parse_messages(body.array("messages"))
        n = body.integer("n", 1, lo=1, hi=MAX_N) or 1
        streaming = body.flag("stream", False)
        include_usage = _stream_options(body)
        sampling = _sampling(state, model, body, None)
        prompt = chat_prompt(model.engine, messages)
        check_fits(model, prompt)
        state.log_prompt("/v1/chat/completions", prompt)
        ticket = state.sched.submit(
            model, text_work(prompt, sampling, n), client=state.client_key(request), prompt_key=prompt
        )
        cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        if streaming:
            return stream(ticket, _chat_chunks(ticket, cid, created, model.name, n, include_usage), "text/event-stream")
        result = await wait_result(request, ticket)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": None,
                "finish_reason": g.finish_reason,
            }
            for i, g in enumerate(result.generations)
        ]
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model.name,
                "choices": choices,
                "usage": _usage(result),
                "system_fingerprint": _fingerprint(model),
                "seed": result.generations[0].seed,
            }
        )

    @endpoint
    async def completions(request: Request) -> Response:
        body = await read_body(request)
        model = state.model(body.text("model"))
        raw_prompt = body.data.get("prompt")
        if isinstance(raw_prompt, list) and len(raw_prompt) == 1 and isinstance(raw_prompt[0], str):
            raw_prompt = raw_prompt[0]
        if raw_prompt is None:
            raw_prompt = ""
        if not isinstance(raw_prompt, str):
            raise ApiError(400, "'prompt' must be a string (or an array of one string)", param="prompt")
        suffix = body.text("suffix")
        n = body.integer("n", 1, lo=1, hi=MAX_N) or 1
        streaming = body.flag("stream", False)
        include_usage = _stream_options(body)
        sampling = _sampling(state, model, body, DEFAULT_COMPLETION_TOKENS)
        client = state.client_key(request)
        state.log_prompt("/v1/completions", raw_prompt + (f" [suffix] {suffix}" if suffix is not None else ""))
        if suffix is not None:
            if model.fim is None:
                raise ApiError(
                    400,
                    f"{model.name} has no fill-in-the-middle tokens, so 'suffix' cannot be used; "
                    "serve a FIM-capable code model such as qwen2.5-coder-0.5b-instruct",
                    param="suffix",
                )
            if n != 1:
                raise ApiError(400, "'n' must be 1 with 'suffix'", param="n")
            from assistant.runtime.fim import InfillRequest

            work = infill_work(InfillRequest(raw_prompt, suffix), sampling, model.fim)
            ticket = state.sched.submit(model, work, client=client, prompt_key=raw_prompt, infill=True)
        else:
            if not raw_prompt.strip():
                raise ApiError(400, "'prompt' is empty", param="prompt")
            check_fits(model, raw_prompt)
            ticket = state.sched.submit(model, text_work(raw_prompt, sampling, n), client=client, prompt_key=raw_prompt)
        cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        if streaming:
            return stream(
                ticket, _completion_chunks(ticket, cid, created, model.name, n, include_usage), "text/event-stream"
            )
        try:
            result = await wait_result(request, ticket)
        except Cancelled as e:
            if e.reason != "superseded":
                raise
            result = WorkResult([])
        choices = [
            {"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
            for i, g in enumerate(result.generations)
        ] or [{"index": 0, "text": "", "logprobs": None, "finish_reason": "cancelled"}]
        return JSONResponse(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model.name,
                "choices": choices,
                "usage": _usage(result),
                "system_fingerprint": _fingerprint(model),
            }
        )

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]


def _fingerprint(model: ModelHandle) -> str:
    return "sha256-" + model.resolved.sha256[:16]


async def _final(ticket: Ticket) -> tuple[WorkResult | None, str | None]:
    try:
        return await ticket.result, None
    except Cancelled as e:
        return None, e.reason
    except ApiError as e:
        return None, e.message
    except Exception as e:
        return None, str(e)


async def _chat_chunks(ticket: Ticket, cid: str, created: int, model: str, n: int, usage: bool) -> AsyncIterator[bytes]:
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    for i in range(n):
        yield sse(
            {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        )
    async for i, text in ticket.stream():
        yield sse({**head, "choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]})
    result, problem = await _final(ticket)
    if result is None:
        yield sse({"error": {"message": f"generation ended: {problem}", "type": "server_error"}})
    else:
        for i, g in enumerate(result.generations):
            yield sse({**head, "choices": [{"index": i, "delta": {}, "finish_reason": g.finish_reason}]})
        if usage:
            yield sse({**head, "choices": [], "usage": _usage(result)})
    yield b"data: [DONE]\n\n"


async def _completion_chunks(
    ticket: Ticket, cid: str, created: int, model: str, n: int, usage: bool
) -> AsyncIterator[bytes]:
    head = {"id": cid, "object": "text_completion", "created": created, "model": model}
    async for i, text in ticket.stream():
        yield sse({**head, "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": None}]})
    result, problem = await _final(ticket)
    if result is None:
        yield sse({"error": {"message": f"generation ended: {problem}", "type": "server_error"}})
    else:
        for i, g in enumerate(result.generations):
            yield sse(
                {**head, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": g.finish_reason}]}
            )
        if usage:
            yield sse({**head, "choices": [], "usage": _usage(result)})
    yield b"data: [DONE]\n\n"
