"""The logit cache from a GGUF teacher through llama.cpp: same targets as the PyTorch teacher, its own
identity in the manifest, and refusals for a cache of another teacher."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from assistant.errors import AssistantError, UsageError  # noqa: E402
from distill.logit_cache import CacheError, LogitCache, cache_teacher_logits  # noqa: E402
from distill.recipe import Recipe  # noqa: E402
from tests.tiny_qwen2 import TinyQwen2Spec, build_tiny_qwen2, cached_tiny_qwen2_tokenizer  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
B, K = 32, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Qwen2 teacher as an HF directory and as our F32 GGUF of it, and a corpus in its tokenizer."""
    from distill.corpus import CorpusConfig, build_corpus
    from distill.tokenizer import load_tokenizer
    from export.pipeline import GgufRequest, LockTarget, export_gguf

    base = tmp_path_factory.mktemp("llama-teacher")
    tok_dir = cached_tiny_qwen2_tokenizer(base)
    teacher = base / "teacher"
    build_tiny_qwen2(teacher, TinyQwen2Spec(hidden=128, intermediate=256, layers=2, seed=4), tokenizer_dir=tok_dir)
    gguf = export_gguf(
        GgufRequest(teacher, base / "teacher.F32.gguf", "f32", lock=LockTarget(enabled=False))
    ).result.path
    src = base / "src"
    src.mkdir()
    for name in ("textwrap.py", "colorsys.py", "bisect.py"):
        shutil.copyfile(STDLIB / name, src / name)
    corpus = base / "corpus"
    build_corpus(
        load_tokenizer(str(teacher)), CorpusConfig(roots=(src,), val_fraction=0.3, decontaminate=False), corpus
    )
    return {"teacher": str(teacher), "gguf": str(gguf), "corpus": str(corpus)}


@pytest.fixture(scope="module")
def caches(world, tmp_path_factory):
    base = tmp_path_factory.mktemp("caches")
    torch_cache = cache_teacher_logits(
        world["corpus"], world["teacher"], base / "torch", block_size=B, k=K, max_blocks=4
    )
    llama_cache = cache_teacher_logits(
        world["corpus"], world["gguf"], base / "llama", block_size=B, k=K, max_blocks=4, backend="llama.cpp", threads=1
    )
    return torch_cache, llama_cache


def test_llama_cpp_cache_holds_the_same_targets_as_the_pytorch_teacher(caches):
    torch_cache, llama_cache = caches
    assert llama_cache.manifest["teacher"]["backend"] == "llama.cpp"
    assert torch_cache.manifest["teacher"]["backend"] == "torch"
    assert llama_cache.manifest["teacher"]["vocab_size"] == torch_cache.manifest["teacher"]["vocab_size"] == 1024
    a, b = LogitCache.open(torch_cache.path), LogitCache.open(llama_cache.path)
    assert a.n_blocks == b.n_blocks == 4
    for i in range(4):
        lp_a, ids_a, rest_a = a.block(i)
        lp_b, ids_b, rest_b = b.block(i)
        assert (ids_a[:, 0] == ids_b[:, 0]).all()  # the teacher's top-1 at every position
        top1_gap = np.abs(lp_a[:, 0].astype(np.float32) - lp_b[:, 0].astype(np.float32)).max()
        assert top1_gap < 5e-3  # F32 weights; the gap is llama.cpp's F16 KV cache and float16 storage
        assert np.abs(rest_a - rest_b).max() < 5e-3


def test_a_rerun_with_the_other_backend_is_refused_rather_than_mixed(world, caches):
    _, llama_cache = caches
    with pytest.raises(CacheError, match=r"teacher_backend 'llama.cpp' != 'torch'"):
        cache_teacher_logits(world["corpus"], world["gguf"], llama_cache.path, block_size=B, k=K, max_blocks=4)


def test_bad_backend_and_directory_teacher_are_one_line_errors(world, tmp_path):
    with pytest.raises(UsageError, match=r"--backend 'onnx' is not one of torch, llama.cpp"):
        cache_teacher_logits(world["corpus"], world["gguf"], tmp_path / "x", block_size=B, backend="onnx")
    with pytest.raises(UsageError, match=r"needs a GGUF teacher"):
        cache_teacher_logits(world["corpus"], world["teacher"], tmp_path / "y", block_size=B, backend="llama.cpp")


def test_training_refuses_a_cache_made_by_another_teacher(world, caches, tmp_path):
    from distill.train import train

    other = tmp_path / "other-teacher"
    build_tiny_qwen2(
        other, TinyQwen2Spec(hidden=128, intermediate=256, layers=2, seed=9), tokenizer_dir=Path(world["teacher"])
    )
    _, llama_cache = caches
    recipe = Recipe.from_dict(
        dict(
            teacher=str(other),
            corpus=world["corpus"],
            out=str(tmp_path / "run"),
            logit_cache=str(llama_cache.path),
            student={"init": "random", "layers": 1},
            block_size=B,
            micro_batch=1,
            grad_accum=1,
            max_steps=1,
            warmup_steps=0,
            train_blocks=4,
            eval_blocks=2,
            eval_with_teacher=False,
        )
    )
    with pytest.raises(AssistantError, match=r"was made by teacher .*teacher\.F32\.gguf.* not by the recipe's teacher"):
        train(recipe)
    assert not (tmp_path / "run" / "student").exists()
    # the same cache with its own teacher (the GGUF) trains
    ok = train(recipe.replace(teacher=world["gguf"], out=str(tmp_path / "ok")))
    assert ok.steps == 1
    prov = json.loads((ok.student_dir / "provenance.json").read_text())
    assert prov["logit_cache"]["manifest_sha256"] == llama_cache.manifest_sha256
    assert (
        prov["teacher"]["sha256"] == llama_cache.manifest["teacher"]["sha256"] != ""
    )  # no teacher loaded, still pinned
