"""Shared fixtures: the real embedded model, a real engine, and an isolated user cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.runtime.engine import Engine, EngineConfig
from assistant.store.lockfile import load_lock
from assistant.store.resolve import HashCache, locate, resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own hash cache and download dir, and the repo's real lock."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ASSISTANT_CACHE", str(cache))
    monkeypatch.delenv("ASSISTANT_LOCK", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


@pytest.fixture(scope="session")
def lock():
    return load_lock(REPO / "models.lock")


@pytest.fixture(scope="session")
def default_gguf(lock) -> Path:
    return locate(lock.get(lock.default), lock)


@pytest.fixture(scope="session")
def engine(lock, tmp_path_factory):
    model = resolve(None, lock, HashCache(tmp_path_factory.mktemp("engine-cache") / "h.json"))
    with Engine(model, EngineConfig(n_ctx=2048)) as e:
        yield e


@pytest.fixture
def model_copy(tmp_path, default_gguf) -> Path:
    """A private copy of the embedded GGUF that a test may tamper with."""
    dst = tmp_path / "copy.gguf"
    shutil.copyfile(default_gguf, dst)
    return dst
