"""Servers on free loopback ports in a background thread: SmolLM2 (no FIM) and the Qwen 0.5B (FIM)."""

from __future__ import annotations

import pytest

from assistant.server.app import ServerState, ServerThread
from assistant.server.config import ServeConfig

API_KEY = "test-key-0123456789"


def start(model, **cfg) -> ServerThread:
    base = dict(threads=1, ctx=1024, parallel=1, queue=1)
    base.update(cfg)
    return ServerThread(ServerState(ServeConfig(**base), [model])).__enter__()


@pytest.fixture(scope="module")
def smol(small_model):
    """SmolLM2 behind the default security settings, one context, a queue of one."""
    s = start(small_model)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed(small_model):
    s = start(small_model, api_key=API_KEY, max_body_bytes=64 * 1024)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def qwen(code_model):
    s = start(code_model, ctx=2048, threads=2)
    yield s
    s.stop()
