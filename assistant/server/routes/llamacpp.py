"""llama.cpp server's routes: /infill (llama.vscode), /health (503 while loading), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from assistant.server.errors import ApiError
from assistant.server.jobs import infill_work, sampling_for
from assistant.server.params import Body
from assistant.server.plumbing import endpoint, read_body, sse, stream, wait_result
from assistant.server.scheduler import Cancelled, ModelHandle, Ticket, WorkResult
from assistant.server.state import ServerState

DEFAULT_N_PREDICT = 128
MAX_EXTRA_FILES = 64


def _extra(body: Body) -> tuple[Any, ...]:
    from assistant.runtime.fim import ExtraFile

    items = body.array("input_extra")
    if len(items) > MAX_EXTRA_FILES:
        raise ApiError(400, f"'input_extra' has {len(items)} files; at most {MAX_EXTRA_FILES}")
    out = []
    for i, chunk in enumerate(items):
        if (
            not isinstance(chunk, dict)
            or not isinstance(chunk.get("text", ""), str)
            or not isinstance(chunk.get("filename", ""), str)
        ):
            raise ApiError(400, f"'input_extra[{i}]' must be an object with string 'text' and 'filename'")
        out.append(ExtraFile(chunk.get("filename") or "tmp", chunk.get("text", "")))
    return tuple(out)


def _timings(result: WorkResult) -> dict[str, Any]:
    if not result.generations:
        return {}
    t = result.generations[0].timings
    pred_ms = t.decode_s * 1000
    return {
        "prompt_n": t.prompt_tokens - result.cached_tokens,
        "prompt_ms": t.ttft_s * 1000,
        "prompt_per_token_ms": t.ttft_s * 1000 / max(1, t.prompt_tokens - result.cached_tokens),
        "prompt_per_second": t.prompt_tps,
        "predicted_n": t.generated_tokens,
        "predicted_ms": pred_ms,
        "predicted_per_token_ms": pred_ms / max(1, t.generated_tokens - 1),
        "predicted_per_second": t.decode_tps,
        "cache_n": result.cached_tokens,
    }


def _stop_type(finish: str) -> str:
    return {"stop": "eos", "length": "limit", "cancelled": "none"}.get(finish, finish)


def _final(model: ModelHandle, result: WorkResult, slot: int) -> dict[str, Any]:
    g = result.generations[0] if result.generations else None
    prompt = result.info.get("prompt")
    return {
        "index": 0,
        "content": g.text if g else "",
        "id_slot": slot,
        "stop": True,
        "model": model.name,
        "tokens_predicted": g.timings.generated_tokens if g else 0,
        "tokens_evaluated": g.timings.prompt_tokens if g else 0,
        "tokens_cached": result.cached_tokens,
        "truncated": bool(prompt and (prompt.prefix_trimmed or prompt.suffix_trimmed)),
        "stop_type": _stop_type(g.finish_reason) if g else "none",
        "has_new_line": bool(g and "\n" in g.text),
        "timings": _timings(result),
    }


def routes(state: ServerState) -> list[Route]:
    async def health(request: Request) -> Response:
        if state.load_error:
            return JSONResponse(
                {
                    "error": {
                        "code": 500,
                        "message": f"the model failed to load: {state.load_error}",
                        "type": "server_error",
                    }
                },
                500,
            )
        if not state.ready.is_set():
            return JSONResponse(
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                503,
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @endpoint
    async def infill(request: Request) -> Response:
        from assistant.runtime.fim import InfillRequest

        body = await read_body(request)
        model = state.model(body.text("model"))
        if model.fim is None:
            raise ApiError(
                501,
                f"{model.name} does not support infill: it has no fill-in-the-middle tokens; "
                "serve a FIM-capable code model such as qwen2.5-coder-0.5b-instruct",
            )
        prefix = (body.text("input_prefix", "") or "") + (body.text("prompt", "") or "")
        suffix = body.text("input_suffix", "") or ""
        n_predict = body.integer("n_predict", None)
        if n_predict is not None and n_predict < 0:
            n_predict = None  # llama.cpp's -1: no limit but the server's cap
        sampling = sampling_for(
            body,
            max_tokens=n_predict,
            default_max=DEFAULT_N_PREDICT,
            cap=state.cap(model),
            model_stop=(),
        )
        deadline_ms = body.integer("t_max_predict_ms", None, lo=0)
        req = InfillRequest(prefix, suffix, _extra(body), body.text("filename", "") or "")
        state.log_prompt("/infill", prefix + " [suffix] " + suffix)
        ticket = state.sched.submit(
            model,
            infill_work(req, sampling, model.fim),
            client=state.client_key(request),
            prompt_key=prefix,
            infill=True,
            deadline_s=deadline_ms / 1000 if deadline_ms else None,
        )
        if body.flag("stream", False):
            return stream(ticket, _chunks(ticket, model), "text/event-stream")
        try:
            result = await wait_result(request, ticket)
        except Cancelled as e:
            if e.reason != "superseded":
                raise
            result = WorkResult([])
        return JSONResponse(_final(model, result, ticket.slot_index))

    return [
        Route("/health", health, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/infill", infill, methods=["POST"]),
    ]


async def _chunks(ticket: Ticket, model: ModelHandle) -> AsyncIterator[bytes]:
    async for _, text in ticket.stream():
        yield sse({"index": 0, "content": text, "stop": False})
    try:
        result = await ticket.result
    except Cancelled:
        result = WorkResult([])
    except Exception as e:
        yield sse({"error": {"code": 500, "message": str(e), "type": "server_error"}})
        return
    yield sse({**_final(model, result, ticket.slot_index), "content": ""})
