"""The lock module against real files: tampering, sizes, caching, offline, downloads, pins."""

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.store import resolve as model_store
from assistant.store import verify as store_verify
from assistant.store.lockfile import FileSource, HfSource, Lock, ModelEntry, PypiSource, load_lock, save_lock
from assistant.store.resolve import HashCache, ModelError, Status, pull, resolve, sha256_file, verify

REV = "a" * 40


def tiny_gguf() -> bytes:
    """A complete, header-only GGUF v3 file (no tensors), padded to the data alignment."""
    key = b"general.architecture"
    val = b"llama"
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    body += struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", len(val)) + val
    return body + b"\0" * (-len(body) % 32)


def entry(name="m", source=None, data: bytes | None = None, **kw) -> ModelEntry:
    pins = {"size": len(data), "sha256": __import__("hashlib").sha256(data).hexdigest()} if data else {}
    fields = dict(
        name=name,
        roles=("generate",),
        format="gguf",
        quantization="F32",
        parameters=1,
        context_length=256,
        license="MIT",
        prompt_style="completion",
        source=source or FileSource(f"{name}.gguf"),
        **pins,
    )
    fields.update(kw)
    return ModelEntry(**fields)


def make_lock(tmp_path: Path, *entries: ModelEntry) -> Lock:
    lock = Lock(path=tmp_path / "models.lock", default=entries[0].name, models=tuple(entries))
    save_lock(lock)
    return load_lock(lock.path)


@pytest.fixture
def cache(tmp_path):
    return HashCache(tmp_path / "sha.json")


@pytest.fixture
def count_hashes(monkeypatch):
    calls = []
    real = store_verify.sha256_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(store_verify, "sha256_file", counting)
    return calls


@pytest.fixture
def private_store(tmp_path, monkeypatch):
    """Downloads of these tests go to a private model store, never the shared one."""
    monkeypatch.setenv("ASSISTANT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def test_default_model_resolves_and_is_hashed_once(lock, cache, count_hashes, small_model):
    first = resolve(None, lock, cache)  # ASSISTANT_MODEL (conftest) makes SmolLM2 the default here
    assert first.sha256 == lock.get("smollm2-135m-instruct").sha256
    assert first.gguf.quantization == "Q4_1"
    second = resolve("smollm2-135m-instruct", lock, cache)
    assert second.path == first.path
    assert len(count_hashes) == 1  # the stat-keyed cache answered the second time


def test_tampered_file_same_size_is_caught(tmp_path, cache, model_copy):
    data = model_copy.read_bytes()
    lock = make_lock(tmp_path, entry("m", FileSource("copy.gguf"), data))
    assert resolve("m", lock, cache).sha256 == lock.get("m").sha256
    with open(model_copy, "r+b") as f:  # flip one byte deep in the weights
        f.seek(50_000_000)
        b = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ModelError) as e:
        resolve("m", lock, cache)
    msg = str(e.value)
    assert "sha256 mismatch" in msg and lock.get("m").sha256 in msg
    assert sha256_file(model_copy) in msg
    # a file source cannot be restored by pull (issue 18): the hint says what does
    assert "models pull" not in msg and "restore the file" in msg


def test_wrong_size(tmp_path, cache):
    data = tiny_gguf()
    (tmp_path / "m.gguf").write_bytes(data + b"\0" * 32)
    lock = make_lock(tmp_path, entry("m", data=data))
    v = verify(lock.get("m"), lock, cache)
    assert v.status == Status.SIZE_MISMATCH and f"expected {len(data)} bytes" in v.detail
    with pytest.raises(ModelError, match="size mismatch"):
        resolve("m", lock, cache)


def test_cache_is_invalidated_when_the_file_changes(tmp_path, cache, count_hashes):
    p = tmp_path / "f.bin"
    p.write_bytes(b"one")
    assert cache.sha256(p) == cache.sha256(p)
    assert len(count_hashes) == 1
    p.write_bytes(b"two")
    cache.sha256(p)
    assert len(count_hashes) == 2


def test_pypi_source_version_mismatch_and_missing_package(tmp_path, cache):
    import importlib.metadata

    rich_version = importlib.metadata.version("rich")
    data = tiny_gguf()
    wrong = entry("w", PypiSource("rich", "0.0.1", "rich/__init__.py"), data)
    gone = entry("g", PypiSource("no-such-package-xyz", "1.0", "x.gguf"), data)
    lk = make_lock(tmp_path, wrong, gone)
    with pytest.raises(ModelError, match=rf"pinned to rich==0\.0\.1 but {re.escape(rich_version)} is installed"):
        resolve("w", lk, cache)
    with pytest.raises(ModelError, match=r"pip install no-such-package-xyz==1.0"):
        resolve("g", lk, cache)


def _fake_downloader(data: bytes, calls: list):
    def download(source: HfSource, part_dir: Path) -> Path:
        calls.append((source, part_dir))
        assert part_dir.name.endswith(".download")
        out = part_dir / source.file
        out.write_bytes(data)
        return out

    return download


def test_offline_never_downloads(tmp_path, cache, monkeypatch, private_store):
    data = tiny_gguf()
    lock = make_lock(tmp_path, entry("h", HfSource("org/repo", REV, "h.gguf"), data))
    calls = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline mode is on"):
        resolve("h", lock, cache, offline=model_store.offline_mode(), downloader=_fake_downloader(data, calls))
    assert calls == []


def test_download_goes_through_part_and_is_renamed_only_when_the_hash_matches(tmp_path, cache, private_store):
    data = tiny_gguf()
    lock = make_lock(tmp_path, entry("h", HfSource("org/repo", REV, "h.gguf"), data))
    calls = []
    m = resolve("h", lock, cache, downloader=_fake_downloader(data, calls))
    assert len(calls) == 1 and m.path.read_bytes() == data
    assert m.path == model_store.download_path(lock.get("h"))
    assert sorted(p.name for p in m.path.parent.iterdir()) == ["h.gguf", "h.gguf.lock"]
    resolve("h", lock, cache, downloader=_fake_downloader(data, calls))
    assert len(calls) == 1  # present: no second download


def test_download_with_the_wrong_hash_is_discarded(tmp_path, cache, private_store):
    good = tiny_gguf()
    lock = make_lock(tmp_path, entry("h", HfSource("org/repo", REV, "h.gguf"), good))
    with pytest.raises(ModelError, match=r"the lock pins.*discarded"):
        resolve("h", lock, cache, downloader=_fake_downloader(good + b"\0" * 32, []))
    assert not model_store.download_path(lock.get("h")).exists()


def test_network_error_is_one_line(tmp_path, cache, private_store):
    lock = make_lock(tmp_path, entry("h", HfSource("org/repo", REV, "h.gguf"), tiny_gguf()))

    def broken(source, part_dir):
        raise ConnectionError("Name or service not known\nmore lines")

    pattern = r"source hf:org/repo@a+/h.gguf: download failed: ConnectionError.*no other source"
    with pytest.raises(ModelError, match=pattern) as e:
        resolve("h", lock, cache, downloader=broken)
    assert "more lines" not in str(e.value)


def test_unpinned_entry_is_refused_until_pinned(tmp_path, cache, private_store):
    data = tiny_gguf()
    e = entry("u", HfSource("org/repo", "", "u.gguf"), unpinned="no hub here")
    lock = make_lock(tmp_path, e)
    with pytest.raises(ModelError, match=r"not pinned.*no hub here.*--pin"):
        resolve("u", lock, cache)
    with pytest.raises(ModelError, match="not pinned"):
        pull(lock.get("u"), lock, cache)
    calls = []
    v, new_lock = pull(
        lock.get("u"), lock, cache, pin=True, downloader=_fake_downloader(data, calls), revision_resolver=lambda s: REV
    )
    assert v.ok
    pinned = load_lock(lock.path).get("u")  # written to disk
    assert pinned == new_lock.get("u")
    assert pinned.pinned and pinned.unpinned is None
    assert pinned.source.revision == REV and pinned.size == len(data) and pinned.sha256 == v.sha256
    assert resolve("u", load_lock(lock.path), cache).path == v.path


def test_plain_path_is_checked_before_llama_cpp_sees_it(tmp_path, cache, lock):
    bad = tmp_path / "weights.gguf"
    bad.write_text("not a model")
    with pytest.raises(Exception, match="not a GGUF file"):
        resolve(str(bad), lock, cache)
    with pytest.raises(Exception, match="not found"):
        resolve(str(tmp_path / "missing.gguf"), lock, cache)


def test_no_network_call_when_the_file_is_present(tmp_path, small_model):
    """An audit hook in a real process proves no socket is opened by `models path`."""
    script = (
        "import sys\n"
        "def hook(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo'):\n"
        "        raise SystemExit('NETWORK: ' + event)\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['assistant', 'models', 'path', 'smollm2-135m-instruct', '--online']\n"
        "from assistant.cli.app import main\n"
        "main()\n"
    )
    env = {**os.environ, "ASSISTANT_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert json.loads((tmp_path / "sha256.json").read_text())  # it verified (and cached) the hash
