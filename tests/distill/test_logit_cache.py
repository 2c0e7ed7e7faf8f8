"""distill.logit_cache: top-k teacher targets from a tiny random Llama over a real token corpus."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from assistant.errors import AssistantError
from assistant.guard import OneLineErrorGroup
from distill.corpus import CorpusConfig, TokenCorpus, build_corpus
from distill.logit_cache import (
    CacheConfig,
    CacheError,
    LogitCache,
    build_logit_cache,
    bytes_per_token,
    full_logits_bytes_per_token,
)
from distill.tokenizer import load_tokenizer
from tests.tiny_llama import SMOLLM2_LOCK_NAME, TinyLlamaSpec, tiny_llama_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
B, K = 32, 16
SPEC = TinyLlamaSpec(hidden=64, intermediate=128, layers=1, heads=2, kv_heads=1)


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """Same on-disk cache as test_distill_corpus: the GGUF conversion runs once per session."""
    cache = tmp_path_factory.getbasetemp() / "distill-tokenizer-cache"
    with mock.patch.dict(os.environ, {"ASSISTANT_CACHE": str(cache)}):
        return load_tokenizer(SMOLLM2_LOCK_NAME)


def make_corpus(tok, tmp: Path, names: tuple[str, ...]) -> TokenCorpus:
    src = tmp / "src"
    src.mkdir(parents=True)
    for n in names:
        shutil.copyfile(STDLIB / n, src / n.replace("/", "_"))
    build_corpus(tok, CorpusConfig(roots=(src,), val_fraction=0.3, shard_tokens=3000), tmp / "corpus")
    return TokenCorpus.open(tmp / "corpus")


@pytest.fixture(scope="session")
def corpus(smollm2_tokenizer, tmp_path_factory) -> TokenCorpus:
    return make_corpus(
        smollm2_tokenizer, tmp_path_factory.mktemp("lc"), ("textwrap.py", "colorsys.py", "bisect.py", "shlex.py")
    )


@pytest.fixture(scope="session")
def teacher():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(SPEC)).eval()


class Counting:
    """teacher_forward that counts blocks and can fail after a number of calls (a crash mid-run)."""

    def __init__(self, model, fail_after: int | None = None):
        self.model, self.fail_after, self.calls, self.blocks = model, fail_after, 0, 0

    def __call__(self, ids):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.blocks += ids.shape[0]
        return self.model(input_ids=ids).logits


def config(**kw) -> CacheConfig:
    base = dict(
        block_size=B,
        vocab_size=SPEC.vocab,
        teacher_source="tiny",
        teacher_sha256="ab" * 32,
        k=K,
        max_blocks=10,
        batch_size=3,
        blocks_per_shard=4,
    )
    return CacheConfig(**{**base, **kw})


def test_topk_and_rest_match_a_direct_computation(corpus, teacher, tmp_path):
    train = corpus.split("train")
    r = build_logit_cache(Counting(teacher), train, config(), tmp_path / "c")
    assert r.n_blocks == 10 and r.to_dict()["shards"] == 3
    cache = LogitCache.open(tmp_path / "c")
    assert (cache.block_size, cache.k, cache.n_blocks, cache.vocab_size) == (B, K, 10, SPEC.vocab)
    for i in (0, 4, 9):
        lp, ids, rest = cache.block(i)
        assert lp.dtype == np.float16 and ids.dtype == np.int64 and rest.dtype == np.float32
        assert lp.shape == ids.shape == (B, K) and rest.shape == (B,)
        x = torch.from_numpy(train.block(i, B)[:-1])[None]
        with torch.no_grad():
            full = teacher(input_ids=x).logits[0].float().log_softmax(-1)
        values, top = full.topk(K, dim=-1)
        assert np.array_equal(ids, top.numpy())
        np.testing.assert_allclose(lp.astype(np.float32), values.numpy(), rtol=1e-3, atol=1e-3)  # float16 rounding
        np.testing.assert_allclose(rest, 1 - values.exp().sum(-1).numpy(), atol=2e-3)
        total = np.exp(lp.astype(np.float64)).sum(-1) + rest
        np.testing.assert_allclose(total, 1.0, atol=1e-5)  # the k + 1 buckets are a distribution
        assert (rest >= 0).all() and (rest < 1).all()
        assert np.all(np.diff(lp.astype(np.float32), axis=-1) <= 0)  # sorted, most likely first
    lp, ids, rest = cache.batch([1, 2])
    assert lp.shape == (2, B, K) and np.array_equal(ids[1], cache.block(2)[1])
    with pytest.raises(IndexError):
        cache.block(10)


def test_bytes_per_token(corpus, teacher, tmp_path):
    assert bytes_per_token(64, 49152) == 64 * 2 + 64 * 2 + 4 == 260
    assert full_logits_bytes_per_token(49152) == 98_304
    assert 260 / 98_304 < 0.0027  # the goal is <= 2%
    assert bytes_per_token(64, 128_256) == 64 * 2 + 64 * 4 + 4  # int32 ids past 65,536 tokens
    r = build_logit_cache(
        teacher and Counting(teacher), corpus.split("train"), config(k=64, max_blocks=5), tmp_path / "c"
    )
    m = r.manifest
    assert (m["bytes_per_token"], m["full_fp16_bytes_per_token"], m["dtypes"]["ids"]) == (260, 98_304, "uint16")
    assert m["ratio_to_fp16_logits"] == pytest.approx(260 / 98_304, abs=1e-6)
    on_disk = sum((tmp_path / "c" / s["file"]).stat().st_size for s in m["shards"])
    assert on_disk == 5 * B * 260


def test_resume_keeps_completed_shards(corpus, teacher, tmp_path):
    train = corpus.split("train")
    reference = build_logit_cache(Counting(teacher), train, config(), tmp_path / "ref")
    crashing = Counting(teacher, fail_after=3)  # batch 3, 4 blocks per shard: shard 0 done, crash inside shard 1
    with pytest.raises(KeyboardInterrupt):
        build_logit_cache(crashing, train, config(), tmp_path / "c")
    partial = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert not partial["complete"] and [s["file"] for s in partial["shards"]] == ["shard-00000.bin"]
    with pytest.raises(CacheError, match="incomplete .4 of 10 blocks.*cache-logits"):
        LogitCache.open(tmp_path / "c")
    resumed = Counting(teacher)
    r = build_logit_cache(resumed, train, config(), tmp_path / "c")
    assert (r.shards_reused, r.shards_written, resumed.blocks) == (1, 2, 6)
    assert [s["sha256"] for s in r.manifest["shards"]] == [s["sha256"] for s in reference.manifest["shards"]]
    assert r.manifest_sha256 == reference.manifest_sha256
    again = Counting(teacher)
    r = build_logit_cache(again, train, config(), tmp_path / "c")
    assert (r.shards_reused, r.shards_written, again.calls) == (3, 0, 0)
    more = Counting(teacher)
    r = build_logit_cache(more, train, config(max_blocks=13), tmp_path / "c")  # grow: the full shards stay
    assert (r.shards_reused, more.blocks, r.n_blocks) == (2, 5, 13)


def test_other_settings_are_refused(corpus, teacher, tmp_path):
    train = corpus.split("train")
    build_logit_cache(Counting(teacher), train, config(max_blocks=4), tmp_path / "c")
    for change, field in (
        (dict(k=8), "k 16 != 8"),
        (dict(block_size=16), "block_size 32 != 16"),
        (dict(teacher_sha256="cd" * 32), "teacher_sha256"),
    ):
        with pytest.raises(CacheError, match="other settings") as e:
            build_logit_cache(Counting(teacher), train, config(max_blocks=4, **change), tmp_path / "c")
        assert field in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CacheError, match="split 'train' != 'validation'"):
        build_logit_cache(Counting(teacher), corpus.split("validation"), config(max_blocks=2), tmp_path / "c")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(AssistantError, match="holds no logit cache"):
        build_logit_cache(Counting(teacher), train, config(max_blocks=4), tmp_path / "junk")


def test_mismatched_corpus_is_refused(corpus, teacher, smollm2_tokenizer, tmp_path):
    build_logit_cache(Counting(teacher), corpus.split("train"), config(max_blocks=4), tmp_path / "c")
    cache = LogitCache.open(tmp_path / "c")
    cache.check_matches(corpus, "train", B)
    other = make_corpus(smollm2_tokenizer, tmp_path / "other", ("heapq.py",))
    for args, text in (
        ((other, "train", B), "was made from corpus"),
        ((corpus, "validation", B), "holds the train split"),
        ((corpus, "train", 64), "block size 32, not 64"),
    ):
        with pytest.raises(CacheError, match=text) as e:
            cache.check_matches(*args)
        assert "assistant distill cache-logits" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_cache_shard_is_named(corpus, teacher, tmp_path):
    build_logit_cache(Counting(teacher), corpus.split("train"), config(max_blocks=8), tmp_path / "c")
    shard = tmp_path / "c" / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard-00001.bin is corrupt: sha256"):
        LogitCache.open(tmp_path / "c")
    LogitCache.open(tmp_path / "c", verify=False)
    fixed = Counting(teacher)
    build_logit_cache(fixed, corpus.split("train"), config(max_blocks=8), tmp_path / "c")  # a rerun recomputes it
    assert fixed.blocks == 4
    LogitCache.open(tmp_path / "c")


def test_cli_cache_logits(corpus, teacher, smollm2_tokenizer, tmp_path, monkeypatch):
    from distill import models
    from distill.data_cmd import cache_logits
    from distill.data_cmd import corpus as corpus_cmd

    def fake_load_teacher(spec, *, device="cpu", dtype=None, **kw):
        return SimpleNamespace(model=teacher, source=spec, sha256="ef" * 32, vocab_size=SPEC.vocab, tokenizer_spec=spec)

    monkeypatch.setattr(models, "load_teacher", fake_load_teacher)
    app = typer.Typer(cls=OneLineErrorGroup)
    app.command("corpus")(corpus_cmd)
    app.command("cache-logits")(cache_logits)
    args = [
        "cache-logits",
        "--corpus",
        str(corpus.path),
        "--teacher",
        str(smollm2_tokenizer.files_dir),
        "--block-size",
        str(B),
        "--top-k",
        "8",
        "--max-blocks",
        "3",
        "--out",
        str(tmp_path / "c"),
    ]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert (d["n_blocks"], d["k"], d["bytes_per_token"], d["shards_written"]) == (3, 8, 36, 1)
    assert LogitCache.open(tmp_path / "c").manifest["teacher"]["tokenizer_spec"] == str(smollm2_tokenizer.files_dir)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "1 reused" in res.output and "bytes/token" in res.output
    res = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "c"), "--top-k", "4"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "k 8 != 4" in res.output
