"""distill.tokenizer and distill.corpus on real stdlib files and SmolLM2's real tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from assistant.errors import AssistantError, UsageError
from assistant.evaluation.humaneval import load_problems
from assistant.guard import OneLineErrorGroup
from distill.corpus import (
    CorpusConfig,
    CorpusError,
    Decontaminator,
    FilterConfig,
    TokenCorpus,
    build_corpus,
    check_source,
    normalize,
    split_of,
)
from distill.tokenizer import TeacherTokenizer, load_tokenizer, same_tokenizer, save_tokenizer_files
from export.tokenizer import read_record
from tests.tiny_llama import SMOLLM2_LOCK_NAME, smollm2_gguf

STDLIB = Path(sysconfig.get_paths()["stdlib"])
#: Small stdlib modules that pass every filter (checked by test_clean_files_pass).
CLEAN = (
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "textwrap.py",
    "colorsys.py",
    "bisect.py",
    "fnmatch.py",
    "glob.py",
    "shlex.py",
    "graphlib.py",
    "keyword.py",
)


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> TeacherTokenizer:
    """SmolLM2's tokenizer by lock name; converted from the GGUF once per test session (~10 s)."""
    cache = tmp_path_factory.getbasetemp() / "distill-tokenizer-cache"
    with mock.patch.dict(os.environ, {"ASSISTANT_CACHE": str(cache)}):
        return load_tokenizer(SMOLLM2_LOCK_NAME)


def copy_clean(dst: Path, names=CLEAN) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(STDLIB / name, dst / name.replace("/", "_"))
    return dst


def build(tok, roots, out, **kw):
    return build_corpus(tok, CorpusConfig(roots=tuple(Path(r) for r in roots), **kw), out)


def index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "files.jsonl").read_text().splitlines()]


def stream(out: Path, split: str) -> np.ndarray:
    m = json.loads((out / "manifest.json").read_text())
    return np.concatenate([np.fromfile(out / s["file"], dtype="<u2") for s in m["splits"][split]["shards"]]).astype(
        np.int64
    )


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_from_lock_name_is_cached_and_recorded(smollm2_tokenizer, tmp_path, lock, monkeypatch):
    tok = smollm2_tokenizer
    assert tok.source == f"lock:{SMOLLM2_LOCK_NAME}"
    assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (49152, 2, 1)
    assert tok.gguf_sha256 == lock.get(SMOLLM2_LOCK_NAME).sha256
    cache = Path(str(tok.files_dir)).parents[1]
    monkeypatch.setenv("ASSISTANT_CACHE", str(cache))
    t0 = time.perf_counter()
    again = load_tokenizer(SMOLLM2_LOCK_NAME)
    assert time.perf_counter() - t0 < 3  # no transformers conversion the second time
    assert again.sha256 == tok.sha256
    by_path = load_tokenizer(str(smollm2_gguf()))  # a .gguf path: same cache entry, keyed by the GGUF's sha256
    assert (
        by_path.source == f"gguf:{smollm2_gguf()}"
        and by_path.sha256 == tok.sha256
        and by_path.gguf_ref == str(smollm2_gguf())
    )
    written = save_tokenizer_files(tok, tmp_path / "student")
    assert (tmp_path / "student" / "tokenizer.json").read_bytes() == tok.json_path.read_bytes()
    assert {p.name for p in written} >= {"tokenizer.json", "tokenizer_config.json", "tokenizer_from.json"}
    assert read_record(tmp_path / "student") == {"gguf": SMOLLM2_LOCK_NAME, "sha256": tok.gguf_sha256}


def test_tokenizer_specs(smollm2_tokenizer, tmp_path):
    by_dir = load_tokenizer(str(smollm2_tokenizer.files_dir))
    by_file = load_tokenizer(str(smollm2_tokenizer.json_path))
    assert by_dir.sha256 == by_file.sha256 == smollm2_tokenizer.sha256
    assert by_dir.eos_id == by_file.eos_id == 2
    assert by_dir.source.startswith("dir:") and by_file.source.startswith("file:")
    for unpinned in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M@main"):
        with pytest.raises(UsageError, match="not pinned"):
            load_tokenizer(unpinned)
    with pytest.raises(UsageError, match="not a models.lock name"):
        load_tokenizer("no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssistantError, match="holds no tokenizer.json"):
        load_tokenizer(str(empty))


def _handle(tok, name: str) -> TeacherTokenizer:
    return TeacherTokenizer(tok, name, name, tok.get_vocab_size(), 0, None)


def test_same_tokenizer_allows_a_prefix_and_refuses_differences(smollm2_tokenizer):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = smollm2_tokenizer
    assert same_tokenizer(tok, tok) == (True, "identical vocabularies (49152 tokens)")
    longer = Tokenizer.from_str(tok.tokenizer.to_str())
    longer.add_special_tokens(["<extra_0>", "<extra_1>"])  # like Code Llama's 32016 over 32000
    ok, why = same_tokenizer(tok, _handle(longer, "longer"))
    assert ok and "shared prefix of 49152" in why and "2 more" in why
    vocab = tok.tokenizer.get_vocab()
    swapped = dict(vocab)
    a, b = vocab["def"], vocab["class"]
    swapped["def"], swapped["class"] = b, a
    ok, why = same_tokenizer(tok, _handle(Tokenizer(WordLevel(swapped, unk_token="<|endoftext|>")), "swapped"))
    assert not ok and f"first id {min(a, b)}" in why and "2 of 49152" in why


# -- filters -----------------------------------------------------------------------------------


def test_clean_files_pass():
    for name in CLEAN:
        assert check_source((STDLIB / name).read_bytes(), FilterConfig())[0] is None, name


def test_normalize():
    assert normalize("\ufeff\n\nx = 1  \r\ny = 2\t\r\n\n\n") == "x = 1\ny = 2\n"
    assert normalize(" \n\t\n") == ""


def test_split_is_a_pure_function_of_content():
    assert split_of("0" * 64, 0.02) == "validation"
    assert split_of("f" * 64, 0.99) == "train"
    assert split_of("ab" * 32, 0.0) == "train"


def test_decontaminator_finds_planted_solution():
    problems = load_problems()
    d = Decontaminator.humaneval()
    p = problems[0]
    assert p.task_id in d.matches(
        "import os\n\n" + p.prompt + p.canonical_solution + "\nprint(1)\n"
    )  # HumanEval/20 is a near-copy
    body = (
        "def other(xs, threshold):\n    numbers = xs\n" + p.canonical_solution
    )  # the solution alone, renamed function
    assert p.task_id in d.matches(body)
    assert d.matches((STDLIB / "textwrap.py").read_text()) == set()


# -- building ----------------------------------------------------------------------------------


def test_build_is_deterministic(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src")
    a = build(smollm2_tokenizer, [src], tmp_path / "a", val_fraction=0.3, shard_tokens=5000)
    b = build(smollm2_tokenizer, [src], tmp_path / "b", val_fraction=0.3, shard_tokens=5000)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "manifest.json" in names and "train-00001.bin" in names and "tokenizer.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a.manifest_sha256 == b.manifest_sha256
    text = (tmp_path / "a" / "manifest.json").read_text()
    assert str(tmp_path / "a") not in text and "time" not in a.manifest  # nothing run-specific
    m = a.manifest
    assert m["files"]["kept"] == len(CLEAN) and m["dtype"] == "uint16"
    assert m["tokenizer"]["sha256"] == smollm2_tokenizer.sha256
    assert m["n_tokens"] == m["splits"]["train"]["n_tokens"] + m["splits"]["validation"]["n_tokens"]
    assert os.stat(tmp_path / "a").st_mode & 0o777 != 0o700


def test_dedup_and_skip_reasons(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:3])
    original = (STDLIB / CLEAN[0]).read_text()
    (src / "zz_dup_crlf.py").write_bytes(original.replace("\n", "   \r\n").encode())
    (src / "zz_dup_again.py").write_text("\n\n" + original + "\n\n")
    (src / "empty.py").write_text("\n  \n")
    (src / "long_line.py").write_text("x = 1\n" + "y = '" + "a" * 1200 + "'\n")
    (src / "minified.py").write_text("".join(f"v{i} = " + "+".join(["abcdef"] * 20) + "\n" for i in range(20)))
    (src / "low_alnum.py").write_text("x = [\n" + "    ((), [], {}, (), [], {}),\n" * 50 + "]\n")
    (src / "generated.py").write_text("# Generated by the protocol buffer compiler.  DO NOT EDIT!\nx = 1\n")
    (src / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    (src / "nul.py").write_bytes(b"x = 1\n\x00\n")
    (src / "huge.py").write_text("x = 1\n" * 200_000)  # 1.2 MB
    r = build(smollm2_tokenizer, [src], tmp_path / "out")
    assert r.manifest["skipped"] == {
        "binary": 1,
        "duplicate": 2,
        "empty": 1,
        "generated": 1,
        "long_line": 1,
        "low_alnum": 1,
        "minified": 1,
        "not_utf8": 1,
        "too_large": 1,
    }
    assert r.manifest["files"]["kept"] == 3
    kept = {Path(e["path"]).name for e in index(tmp_path / "out")}
    others = {n.replace("/", "_") for n in CLEAN[1:3]}
    assert others <= kept  # and one copy of CLEAN[0]: whichever the hash order meets first
    assert len(kept - others & {CLEAN[0].replace("/", "_"), "zz_dup_crlf.py", "zz_dup_again.py"}) == 1


def test_humaneval_overlap_is_removed(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:4])
    p = load_problems()[2]
    (src / "leak.py").write_text("import math\n\n\n" + p.prompt + p.canonical_solution + "\n\nprint('ok')\n")
    r = build(smollm2_tokenizer, [src], tmp_path / "out")
    ov = r.manifest["humaneval_overlap"]
    assert r.manifest["skipped"] == {"humaneval_overlap": 1}
    assert ov["tasks"] == [p.task_id] and list(ov["paths"]) == [str(src / "leak.py")]
    assert r.manifest["settings"]["decontamination"]["ngram"] == 13
    assert "leak.py" not in {Path(e["path"]).name for e in index(tmp_path / "out")}


def test_split_by_file_is_stable(smollm2_tokenizer, tmp_path):
    small = copy_clean(tmp_path / "small", CLEAN[:6])
    big = copy_clean(tmp_path / "big", CLEAN)
    build(smollm2_tokenizer, [small], tmp_path / "a", val_fraction=0.5)
    build(smollm2_tokenizer, [big], tmp_path / "b", val_fraction=0.5)
    a = {e["sha256"]: e["split"] for e in index(tmp_path / "a")}
    b = {e["sha256"]: e["split"] for e in index(tmp_path / "b")}
    assert a.items() <= b.items()
    assert set(b.values()) == {"train", "validation"}


def test_eos_after_every_file_and_special_text_stays_text(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:5])
    (src / "chat.py").write_text('END = "<|im_end|>"\nSTART = "<|im_start|>"\n')
    build(smollm2_tokenizer, [src], tmp_path / "out", val_fraction=0.0)
    tokens = stream(tmp_path / "out", "train")
    entries = index(tmp_path / "out")
    assert (tokens == 2).sum() == len(entries) == 6  # only the separators are EOS
    enc = smollm2_tokenizer.encoder()
    pos = 0
    for e in entries:
        text = normalize(Path(e["path"]).read_text())
        ids = enc.encode(text, add_special_tokens=False).ids
        assert tokens[pos : pos + e["n_tokens"]].tolist() == ids + [2]
        pos += e["n_tokens"]
    assert pos == len(tokens)


def test_block_reads_across_shard_boundaries(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:4])
    build(smollm2_tokenizer, [src], tmp_path / "out", shard_tokens=1000, val_fraction=0.0)
    corpus = TokenCorpus.open(tmp_path / "out")
    train = corpus.split("train")
    full = stream(tmp_path / "out", "train")
    assert len(corpus.manifest["splits"]["train"]["shards"]) > 3
    assert train.n_tokens == len(full) and corpus.vocab_size == 49152 and corpus.eos_id == 2
    B = 300
    assert train.n_blocks(B) == (len(full) - 1) // B
    for i in (0, 3, 6, train.n_blocks(B) - 1):  # block 3 spans tokens 900..1200: crosses shard 0 -> 1
        blk = train.block(i, B)
        assert blk.dtype == np.int64 and blk.shape == (B + 1,)
        assert np.array_equal(blk, full[i * B : i * B + B + 1])
    assert np.array_equal(train.batch([1, 2], B)[1], full[2 * B : 3 * B + 1])
    with pytest.raises(IndexError):
        train.block(train.n_blocks(B), B)
    assert corpus.split("validation").n_tokens == 0 and corpus.split("validation").n_blocks(B) == 0
    with pytest.raises(UsageError):
        corpus.split("test")


def test_corrupt_shard_is_named(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:3])
    build(smollm2_tokenizer, [src], tmp_path / "out", shard_tokens=2000, val_fraction=0.0)
    shard = tmp_path / "out" / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(AssistantError) as e:
        TokenCorpus.open(tmp_path / "out")
    msg = str(e.value)
    assert "train-00001.bin" in msg and "rebuild with assistant distill corpus" in msg and "\n" not in msg
    TokenCorpus.open(tmp_path / "out", verify=False)  # size still right: opens without hashing
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(AssistantError, match="train-00001.bin is corrupt: expected"):
        TokenCorpus.open(tmp_path / "out", verify=False)
    m = tmp_path / "out" / "manifest.json"
    m.write_text(m.read_text().replace('"val_fraction": 0.0', '"val_fraction": 0.5'))
    with pytest.raises(AssistantError, match="modified"):
        TokenCorpus.open(tmp_path / "out")


def test_roots_without_python_files(smollm2_tokenizer, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(CorpusError, match="no Python files under") as e:
        build(smollm2_tokenizer, [tmp_path / "docs"], tmp_path / "out")
    assert "\n" not in str(e.value)
    with pytest.raises(CorpusError, match="does not exist"):
        build(smollm2_tokenizer, [tmp_path / "nope"], tmp_path / "out")
    only_empty = tmp_path / "pkg"
    only_empty.mkdir()
    (only_empty / "__init__.py").write_text("")
    with pytest.raises(CorpusError, match="no files left after filtering 1 .empty 1."):
        build(smollm2_tokenizer, [only_empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # temp dir cleaned up


def test_out_dir_overwrite_and_interruption(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:3])
    out = tmp_path / "out"
    build(smollm2_tokenizer, [src], out)
    first = (out / "manifest.json").read_bytes()
    with pytest.raises(UsageError, match="--force"):
        build(smollm2_tokenizer, [src], out)

    def boom(scanned, total, tokens):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_corpus(smollm2_tokenizer, CorpusConfig(roots=(src,)), out, force=True, progress=boom)
    assert (out / "manifest.json").read_bytes() == first  # the old corpus is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    r = build_corpus(smollm2_tokenizer, CorpusConfig(roots=(src,), max_files=1), out, force=True)
    assert r.manifest["files"]["kept"] == 1 and TokenCorpus.open(out).manifest_sha256 == r.manifest_sha256


def test_caps(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src")
    r = build(smollm2_tokenizer, [src], tmp_path / "files", max_files=3)
    assert r.manifest["files"]["kept"] == 3
    r = build(smollm2_tokenizer, [src], tmp_path / "tokens", max_tokens=5000)
    entries = index(tmp_path / "tokens")
    total = sum(e["n_tokens"] for e in entries)
    assert total >= 5000 and total - entries[-1]["n_tokens"] < 5000  # stops after the file that reaches it
    assert r.manifest["n_tokens"] == total


def test_cli_corpus(smollm2_tokenizer, tmp_path):
    from distill.data_cmd import cache_logits, corpus

    app = typer.Typer(cls=OneLineErrorGroup)
    app.command("corpus")(corpus)
    app.command("cache-logits")(cache_logits)
    src = copy_clean(tmp_path / "src", CLEAN[:3])
    args = [
        "corpus",
        "--roots",
        str(src),
        "--tokenizer",
        str(smollm2_tokenizer.files_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["files"]["kept"] == 3 and d["tokenizer"]["sha256"] == smollm2_tokenizer.sha256
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.output.startswith("error: ") and "--force" in res.output
    res = CliRunner().invoke(app, [*args, "--force"])
    assert res.exit_code == 0 and "wrote" in res.output and "skipped: none" in res.output
    (tmp_path / "txt").mkdir()
    res = CliRunner().invoke(
        app,
        [
            "corpus",
            "--roots",
            str(tmp_path / "txt"),
            "--tokenizer",
            str(smollm2_tokenizer.files_dir),
            "--out",
            str(tmp_path / "o2"),
        ],
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no Python files under" in res.output


def test_nested_roots_and_symlinks_visit_each_file_once(smollm2_tokenizer, tmp_path):
    src = copy_clean(tmp_path / "src", CLEAN[:2])
    copy_clean(src / "sub", CLEAN[2:4])
    (src / "link.py").symlink_to(src / "sub" / CLEAN[2].replace("/", "_"))
    r = build(smollm2_tokenizer, [src, src / "sub", src], tmp_path / "out")
    assert r.manifest["files"]["listed"] == 4 and r.manifest["skipped"] == {}
    assert r.manifest["settings"]["roots"] == [str(src.resolve()), str((src / "sub").resolve())]
