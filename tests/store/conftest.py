"""Fixtures of the store tests: a local wheelhouse that pip serves, and a private model store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def house(tmp_path):
    d = tmp_path / "wheelhouse"
    d.mkdir()
    return d


@pytest.fixture
def store(tmp_path, monkeypatch, house):
    """A private model store and a pip that sees only the wheelhouse (no index, no user config)."""
    models = tmp_path / "models"
    monkeypatch.setenv("ASSISTANT_MODELS", str(models))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return models
