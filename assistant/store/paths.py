"""Where the tool keeps its per-user state (downloaded models, hash cache)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ASSISTANT_CACHE"
MODELS_ENV = "ASSISTANT_MODELS"


def cache_dir() -> Path:
    """$ASSISTANT_CACHE, else $XDG_CACHE_HOME/assistant, else ~/.cache/assistant."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "assistant" if xdg else Path.home() / ".cache" / "assistant"


def models_dir() -> Path:
    """$ASSISTANT_MODELS, else <cache_dir>/models: pulled model files (large, kept apart from the hash cache)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else cache_dir() / "models"
