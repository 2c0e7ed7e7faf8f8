"""What the wheels carry: a regular wheel holds models.lock and every model it pins by path; an
editable one holds none of them (it reads the checkout's), so `pip install -e .` costs no model bytes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from assistant.store.lockfile import FileSource, PatchSource, load_lock

REPO = Path(__file__).resolve().parents[1]

hatchling_wheel = pytest.importorskip("hatchling.builders.wheel")


def _build(tmp_path: Path, version: str) -> zipfile.ZipFile:
    builder = hatchling_wheel.WheelBuilder(str(REPO))
    (path,) = builder.build(directory=str(tmp_path / version), versions=[version])
    return zipfile.ZipFile(path)


def _pinned_paths() -> list[str]:
    lock = load_lock(REPO / "models.lock")
    return [s.path for m in lock.models for s in m.sources if isinstance(s, FileSource | PatchSource)]


def test_the_wheel_carries_the_lock_and_the_models_it_pins(tmp_path):
    names = set(_build(tmp_path, "standard").namelist())
    assert "assistant/_data/models.lock" in names
    pinned = _pinned_paths()
    assert pinned, "models.lock pins no file by path: this test checks nothing"
    for path in pinned:
        assert f"assistant/_data/{path}" in names
    assert "assistant/cli/app.py" in names


def test_the_editable_wheel_carries_no_model_bytes(tmp_path):
    wheel = _build(tmp_path, "editable")
    assert not [n for n in wheel.namelist() if n.startswith("assistant/_data/")]
    assert sum(i.file_size for i in wheel.infolist()) < 100_000
