"""The app factory and running it under uvicorn.

Starlette and uvicorn are imported here and by the other server modules, which only
`assistant serve` (and tests, benchmarks) import, so `assistant --help` never pays for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from assistant.errors import AssistantError
from assistant.server.errors import ApiError, family_of
from assistant.server.plumbing import error_response
from assistant.server.routes import llamacpp, ollama, openai
from assistant.server.security import Security
from assistant.server.state import ServerState

__all__ = ["ServerState", "ServerThread", "bind", "create_app", "uvicorn_server"]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return error_response(
        family_of(request.url.path), ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)))
    )


def create_app(state: ServerState, *, load_in_background: bool = True) -> Security:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = None
        if load_in_background and not state.ready.is_set() and not state.load_error:
            loader = asyncio.get_running_loop().run_in_executor(None, state.load)
        try:
            yield
        finally:
            if loader is not None:
                with contextlib.suppress(Exception):
                    await loader
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    routes = openai.routes(state) + ollama.routes(state) + llamacpp.routes(state)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.server = state
    return Security(app, state.cfg, state.metrics)  # type: ignore[arg-type]  # MutableMapping vs dict scopes


# -- running -----------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so port 0 gives a known free port."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise AssistantError(
            f"cannot listen on {host}:{port}: {e.strerror}", hint="pick another --port, or stop what is using it"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Security, log_level: str = "warning") -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        server_header=False,
        date_header=True,
    )
    return uvicorn.Server(config)


class ServerThread:
    """The server in a background thread on a loopback port: for tests and benchmarks."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int = 0):
        self.state = state
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn_server(create_app(state))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.state.ready.is_set() and self.server.started):
            if self.state.load_error or not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AssistantError(f"the server did not start: {self.state.load_error or 'timed out'}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
