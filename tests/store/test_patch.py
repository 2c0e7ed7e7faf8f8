"""A model pinned as a patch over another lock entry: format, lock checks, and pull through the real CLI.

The base is a real file entry, the patch a real file beside the lock, the assembled file a real
GGUF header followed by bytes copied from both; pulls go through the command line in a child
process, so errors are checked as users see them.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from assistant.store.lockfile import FileSource, Lock, LockError, PatchSource, load_lock, parse_lock, save_lock
from assistant.store.patch import MAGIC, PatchError, PatchHeader, Segment, apply_patch, merged, read_patch, write_patch
from assistant.store.progress import QuietProgress
from assistant.store.resolve import HashCache, ModelError, download_path, pull, resolve
from tests.store.test_pull import assert_one_line_error, cli, sha
from tests.store.test_resolve import entry, tiny_gguf


def build(tmp_path: Path, shared: int = 200_000) -> tuple[bytes, bytes, Path]:
    """A base, a target sharing two runs of its bytes, and the patch between them."""
    base = tiny_gguf() + os.urandom(2 * shared)
    head = tiny_gguf()
    own = os.urandom(5_000)
    target = head + base[len(head) : len(head) + shared] + own + base[-shared:]
    segments = merged(
        [
            Segment("patch", 0, len(head)),
            Segment("base", len(head), shared),
            Segment("patch", len(head), len(own)),
            Segment("base", len(base) - shared, shared),
        ]
    )
    header = PatchHeader(len(base), sha(base), len(target), sha(target), tuple(segments))
    patch = tmp_path / "t.patch"
    write_patch(patch, header, [head, own])
    return base, target, patch


def patched_lock(tmp_path: Path, base: bytes, target: bytes, patch: Path, **kw) -> Lock:
    (tmp_path / "b.gguf").write_bytes(base)
    src = PatchSource("b", patch.name, patch.stat().st_size, sha(patch.read_bytes()))
    lock = Lock(
        path=tmp_path / "models.lock", default="t", models=(entry("t", src, target, **kw), entry("b", None, base))
    )
    save_lock(lock)
    return load_lock(lock.path)


def test_segments_rebuild_the_target_byte_for_byte_and_the_patch_is_small(tmp_path):
    base, target, patch = build(tmp_path)
    (tmp_path / "b").write_bytes(base)
    h = apply_patch(patch, tmp_path / "b", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == target
    assert h.base_bytes == 400_000 and patch.stat().st_size < 7_000
    assert merged([Segment("base", 0, 4), Segment("base", 4, 4), Segment("patch", 0, 0)]) == [Segment("base", 0, 8)]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"NOTPATCH" + b[8:], "is not a model patch"),
        (lambda b: b[:8] + (9).to_bytes(4, "little") + b[12:], "patch format 9"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:-10], "lies outside its source"),
    ],
)
def test_a_damaged_patch_is_refused_with_the_reason(tmp_path, damage, message):
    _, _, patch = build(tmp_path)
    patch.write_bytes(damage(patch.read_bytes()))
    with pytest.raises(PatchError, match=message):
        read_patch(patch)


def test_a_base_of_another_size_is_refused_before_anything_is_written(tmp_path):
    base, _, patch = build(tmp_path)
    (tmp_path / "b").write_bytes(base[:-1])
    with pytest.raises(PatchError, match="expects a base of"):
        apply_patch(patch, tmp_path / "b", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_lock_refuses_a_patch_over_a_missing_or_patched_base(tmp_path):
    base, target, patch = build(tmp_path)
    lock = patched_lock(tmp_path, base, target, patch)
    text = lock.path.read_text()
    assert 'type = "patch"' in text and lock.get("t").source == PatchSource(
        "b", "t.patch", patch.stat().st_size, sha(patch.read_bytes())
    )
    with pytest.raises(LockError, match="base 'x' is not another entry"):
        parse_lock(text.replace('base = "b"', 'base = "x"'), lock.path)
    with pytest.raises(LockError, match="is itself assembled from a patch"):
        chained = replace(lock.get("b"), source=replace(lock.get("t").source, base="t"))
        save_lock(Lock(lock.path, "t", (lock.get("t"), chained)))


def test_pull_assembles_it_offline_from_the_present_base(tmp_path, store):
    base, target, patch = build(tmp_path)
    lock = patched_lock(tmp_path, base, target, patch)
    done = cli("models", "pull", "t", "--offline", "--lock", str(lock.path), "--json")
    assert done.returncode == 0, done.stderr
    dest = Path(json.loads(done.stdout)["path"])
    assert dest == download_path(lock.get("t")) and dest.read_bytes() == target
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, dest.name + ".lock"]
    v = resolve("t", lock, HashCache(tmp_path / "h.json"), offline=True)
    assert v.path == dest and v.sha256 == sha(target)


def test_first_use_assembles_it_and_a_later_use_reads_the_file(tmp_path, store):
    base, target, patch = build(tmp_path)
    lock = patched_lock(tmp_path, base, target, patch)
    cache = HashCache(tmp_path / "h.json")
    first = resolve("t", lock, cache)
    patch.unlink()  # the assembled file no longer needs it
    assert resolve("t", lock, cache).path == first.path and first.path.read_bytes() == target


def test_a_tampered_patch_fails_with_one_line_and_leaves_nothing(tmp_path, store):
    base, target, patch = build(tmp_path)
    lock = patched_lock(tmp_path, base, target, patch)
    data = bytearray(patch.read_bytes())
    data[-1] ^= 1
    patch.write_bytes(bytes(data))
    done = cli("models", "pull", "t", "--lock", str(lock.path))
    assert_one_line_error(done, "pull of model 't' failed", "the patch file", "restore it")
    dest = download_path(lock.get("t"))
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def test_a_wrong_result_is_discarded_not_kept(tmp_path, store):
    base, target, patch = build(tmp_path)
    other = target[:-1] + bytes([target[-1] ^ 1])  # random bytes: only a flipped bit is sure to differ
    lock = patched_lock(tmp_path, base, other, patch)  # the lock pins other bytes
    with pytest.raises(ModelError, match="the assembled file has .* it was discarded"):
        pull(lock.get("t"), lock, HashCache(tmp_path / "h.json"), progress=QuietProgress())
    assert not any(download_path(lock.get("t")).parent.glob("t.gguf*part"))


def test_a_missing_base_or_patch_names_what_is_missing(tmp_path, store):
    base, target, patch = build(tmp_path)
    lock = patched_lock(tmp_path, base, target, patch)
    (tmp_path / "b.gguf").unlink()
    done = cli("models", "pull", "t", "--lock", str(lock.path))
    assert_one_line_error(done, "its base model is not available", "model 'b': file not found")
    offline = cli("models", "pull", "t", "--offline", "--lock", str(lock.path))
    assert_one_line_error(offline, "model 't' is not downloaded and offline mode is on")
    (tmp_path / "b.gguf").write_bytes(base)
    patch.unlink()
    done = cli("models", "pull", "t", "--lock", str(lock.path))
    assert_one_line_error(done, f"the patch file {patch} is missing")
    assert MAGIC == b"ASMPATCH" and isinstance(lock.get("b").source, FileSource)
