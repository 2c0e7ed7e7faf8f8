"""Ollama's API: /api/tags, /api/show, /api/generate (``suffix`` is FIM), /api/chat, /api/version, /api/ps.

Continue sends inline completions to /api/generate with ``suffix`` only when /api/show's
template mentions ``.Suffix``, so a FIM-capable model's template does. Streaming (the
default, as in Ollama) is NDJSON; durations are nanoseconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from assistant.server.errors import ApiError
from assistant.server.jobs import chat_prompt, check_fits, infill_work, parse_messages, sampling_for, text_work
from assistant.server.params import Body
from assistant.server.plumbing import endpoint, ndjson, read_body, stream, wait_result
from assistant.server.scheduler import Cancelled, ModelHandle, Ticket, WorkResult
from assistant.server.state import ServerState

VERSION = "0.6.0"  # the Ollama API level these routes follow (suffix, capabilities)
NS = 1_000_000_000


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _details(m: ModelHandle) -> dict[str, Any]:
    g = m.resolved.gguf
    return {
        "parent_model": "",
        "format": "gguf",
        "family": g.architecture,
        "families": [g.architecture],
        "parameter_size": _params(g.n_params),
        "quantization_level": g.quantization,
    }


def _template(m: ModelHandle) -> str:
    chat = m.engine.llm.metadata.get("tokenizer.chat_template", "")
    body = (
        (
            "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
        )
        if "<|im_start|>" in chat
        else "{{ .Prompt }}"
    )
    if m.fim is None:
        return body
    t = m.fim.texts
    return (
        f"{{{{- if .Suffix }}}}{t[m.fim.prefix]}{{{{ .Prompt }}}}{t[m.fim.suffix]}{{{{ .Suffix }}}}"
        f"{t[m.fim.middle]}{{{{- else }}}}{body}{{{{- end }}}}"
    )


def _options(state: ServerState, model: ModelHandle, body: Body) -> Any:
    opts = body.object("options")
    num_predict = opts.integer("num_predict", None)
    if num_predict is not None and num_predict < 0:
        if num_predict not in (-1, -2):
            raise ApiError(400, f"'options.num_predict' must be positive, -1 or -2, not {num_predict}")
        num_predict = None  # -1 (no limit) and -2 (fill the context): the server's cap
    opts.integer("num_ctx", None, lo=1)  # the context is fixed when the model loads (--ctx)
    return sampling_for(
        opts,
        max_tokens=num_predict,
        default_max=state.cap(model),
        cap=state.cap(model),
        model_stop=model.resolved.stop,
    )


def _final_fields(result: WorkResult, model: ModelHandle, total_ns: int) -> dict[str, Any]:
    g = result.generations[0] if result.generations else None
    if g is None:
        return {"done_reason": "cancelled", "total_duration": total_ns}
    t = g.timings
    return {
        "done_reason": g.finish_reason,
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": t.prompt_tokens,
        "prompt_eval_duration": int(t.ttft_s * NS),
        "eval_count": t.generated_tokens,
        "eval_duration": int(t.decode_s * NS),
    }


def routes(state: ServerState) -> list[Route]:
    @endpoint
    async def tags(request: Request) -> Response:
        state.model(None)
        out = []
        for m in state.models.values():
            st = m.resolved.path.stat()
            out.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "size": st.st_size,
                    "digest": m.resolved.sha256,
                    "modified_at": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).isoformat(),
                    "details": _details(m),
                }
            )
        return JSONResponse({"models": out})

    @endpoint
    async def ps(request: Request) -> Response:
        state.model(None)
        return JSONResponse(
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "size": m.resolved.path.stat().st_size,
                        "digest": m.resolved.sha256,
                        "details": _details(m),
                        "context_length": m.engine.n_ctx,
                    }
                    for m in state.models.values()
                ]
            }
        )

    @endpoint
    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    @endpoint
    async def show(request: Request) -> Response:
        body = await read_body(request)
        name = body.text("model") or body.text("name")
        if not name:
            raise ApiError(400, "'model' is required")
        m = state.model(name)
        g = m.resolved.gguf
        caps = ["completion"] + (["insert"] if m.fim else [])
        info = {
            k: v for k, v in g.metadata.items() if isinstance(v, (int, float, str)) and not k.startswith("tokenizer.")
        }
        return JSONResponse(
            {
                "modelfile": f"FROM {m.resolved.path}\n",
                "parameters": "",
                "template": _template(m),
                "details": _details(m),
                "model_info": info,
                "capabilities": caps,
                "modified_at": _now(),
            }
        )

    @endpoint
    async def generate(request: Request) -> Response:
        body = await read_body(request)
        model = state.model(body.text("model"), "model")
        prompt = body.text("prompt", "") or ""
        suffix = body.text("suffix")
        system = body.text("system")
        raw = body.flag("raw", False)
        streaming = body.flag("stream", True)
        if body.data.get("images"):
            raise ApiError(400, "'images': this server runs text-only models")
        if body.data.get("format") not in (None, ""):
            raise ApiError(400, "'format' (structured output) is not supported by this server")
        if body.data.get("template") not in (None, ""):
            raise ApiError(400, "'template' overrides are not supported; the model's own template is used")
        sampling = _options(state, model, body)
        client = state.client_key(request)
        if not prompt and not suffix:  # Ollama's way to load a model: answer done at once
            return JSONResponse(
                {"model": model.name, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
            )
        state.log_prompt("/api/generate", prompt + (f" [suffix] {suffix}" if suffix else ""))
        if suffix is not None:
            if model.fim is None:
                raise ApiError(400, f"{model.name} does not support insert (it has no fill-in-the-middle tokens)")
            from assistant.runtime.fim import InfillRequest

            ticket = state.sched.submit(
                model,
                infill_work(InfillRequest(prompt, suffix), sampling, model.fim),
                client=client,
                prompt_key=prompt,
                infill=True,
            )
        else:
            if raw:
                text = prompt
            else:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                text = chat_prompt(model.engine, messages) if model.engine._chat is not None else prompt
            check_fits(model, text)
            ticket = state.sched.submit(model, text_work(text, sampling), client=client, prompt_key=text)
        return await _respond(request, ticket, model, streaming, chat=False)

    @endpoint
    async def chat(request: Request) -> Response:
        body = await read_body(request)
        model = state.model(body.text("model"), "model")
        messages = parse_messages(body.array("messages"))
        streaming = body.flag("stream", True)
        if body.data.get("tools"):
            raise ApiError(400, "'tools' are not supported by this server")
        if body.data.get("format") not in (None, ""):
            raise ApiError(400, "'format' (structured output) is not supported by this server")
        sampling = _options(state, model, body)
        text = chat_prompt(model.engine, messages)
        check_fits(model, text)
        state.log_prompt("/api/chat", text)
        ticket = state.sched.submit(model, text_work(text, sampling), client=state.client_key(request), prompt_key=text)
        return await _respond(request, ticket, model, streaming, chat=True)

    return [
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
    ]


def _piece(model: ModelHandle, text: str, chat: bool, done: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model.name, "created_at": _now()}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["done"] = done
    return out


async def _respond(request: Request, ticket: Ticket, model: ModelHandle, streaming: bool, chat: bool) -> Response:
    import time

    t0 = time.perf_counter_ns()
    if not streaming:
        try:
            result = await wait_result(request, ticket)
        except Cancelled as e:
            if e.reason != "superseded":
                raise
            result = WorkResult([])
        text = result.generations[0].text if result.generations else ""
        return JSONResponse(
            {**_piece(model, text, chat, True), **_final_fields(result, model, time.perf_counter_ns() - t0)}
        )

    async def chunks() -> AsyncIterator[bytes]:
        async for _, text in ticket.stream():
            yield ndjson(_piece(model, text, chat, False))
        try:
            result = await ticket.result
        except Cancelled:
            result = WorkResult([])
        except Exception as e:
            yield ndjson({"error": str(e)})
            return
        yield ndjson({**_piece(model, "", chat, True), **_final_fields(result, model, time.perf_counter_ns() - t0)})

    return stream(ticket, chunks(), "application/x-ndjson")
