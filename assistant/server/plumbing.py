"""Request plumbing shared by the route families: bodies, disconnects, streaming, error shapes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from assistant.errors import AssistantError
from assistant.server.errors import ApiError, error_body, family_of
from assistant.server.params import Body, parse_json
from assistant.server.scheduler import Cancelled, Ticket, WorkResult
from assistant.server.security import BodyTooLarge

log = logging.getLogger("assistant.server")
Endpoint = Callable[[Request], Any]


async def read_body(request: Request) -> Body:
    try:
        raw = await request.body()
    except BodyTooLarge as e:
        raise ApiError(413, str(e), code="body_too_large") from None
    return Body(parse_json(raw))


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def wait_result(request: Request, ticket: Ticket) -> WorkResult:
    """The finished work, cancelling it if the client goes away first (Cancelled is raised then)."""
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
    pending: set[asyncio.Future[Any]] = {ticket.result, watcher}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not ticket.result.done():
            ticket.cancel("disconnect")
        return await ticket.result
    finally:
        watcher.cancel()


def stream(ticket: Ticket, chunks: AsyncIterator[bytes], media_type: str) -> StreamingResponse:
    """A streamed response that cancels its generation when the client stops reading."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            if not ticket.result.done():
                ticket.cancel("disconnect")

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type=media_type, headers=headers)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def error_response(family: str, err: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(family, err.status, err.message, err.param, err.code), err.status, headers=err.headers
    )


def endpoint(fn: Endpoint) -> Endpoint:
    """Every failure becomes the route family's own error shape; never a traceback on the wire."""

    async def wrapped(request: Request) -> Response:
        family = family_of(request.url.path)
        try:
            return await fn(request)
        except ApiError as e:
            return error_response(family, e)
        except Cancelled as e:
            return error_response(
                family,
                ApiError(
                    499 if e.reason == "disconnect" else 409,
                    f"the request was cancelled ({e.reason})",
                    code="cancelled",
                ),
            )
        except AssistantError as e:
            return error_response(family, ApiError(400, str(e)))
        except Exception as e:  # a bug: say what it was in one line, keep the server up
            log.error("error: %s on %s: %s", type(e).__name__, request.url.path, e)
            return error_response(family, ApiError(500, f"internal error: {type(e).__name__}"))

    return wrapped
