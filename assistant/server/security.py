"""Defaults a user can trust: Host check (DNS rebinding), no CORS unless allowed, API key, body cap.

A pure ASGI middleware in front of every route; refusals come in the route family's own error
shape. It also counts requests and their latency for /metrics and writes the one-line access
log (method, path, status, milliseconds: never a body).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from assistant.server.config import ServeConfig, is_loopback
from assistant.server.errors import ApiError, error_body, family_of
from assistant.server.metrics import Metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("assistant.server")
OPEN_PATHS = frozenset({"/health", "/v1/health"})  # answer without the API key (load balancers, editors' probes)
KNOWN_ROUTES = frozenset(
    {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/api/tags",
        "/api/show",
        "/api/generate",
        "/api/chat",
        "/api/version",
        "/api/ps",
        "/infill",
        "/health",
        "/v1/health",
        "/metrics",
    }
)


class BodyTooLarge(Exception):
    pass


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Security:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], cfg: ServeConfig, metrics: Metrics):
        self.app = app
        self.cfg = cfg
        self.metrics = metrics
        self.key = cfg.api_key.encode() if cfg.api_key else None
        self.open_bind = not is_loopback(cfg.host)

    def host_ok(self, host: str) -> bool:
        if not host:
            return True  # HTTP/1.0 without Host: not a browser, which always sends one
        name = _host_name(host)
        if is_loopback(name) or name in self.cfg.allowed_hosts:
            return True
        if self.open_bind:  # behind an API key; an explicit list narrows it
            return not self.cfg.allowed_hosts or name == self.cfg.host.lower()
        return False

    def origin_ok(self, origin: str, host: str) -> bool:
        if "*" in self.cfg.cors_origins or origin in self.cfg.cors_origins:
            return True
        same = origin.split("://", 1)[-1].lower()
        return bool(host) and same == host.lower()  # same-origin: not cross-site

    def authorized(self, headers: dict[str, str]) -> bool:
        assert self.key is not None
        got = headers.get("authorization", "")
        token = got[7:].strip() if got[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return hmac.compare_digest(token.encode(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        status_box = [0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        origin = headers.get("origin")
        cors_headers: list[tuple[bytes, bytes]] = []

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                if cors_headers:
                    message = {**message, "headers": [*message.get("headers", []), *cors_headers]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._done(scope, route, status_box[0], t0)

        async def refuse(err: ApiError) -> None:
            body = json.dumps(error_body(family_of(path), err.status, err.message, err.param, err.code)).encode()
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            hdrs += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await counted_send({"type": "http.response.start", "status": err.status, "headers": hdrs})
            await counted_send({"type": "http.response.body", "body": body})

        if not self.host_ok(host):
            await refuse(
                ApiError(
                    403,
                    f"Host header {_host_name(host)!r} is not allowed (DNS rebinding protection); "
                    "connect to 127.0.0.1 or localhost, or start the server with --allow-host NAME",
                    code="host_not_allowed",
                )
            )
            return
        if origin is not None:
            if not self.origin_ok(origin, host):
                await refuse(
                    ApiError(
                        403,
                        f"cross-origin requests from {origin} are not allowed; "
                        f"start the server with --cors-origin {origin} to allow them",
                        code="origin_not_allowed",
                    )
                )
                return
            allowed = "*" if "*" in self.cfg.cors_origins and self.key is None else origin
            cors_headers = [(b"access-control-allow-origin", allowed.encode()), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":
                cors_headers += [
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"Authorization, Content-Type, X-Api-Key, X-Client-Id"),
                    (b"access-control-max-age", b"600"),
                ]
                await counted_send({"type": "http.response.start", "status": 204, "headers": []})
                await counted_send({"type": "http.response.body", "body": b""})
                return
        if self.key is not None and path not in OPEN_PATHS and not self.authorized(headers):
            missing = "authorization" not in headers and "x-api-key" not in headers
            await refuse(
                ApiError(
                    401,
                    ("an API key is required" if missing else "the API key is wrong")
                    + "; send `Authorization: Bearer KEY`",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            )
            return
        cap = self.cfg.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await refuse(
                ApiError(
                    413,
                    f"the request body is {int(length)} bytes; the server accepts at most {cap} (--max-body)",
                    code="body_too_large",
                )
            )
            return
        seen = [0]

        async def capped_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > cap:
                    raise BodyTooLarge(f"the request body is over {cap} bytes, the server's limit (--max-body)")
            return message

        await self.app(scope, capped_receive, counted_send)

    def _done(self, scope: Scope, route: str, status: int, t0: float) -> None:
        dt = time.perf_counter() - t0
        self.metrics.requests[(route, str(status))] += 1
        self.metrics.request_seconds.observe((route,), dt)
        log.info("%s %s %d %.0f ms", scope["method"], scope["path"], status, dt * 1000)
