"""The example corpus (prompt → assertion rows with a loss mask) and training on it: the rows are the
eval's prompts, the mask covers exactly the target, drops and cuts are counted, builds are byte-identical,
the loss sees only target tokens (checked by hand), and the logit and hidden-state caches accept it."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from assistant.asserts.dataset import Example  # noqa: E402
from assistant.asserts.scoring import REPLY_START, extract_assertion, normalize, user_message  # noqa: E402
from assistant.errors import AssistantError, UsageError  # noqa: E402
from distill.corpus import CorpusError  # noqa: E402
from distill.example_corpus import (  # noqa: E402
    ExampleCorpus,
    ExampleCorpusConfig,
    build_example_corpus,
    open_corpus,
    pack_row,
)
from distill.recipe import Recipe  # noqa: E402
from distill.tokenizer import load_tokenizer  # noqa: E402
from tests.distill.helpers import tiny_recipe, torchrun, weights  # noqa: E402
from tests.tiny_qwen2 import TinyQwen2Spec, build_tiny_qwen2, cached_tiny_qwen2_tokenizer  # noqa: E402

B = 128
LONG_ASSERT = "self.assertEqual(result, [" + ", ".join(f"'item number {i}'" for i in range(40)) + "])"


def _focal_sources() -> list[str]:
    """Real functions of the standard library, as the dataset's focal code."""
    import colorsys
    import fnmatch
    import shlex

    funcs = [textwrap.dedent, textwrap.indent, colorsys.rgb_to_hsv, fnmatch.fnmatch, shlex.quote, colorsys.hls_to_rgb]
    return [inspect.getsource(f) for f in funcs]


def write_dataset(directory: Path, n_train: int = 14, n_val: int = 4) -> Path:
    """An assertion dataset folder in the shape assistant.asserts.dataset writes (manifest + split files)."""
    directory.mkdir(parents=True, exist_ok=True)
    focal = _focal_sources()
    splits = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", 2)):
        rows = []
        for i in range(n):
            src = focal[i % len(focal)]
            name = src.split("def ", 1)[1].split("(", 1)[0]
            prefix = f"def test_{name}_{i}(self):\n    result = {name}({i}, 'x' * {i})\n    <AssertPlaceHolder>\n"
            assertion = LONG_ASSERT if (split, i) == ("train", 5) else f"self.assertEqual(result, {i * 7})"
            rows.append(Example(f"t:{split}{i}::T.test_{i}", f"t:{split}{i}", split, "m", name, src, prefix, assertion))
        text = "".join(e.to_json() + "\n" for e in rows)
        (directory / f"{split}.jsonl").write_text(text)
        splits[split] = {"examples": n, "files": n, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps({"version": 1, "splits": splits}, indent=1, sort_keys=True))
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("examples")
    tok_dir = cached_tiny_qwen2_tokenizer(base)
    teacher = base / "teacher"
    build_tiny_qwen2(
        teacher,
        TinyQwen2Spec(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, seed=3),
        tokenizer_dir=tok_dir,
    )
    dataset = write_dataset(base / "dataset")
    tok = load_tokenizer(str(teacher))
    corpus = base / "corpus"
    build_example_corpus(tok, ExampleCorpusConfig(block_size=B, dataset_dir=dataset), corpus)
    other = base / "other-corpus"
    build_example_corpus(tok, ExampleCorpusConfig(block_size=B, dataset_dir=dataset, max_examples=8), other)
    return {
        "teacher": str(teacher),
        "dataset": dataset,
        "corpus": str(corpus),
        "other": str(other),
        "tok": tok,
        "base": base,
    }


def _index(corpus: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(corpus) / "examples.jsonl").read_text().splitlines()]


def _expected_prompt(example: Example) -> str:
    """The tiny tokenizer's ChatML template written out by hand, then the eval's reply start."""
    return f"<|im_start|>user\n{user_message(example)}<|im_end|>\n<|im_start|>assistant\n{REPLY_START}"


def _examples(dataset: Path, split: str) -> list[Example]:
    return [Example(**json.loads(line)) for line in (dataset / f"{split}.jsonl").read_text().splitlines()]


# -- the rows --------------------------------------------------------------------------------------


def test_pack_row_masks_exactly_the_target_and_cuts_the_prompt_from_the_left():
    tokens, mask, cut = pack_row([1, 2, 3], [7, 8, 9], 8, 0)
    assert tokens.tolist() == [1, 2, 3, 7, 8, 9, 0, 0, 0] and mask.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0] and cut == 0
    tokens, mask, cut = pack_row(list(range(1, 11)), [7, 8], 4, 0)  # room for 3 prompt tokens
    assert tokens.tolist() == [8, 9, 10, 7, 8] and mask.tolist() == [0, 0, 0, 1, 1] and cut == 7
    assert pack_row([1], [7, 8, 9, 10, 11], 4, 0) is None  # the target alone fills the row: dropped
    tokens, mask, _ = pack_row([1, 2], [7, 8, 9, 10], 4, 0)  # exactly fits with one prompt token
    assert tokens.tolist() == [2, 7, 8, 9, 10] and mask.tolist() == [0, 1, 1, 1, 1]


def test_mask_is_one_exactly_on_the_target_and_the_prompt_is_the_evals(world):
    tok = world["tok"].tokenizer
    corpus = ExampleCorpus.open(world["corpus"])
    split = corpus.split("train")
    index = [r for r in _index(world["corpus"]) if r["split"] == "train"]
    examples = {e.id: e for e in _examples(world["dataset"], "train")}
    eot = tok.token_to_id("<|im_end|>")
    assert corpus.manifest["prompt"]["end_of_turn"] == {"id": eot, "token": "<|im_end|>"}
    kept = [r for r in index if "row" in r]
    assert len(kept) == split.n_blocks(B) == 13
    for r in kept:
        ex = examples[r["id"]]
        row, mask = split.block(r["row"], B), split.mask(r["row"])
        target = row[mask == 1].tolist()
        want_target = tok.encode(ex.assertion + "\n```", add_special_tokens=False).ids + [eot]
        assert target == want_target
        assert np.flatnonzero(mask).tolist() == list(range(mask.argmax(), mask.argmax() + len(target)))  # one run
        prompt = tok.encode(_expected_prompt(ex), add_special_tokens=False).ids
        start = mask.argmax()
        assert row[:start].tolist() == prompt[len(prompt) - start :]  # the prompt's end, right before the target
        assert r["prompt_cut"] == len(prompt) - start
        assert (row[start + len(target) :] == corpus.eos_id).all()  # padding after, never a target
        reply = tok.decode(target[:-1], skip_special_tokens=False)
        assert extract_assertion(reply) == normalize(ex.assertion)  # the eval would score it as exact
        assert split.label_mask([r["row"]], B)[0].tolist() == (mask[1:] == 1).tolist()


def test_long_prompts_keep_their_end_and_the_whole_target_and_drops_are_counted(world, tmp_path):
    m = ExampleCorpus.open(world["corpus"]).manifest
    train = m["splits"]["train"]
    assert train["examples"] == 14 and train["n_rows"] == 13 and train["dropped"] == 1
    assert train["truncated"] >= 10 and train["prompt_tokens_cut"] > 0  # block 128 is shorter than most prompts
    dropped = [r for r in _index(world["corpus"]) if "dropped" in r]
    assert [r["id"] for r in dropped] == ["t:train5::T.test_5"] and dropped[0]["target_tokens"] > B
    # a row long enough keeps every example, and uncut prompts equal the eval's whole prompt
    roomy = build_example_corpus(
        world["tok"], ExampleCorpusConfig(block_size=1024, dataset_dir=world["dataset"]), tmp_path / "c"
    )
    assert roomy.manifest["splits"]["train"]["dropped"] == 0 and roomy.manifest["splits"]["train"]["n_rows"] == 14
    assert roomy.manifest["splits"]["validation"]["n_rows"] == 4


def test_building_twice_gives_identical_bytes(world, tmp_path):
    out = tmp_path / "again"
    build_example_corpus(world["tok"], ExampleCorpusConfig(block_size=B, dataset_dir=world["dataset"]), out)
    names = sorted(p.name for p in Path(world["corpus"]).iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (Path(world["corpus"]) / name).read_bytes(), name
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "assistant-example-corpus" and m["tokenizer"]["sha256"] == world["tok"].sha256
    assert (
        m["dataset"]["manifest_sha256"] == hashlib.sha256((world["dataset"] / "manifest.json").read_bytes()).hexdigest()
    )
    assert set(m["splits"]["train"]["shards"][0]) == {"file", "mask", "n_rows", "sha256", "mask_sha256"}


def test_max_examples_takes_the_first_train_examples(world):
    other = ExampleCorpus.open(world["other"])
    assert (
        other.manifest["splits"]["train"]["examples"] == 8 and other.manifest["splits"]["validation"]["examples"] == 4
    )
    a, b = ExampleCorpus.open(world["corpus"]).split("train"), other.split("train")
    assert all((a.block(i, B) == b.block(i, B)).all() for i in range(b.n_blocks(B)))


def test_bad_input_gives_one_line_errors_and_writes_nothing(world, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="holds no assertion dataset"):
        build_example_corpus(world["tok"], ExampleCorpusConfig(block_size=B, dataset_dir=tmp_path), out)
    plain = tmp_path / "plain-tokenizer"
    shutil.copytree(world["teacher"], plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CorpusError, match=r"has no chat template") as e:
        build_example_corpus(
            load_tokenizer(str(plain)), ExampleCorpusConfig(block_size=B, dataset_dir=world["dataset"]), out
        )
    assert "\n" not in str(e.value)
    with pytest.raises(CorpusError, match=r"no train example fits block size 8") as e:
        build_example_corpus(world["tok"], ExampleCorpusConfig(block_size=8, dataset_dir=world["dataset"]), out)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="at least 2"):
        build_example_corpus(world["tok"], ExampleCorpusConfig(block_size=1, dataset_dir=world["dataset"]), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-tokenizer"]  # no out, no temp dir left
    corpus = ExampleCorpus.open(world["corpus"])
    with pytest.raises(CorpusError, match=r"block size 128, not 64"):
        corpus.split("train").n_blocks(64)


def test_cli_builds_the_example_corpus_and_bad_input_is_one_line(world, tmp_path):
    from typer.testing import CliRunner

    from assistant.cli.app import app

    runner = CliRunner()
    args = ["distill", "corpus", "--task", "asserts", "--tokenizer", world["teacher"], "--block-size", str(B)]
    ok = runner.invoke(
        app, [*args, "--dataset", str(world["dataset"]), "--max-examples", "6", "--out", str(tmp_path / "c"), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.stdout)
    assert d["splits"]["train"]["examples"] == 6 and d["splits"]["train"]["dropped"] == 1
    for bad, words in (
        ([*args, "--dataset", str(tmp_path), "--out", str(tmp_path / "x")], "holds no assertion dataset"),
        ([*args[:-2], "--dataset", str(world["dataset"]), "--out", str(tmp_path / "x")], "needs --block-size"),
        ([*args, "--dataset", str(world["dataset"]), "--max-tokens", "9", "--out", str(tmp_path / "x")], "--task code"),
        (["distill", "corpus", "--block-size", "9", "--out", str(tmp_path / "x")], "--task asserts"),
    ):
        r = runner.invoke(app, bad)
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


# -- training on it ----------------------------------------------------------------------------------


def _recipe(world, out: Path, **changes) -> Recipe:
    return tiny_recipe(world, out, **{"block_size": B, "chunk_size": 8, **changes})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _hand_loss(student, teacher, split, indices):
    """Masked CE and KL(teacher‖student) over the target tokens, and CE over every position, by hand."""
    F = torch.nn.functional
    rows = torch.from_numpy(split.batch(indices, B))
    keep = torch.from_numpy(split.label_mask(indices, B))
    with torch.no_grad():
        s = student(rows[:, :-1]).logits.float()
        labels = rows[:, 1:]
        ce = F.cross_entropy(s[keep], labels[keep])
        ce_all = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1))
        kl = None
        if teacher is not None:
            t = teacher(rows[:, :-1]).logits.float()[keep].log_softmax(-1)
            kl = (t.exp() * (t - s[keep].log_softmax(-1))).sum(-1).mean()
    return float(ce), float(ce_all), None if kl is None else float(kl), int(keep.sum())


def test_training_loss_and_validation_cover_only_the_target_tokens(world, tmp_path):
    from distill.models import build_student, load_teacher
    from distill.train import DistillStep, Env, sample_indices, train, validate

    recipe = _recipe(world, tmp_path / "run", max_steps=1, warmup_steps=0, grad_accum=1, micro_batch=3)
    result = train(recipe)
    first = next(r for r in _rows(tmp_path / "run") if "loss" in r)
    teacher = load_teacher(world["teacher"])
    student = build_student(recipe.student, teacher.model).model.eval()
    split = open_corpus(world["corpus"]).split("train")
    idx = sample_indices(0, recipe, Env(), split.n_blocks(B))[0]
    ce, ce_all, kl, n = _hand_loss(student, teacher.model, split, idx)
    assert first["targets"] == n and n < 3 * B / 4  # the targets are a small part of the rows
    assert first["ce"] == pytest.approx(ce, rel=1e-4) and first["div"] == pytest.approx(kl, rel=1e-4)
    assert first["loss"] == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-4)
    assert abs(ce_all - ce) > 10 * 1e-4 * ce  # an unmasked loss is far outside the tolerance above
    # validation: masked CE over the validation examples, by hand
    val = open_corpus(world["corpus"]).split("validation")
    got = validate(DistillStep(student, recipe.loss_config()), teacher, val, recipe, Env())
    v_ce, _, v_kl, _ = _hand_loss(student, teacher.model, val, list(range(val.n_blocks(B))))
    assert got["val_ce"] == pytest.approx(v_ce, rel=1e-4) and got["val_kl"] == pytest.approx(v_kl, rel=1e-3)
    prov = json.loads((result.student_dir / "provenance.json").read_text())
    assert prov["corpus"]["manifest_sha256"] == open_corpus(world["corpus"]).manifest_sha256


def test_a_killed_run_on_the_example_corpus_resumes_to_the_same_weights(world, tmp_path):
    from distill.train import train

    straight = train(_recipe(world, tmp_path / "straight"))
    first = train(_recipe(world, tmp_path / "resumed", stop_after=2))
    assert first.stopped_early and first.steps == 2
    second = train(_recipe(world, tmp_path / "resumed"))
    a, b = weights(straight.student_dir), weights(second.student_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert {"val_ce", "val_kl", "val_top1"} <= second.final.keys()


def test_a_recipe_with_another_block_size_is_refused(world, tmp_path):
    from distill.train import train

    with pytest.raises(AssistantError, match=r"block size 128, not 64"):
        train(_recipe(world, tmp_path / "run", block_size=64))


@pytest.mark.slow
def test_two_process_run_on_the_example_corpus_matches_one_process(world, tmp_path):

    from distill.train import train

    single = train(_recipe(world, tmp_path / "single", micro_batch=2, grad_accum=1, max_steps=3))
    proc = torchrun(_recipe(world, tmp_path / "ddp", micro_batch=1, grad_accum=1, max_steps=3), tmp_path / "ddp.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single.student_dir), weights(tmp_path / "ddp" / "student")
    # Each rank trims its own rows: the same targets, float-summation noise only. The key biases are
    # left out: their exact gradient is zero (softmax ignores a shift shared by all keys of a query), so
    # Adam's 1/sqrt(v) turns that noise into lr-sized steps.
    for k in a:
        if not k.endswith("k_proj.bias"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5, msg=k)


# -- the caches ---------------------------------------------------------------------------------------


def test_logit_cache_stores_only_target_positions_and_trains(world, tmp_path):
    from distill.logit_cache import CacheConfig, CacheError, LogitCache, build_logit_cache, cache_teacher_logits
    from distill.models import load_teacher
    from distill.train import train

    made = cache_teacher_logits(world["corpus"], world["teacher"], tmp_path / "cache", block_size=B, k=8)
    corpus = ExampleCorpus.open(world["corpus"])
    split = corpus.split("train")
    assert made.manifest["positions"] == "targets"
    assert made.to_dict()["tokens"] == corpus.manifest["splits"]["train"]["n_target_tokens"]
    cache = LogitCache.open(made.path)
    teacher = load_teacher(world["teacher"]).model
    for i in (0, 4, 12):
        lp, ids, rest = cache.block(i)
        keep = split.label_mask([i], B)[0]
        with torch.no_grad():
            want = teacher(torch.from_numpy(split.block(i, B)[None, :-1])).logits[0].float().log_softmax(-1).numpy()
        at = np.flatnonzero(keep)
        assert (ids[at, 0] == want[at].argmax(-1)).all()
        np.testing.assert_allclose(lp[at].astype(np.float32), np.take_along_axis(want[at], ids[at], -1), atol=2e-3)
        assert (rest[~keep] == 1).all() and np.isneginf(lp[~keep]).all()  # no target there: nothing stored
    # the plain forward (full logits, positions picked after) stores the same targets
    plain = build_logit_cache(
        lambda x: teacher(input_ids=x).logits,
        split,
        CacheConfig(block_size=B, vocab_size=1024, teacher_source="t", teacher_sha256="t", k=8),
        tmp_path / "plain",
    )
    other = LogitCache.open(plain.path)
    for i in range(3):
        np.testing.assert_allclose(
            other.block(i)[0].astype(np.float32), cache.block(i)[0].astype(np.float32), atol=2e-3
        )
    # training reads it; a cache of another corpus is refused
    recipe = _recipe(world, tmp_path / "cached", logit_cache=str(made.path), eval_with_teacher=False, max_steps=2)
    result = train(recipe)
    assert result.steps == 2 and "val_ce" in result.final
    with pytest.raises(CacheError, match=r"was made from corpus"):
        train(recipe.replace(corpus=world["other"], out=str(tmp_path / "refused")))
    assert not (tmp_path / "refused" / "student").exists()


def test_validation_from_the_teachers_cache_matches_the_online_teacher(world, tmp_path):
    from distill.logit_cache import CacheError, LogitCache, cache_teacher_logits
    from distill.models import build_student, load_teacher
    from distill.train import DistillStep, Env, train, validate

    def cached(k: int) -> LogitCache:
        out = tmp_path / f"val-{k}"
        cache_teacher_logits(world["corpus"], world["teacher"], out, block_size=B, k=k, split="validation")
        return LogitCache.open(out)

    recipe = _recipe(world, tmp_path / "run")
    teacher = load_teacher(world["teacher"])
    student = build_student(recipe.student, teacher.model).model.eval()
    val = open_corpus(world["corpus"]).split("validation")
    step = DistillStep(student, recipe.loss_config())
    online = validate(step, teacher, val, recipe, Env())
    full = validate(step, None, val, recipe, Env(), cached=cached(1024))  # every token kept: the same KL
    top8 = validate(step, None, val, recipe, Env(), cached=cached(8))
    assert online["val_kl"] > 0.01  # the student is not the teacher
    assert full["val_kl"] == pytest.approx(online["val_kl"], rel=1e-2)
    assert full["val_top1"] == pytest.approx(online["val_top1"], abs=0.02)
    assert top8["val_kl"] < full["val_kl"]  # buckets merge tokens: a lower bound on the true KL
    assert top8["val_top1"] == pytest.approx(online["val_top1"], abs=0.02)
    assert full["val_ce"] == online["val_ce"]

    # in a run without the teacher in memory, and refused when it is another split's
    cache_teacher_logits(world["corpus"], world["teacher"], tmp_path / "train-8", block_size=B, k=8)
    run = train(
        _recipe(
            world,
            tmp_path / "cached",
            logit_cache=str(tmp_path / "train-8"),
            eval_with_teacher=False,
            val_logit_cache=str(tmp_path / "val-8"),
            max_steps=2,
        )
    )
    assert {"val_kl", "val_top1"} <= run.final.keys()
    prov = json.loads((run.student_dir / "provenance.json").read_text())
    assert prov["validation_teacher"] == "cache" and prov["val_logit_cache"]["path"] == str(tmp_path / "val-8")
    with pytest.raises(CacheError, match=r"holds the train split, not validation"):
        train(_recipe(world, tmp_path / "refused", val_logit_cache=str(tmp_path / "train-8")))


def test_hidden_cache_on_the_example_corpus_matches_the_frozen_run_and_refuses_another_corpus(world, tmp_path):
    from distill.frozen import HiddenCacheError
    from distill.train import train

    hc = str(tmp_path / "hc")
    frozen = train(_recipe(world, tmp_path / "frozen", freeze_layers=1))
    cached = train(_recipe(world, tmp_path / "cached", freeze_layers=1, hidden_cache=hc))
    a, b = weights(frozen.student_dir), weights(cached.student_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    manifest = json.loads((tmp_path / "hc" / "manifest.json").read_text())
    assert manifest["n_blocks"] == 13 and manifest["block_size"] == B
    with pytest.raises(HiddenCacheError, match=r"the corpus"):
        train(_recipe(world, tmp_path / "other", freeze_layers=1, hidden_cache=hc, corpus=world["other"]))


# -- against the GGUF the eval runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf(world):
    """The tiny teacher as an F32 GGUF (its chat template in the metadata, as the Qwen GGUFs carry it)."""
    from export.pipeline import GgufRequest, LockTarget, export_gguf

    request = GgufRequest(
        Path(world["teacher"]), world["base"] / "teacher.F32.gguf", "f32", lock=LockTarget(enabled=False)
    )
    return str(export_gguf(request).result.path)


def test_rows_hold_the_tokens_the_evals_engine_reads_and_a_gguf_tokenizer_gives_the_same_rows(
    world, gguf, tmp_path, monkeypatch
):
    from assistant.runtime.engine import Engine, EngineConfig
    from assistant.runtime.prompts import Request
    from assistant.store.lockfile import load_lock
    from assistant.store.resolve import HashCache, resolve

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path / "cache"))
    config = ExampleCorpusConfig(block_size=1024, dataset_dir=world["dataset"])
    from_dir = build_example_corpus(world["tok"], config, tmp_path / "dir")
    from_gguf = build_example_corpus(load_tokenizer(gguf), config, tmp_path / "gguf")
    assert from_gguf.manifest["prompt"]["chat_template"]["source"].startswith("gguf:")
    for split in ("train", "validation"):
        a, b = from_dir.manifest["splits"][split]["shards"], from_gguf.manifest["splits"][split]["shards"]
        assert [(s["sha256"], s["mask_sha256"]) for s in a] == [(s["sha256"], s["mask_sha256"]) for s in b]
    corpus = ExampleCorpus.open(from_dir.path)
    rows = {r["id"]: r for r in _index(from_dir.path) if "row" in r and r["split"] == "train"}
    model = resolve(gguf, load_lock(), HashCache(tmp_path / "hashes.json"))
    with Engine(model, EngineConfig(n_ctx=1024, n_threads=1)) as engine:
        for ex in _examples(world["dataset"], "train"):
            prompt = engine.tokenize(engine.render(Request(user_message(ex)), style="chat", system=None) + REPLY_START)
            row, mask = (
                corpus.split("train").block(rows[ex.id]["row"], 1024),
                corpus.split("train").mask(rows[ex.id]["row"]),
            )
            assert row[: mask.argmax()].tolist() == prompt, ex.id


def test_llama_cpp_teacher_caches_the_same_target_positions(world, gguf, tmp_path, monkeypatch):
    from distill.logit_cache import LogitCache, cache_teacher_logits

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path / "cache"))
    on_torch = cache_teacher_logits(
        world["corpus"], world["teacher"], tmp_path / "torch", block_size=B, k=8, max_blocks=4
    )
    on_llama = cache_teacher_logits(
        world["corpus"], gguf, tmp_path / "llama", block_size=B, k=8, max_blocks=4, backend="llama.cpp", threads=1
    )
    assert on_llama.manifest["positions"] == "targets" and on_llama.manifest["teacher"]["backend"] == "llama.cpp"
    a, b = LogitCache.open(on_torch.path), LogitCache.open(on_llama.path)
    split = ExampleCorpus.open(world["corpus"]).split("train")
    for i in range(4):
        keep = split.label_mask([i], B)[0]
        (lp_a, ids_a, rest_a), (lp_b, ids_b, rest_b) = a.block(i), b.block(i)
        assert (ids_a[keep, 0] == ids_b[keep, 0]).all()
        assert np.abs(lp_a[keep, 0].astype(np.float32) - lp_b[keep, 0].astype(np.float32)).max() < 5e-3
        assert np.abs(rest_a[keep] - rest_b[keep]).max() < 5e-3
