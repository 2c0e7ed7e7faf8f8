"""Frozen lower layers and the hidden-state cache: same model, same weights with or without the cache,
resumable, refused when it belongs to another student or corpus, loss only where there are targets."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from assistant.errors import UsageError  # noqa: E402
from distill.frozen import HiddenCacheError, prefix_hidden, run_layers  # noqa: E402
from distill.recipe import Recipe  # noqa: E402
from tests.distill.helpers import tiny_recipe, weights  # noqa: E402
from tests.tiny_llama import TinyLlamaSpec, tiny_llama_config  # noqa: E402
from tests.tiny_qwen2 import TinyQwen2Spec, build_tiny_qwen2, cached_tiny_qwen2_tokenizer, random_qwen2  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from distill.corpus import CorpusConfig, build_corpus
    from distill.tokenizer import load_tokenizer

    base = tmp_path_factory.mktemp("frozen")
    tok_dir = cached_tiny_qwen2_tokenizer(base)
    teacher = base / "teacher"
    build_tiny_qwen2(
        teacher,
        TinyQwen2Spec(hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, seed=2),
        tokenizer_dir=tok_dir,
    )
    corpora = {}
    for name, files in {
        "a": ("textwrap.py", "colorsys.py", "bisect.py"),
        "b": ("heapq.py", "shlex.py", "fnmatch.py"),
    }.items():
        src = base / f"src-{name}"
        src.mkdir()
        for f in files:
            shutil.copyfile(STDLIB / f, src / f)
        build_corpus(
            load_tokenizer(str(teacher)), CorpusConfig(roots=(src,), val_fraction=0.3, decontaminate=False), base / name
        )
        corpora[name] = str(base / name)
    return {"teacher": str(teacher), "corpus": corpora["a"], "other_corpus": corpora["b"], "base": base}


def _recipe(world, out: Path, **changes) -> Recipe:
    base = dict(student={"layers": 3}, freeze_layers=2, grad_accum=1, eval_interval=4, eval_blocks=2, train_blocks=6)
    return tiny_recipe(world, out, **{**base, **changes})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prefix_then_the_rest_is_the_whole_model(family):
    from transformers import LlamaForCausalLM

    if family == "llama":
        torch.manual_seed(0)
        model = LlamaForCausalLM(
            tiny_llama_config(TinyLlamaSpec(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, vocab=500))
        ).eval()
    else:
        model = random_qwen2(TinyQwen2Spec(hidden=64, intermediate=128, layers=3, vocab=500))
    ids = torch.randint(0, 500, (2, 17))
    with torch.no_grad():
        whole = model.model(input_ids=ids).last_hidden_state
        for n in (0, 1, 3):
            split = run_layers(model.model, prefix_hidden(model.model, ids, n), n, final_norm=True)
            torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


def test_frozen_layers_stay_fixed_and_the_cache_reaches_the_same_weights(world, tmp_path):
    from distill.train import train

    plain = train(_recipe(world, tmp_path / "plain", freeze_layers=0))
    frozen = train(_recipe(world, tmp_path / "frozen"))
    cached = train(_recipe(world, tmp_path / "cached", hidden_cache=str(tmp_path / "hc")))
    init = weights(
        train(_recipe(world, tmp_path / "zero", max_steps=1, lr=1e-12, min_lr=1e-12, warmup_steps=0)).student_dir
    )
    w_plain, w_frozen, w_cached = (
        weights(plain.student_dir),
        weights(frozen.student_dir),
        weights(cached.student_dir),
    )
    lower = [k for k in w_frozen if k.startswith(("model.embed_tokens", "model.layers.0.", "model.layers.1."))]
    upper = [k for k in w_frozen if k.startswith("model.layers.2.")]
    assert lower and upper
    for k in lower:
        torch.testing.assert_close(w_frozen[k], init[k], rtol=0, atol=1e-9, msg=k)  # not moved
        assert not torch.equal(w_plain[k], init[k]) or k.endswith("norm.weight"), k  # the unfrozen run moves them
    assert any(not torch.equal(w_frozen[k], init[k]) for k in upper)
    for k in w_frozen:
        torch.testing.assert_close(w_cached[k], w_frozen[k], rtol=1e-5, atol=1e-6, msg=k)
    prov = json.loads((cached.student_dir / "provenance.json").read_text())
    assert any("frozen" in n for n in prov["student"]["notes"])
    manifest = json.loads((tmp_path / "hc" / "manifest.json").read_text())
    assert manifest["n_blocks"] == 6 and manifest["identity"]["n_frozen"] == 2


def test_a_killed_run_with_the_hidden_cache_resumes_to_the_same_weights(world, tmp_path):
    from distill.train import train

    recipe = _recipe(world, tmp_path / "run", hidden_cache=str(tmp_path / "hc"))
    whole = train(recipe.replace(out=str(tmp_path / "whole")))
    stopped = train(recipe.replace(stop_after=2))
    assert stopped.stopped_early and stopped.steps == 2
    resumed = train(recipe)
    assert resumed.steps == 4
    a, b = weights(whole.student_dir), weights(resumed.student_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_hidden_cache_of_another_student_or_corpus_is_refused_with_the_reason(world, tmp_path):
    from distill.train import train

    hc = str(tmp_path / "hc")
    train(_recipe(world, tmp_path / "first", hidden_cache=hc, max_steps=1, warmup_steps=0))
    with pytest.raises(HiddenCacheError, match=r"the frozen layers' weights .* differ"):
        train(
            _recipe(world, tmp_path / "other-student", hidden_cache=hc, student={"layers": 3, "keep_layers": [1, 2, 3]})
        )
    with pytest.raises(HiddenCacheError, match=r"the number of frozen layers"):
        train(_recipe(world, tmp_path / "other-n", hidden_cache=hc, freeze_layers=1))
    with pytest.raises(HiddenCacheError, match=r"the corpus"):
        train(_recipe(world, tmp_path / "other-corpus", hidden_cache=hc, corpus=world["other_corpus"]))
    with pytest.raises(UsageError, match=r"nothing frozen to cache"):
        _recipe(world, tmp_path / "x", hidden_cache=hc, freeze_layers=0)
    with pytest.raises(UsageError, match=r"freeze 0..2"):
        train(_recipe(world, tmp_path / "all", freeze_layers=3))


def test_the_loss_is_computed_only_where_there_are_targets():
    from distill.losses import IGNORE_INDEX, LossConfig, distill_loss
    from distill.train import DistillStep

    model = random_qwen2(TinyQwen2Spec(hidden=64, intermediate=128, layers=2, vocab=300))
    teacher = random_qwen2(TinyQwen2Spec(hidden=64, intermediate=128, layers=2, vocab=300, seed=7))
    ids = torch.randint(0, 300, (2, 12))
    labels = torch.randint(0, 300, (2, 12))
    labels[:, :7] = IGNORE_INDEX  # a prompt: no targets there
    cfg = LossConfig(alpha=0.5, temperature=1.0, chunk_size=4)
    with torch.no_grad():
        t_logits = teacher(ids).logits.reshape(-1, 300)
    seen = []

    def teacher_chunk(rows):
        seen.append(rows)
        return t_logits[rows]

    step = DistillStep(model, cfg, frozen=1)
    loss, _ = step(ids, labels, teacher_chunk, int((labels != IGNORE_INDEX).sum()))
    with torch.no_grad():
        ref, _ = distill_loss(model(ids).logits.reshape(-1, 300), t_logits, labels.reshape(-1), cfg)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    asked = torch.cat([r if isinstance(r, torch.Tensor) else torch.arange(24)[r] for r in seen])
    assert sorted(asked.tolist()) == sorted((labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1).tolist())


def test_freeze_head_keeps_an_untied_head_fixed_and_needs_frozen_layers():
    from distill.frozen import freeze_lower

    model = random_qwen2(TinyQwen2Spec(hidden=64, intermediate=128, layers=3, tied=False))
    notes = freeze_lower(model, 2, head=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.2.", "model.norm.")) for n in trainable)
    assert "the head and layers 0..1 frozen" in notes[0]
    untouched = random_qwen2(TinyQwen2Spec(hidden=64, intermediate=128, layers=3, tied=False))
    freeze_lower(untouched, 2)
    assert untouched.lm_head.weight.requires_grad  # by default an untied head learns
    with pytest.raises(UsageError, match="freeze_head needs freeze_layers"):
        freeze_lower(untouched, 0, head=True)
    assert Recipe(freeze_head=True, freeze_layers=2).hash() != Recipe(freeze_layers=2).hash()
