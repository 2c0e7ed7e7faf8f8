"""What `assistant serve` was asked for, checked before anything is loaded."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import UsageError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    h = host.strip("[]")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[str, ...] = ()  # lock names or .gguf paths; () is the lock's default
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    parallel: int = 1  # llama.cpp contexts per model, each serving one generation at a time
    queue: int = 16  # requests that may wait for a context; beyond that: 503 with Retry-After
    ctx: int | None = None
    threads: int | None = None
    cors_origins: tuple[str, ...] = ()  # exact origins (scheme://host[:port]); "*" allows any
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names (reverse proxies, LAN names)
    max_body_bytes: int = 2 * 1024 * 1024
    max_tokens_cap: int = 4096  # larger requests are clamped to this (and to the context)
    supersede: bool = True  # a new infill from the same client cancels its previous one
    log_prompts: bool = False
    lock: Path | None = None
    offline: bool = False

    def validate(self) -> None:
        if not is_loopback(self.host) and not self.api_key:
            raise UsageError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it could use the model",
                hint="pass --api-key KEY (clients send `Authorization: Bearer KEY`), or keep the default --host 127.0.0.1",
            )
        if self.api_key is not None and len(self.api_key) < 8:
            raise UsageError("the API key is shorter than 8 characters", hint="pass a longer --api-key")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port", hint="pass a port from 1 to 65535")
        if self.parallel < 1 or self.parallel > 16:
            raise UsageError(f"--parallel {self.parallel} is out of range", hint="pass 1 to 16 contexts per model")
        if self.queue < 0:
            raise UsageError(f"--queue {self.queue} is negative", hint="pass 0 (no waiting) or more")
        for o in self.cors_origins:
            if o != "*" and "://" not in o:
                raise UsageError(
                    f"--cors-origin {o!r} is not an origin",
                    hint="pass scheme://host[:port], e.g. http://localhost:3000",
                )
        if self.max_body_bytes < 1024:
            raise UsageError("--max-body is below 1 KiB", hint="pass at least 1024 bytes")
