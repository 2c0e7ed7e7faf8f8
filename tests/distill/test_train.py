"""The distillation loop on a tiny teacher and a real (small) corpus: runs, resumes exactly,
refuses foreign checkpoints, trains from a logit cache, and matches itself under 2-process DDP."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from assistant.errors import AssistantError, UsageError  # noqa: E402
from distill.models import StudentSpec, build_student, count_parameters, load_teacher  # noqa: E402
from distill.recipe import Recipe, apply_overrides, load_recipe  # noqa: E402
from tests.distill.helpers import stdlib_corpus_world, tiny_recipe, torchrun, weights  # noqa: E402
from tests.tiny_llama import TinyLlamaSpec, build_tiny_llama, cached_smollm2_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = (
    "textwrap.py",
    "colorsys.py",
    "bisect.py",
    "heapq.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
    "keyword.py",
    "numbers.py",
    "queue.py",
    "sched.py",
    "stat.py",
)
TEACHER = TinyLlamaSpec(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, seed=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny teacher with SmolLM2's tokenizer and a token corpus built from a dozen stdlib files."""
    base = tmp_path_factory.mktemp("distill")
    build_tiny_llama(base / "teacher", TEACHER, tokenizer_dir=cached_smollm2_tokenizer(base))
    return stdlib_corpus_world(base, base / "teacher", CORPUS_FILES)


def _recipe(world, out: Path, **changes) -> Recipe:
    return tiny_recipe(
        world,
        out,
        **{
            "student": {"layers": 2, "hidden": 64, "seed": 0},
            "max_steps": 6,
            "warmup_steps": 2,
            "eval_interval": 3,
            **changes,
        },
    )


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_train_writes_a_loadable_student_with_provenance(world, tmp_path):
    from transformers import LlamaForCausalLM

    from distill.train import train

    result = train(_recipe(world, tmp_path / "run", max_steps=8, grad_accum=1))
    student_dir = result.student_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "provenance.json"):
        assert (student_dir / name).is_file(), name
    prov = json.loads((student_dir / "provenance.json").read_text())
    assert prov["teacher"]["source"] == world["teacher"] and len(prov["teacher"]["sha256"]) == 64
    assert prov["corpus"]["manifest_sha256"] and prov["steps"] == 8
    assert prov["student"]["kept_layers"] == [0, 2]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_ce" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]  # it learns
    assert {"val_ce", "val_kl", "val_top1"} <= val_rows[-1].keys() and 0 <= val_rows[-1]["val_top1"] <= 1
    model = LlamaForCausalLM.from_pretrained(str(student_dir))
    assert model.config.num_hidden_layers == 2
    assert count_parameters(model) == prov["student"]["parameters"]


def test_killed_and_resumed_run_reaches_the_same_weights(world, tmp_path):
    from distill.train import train

    straight = train(_recipe(world, tmp_path / "straight"))
    first = train(_recipe(world, tmp_path / "resumed", stop_after=3))
    assert first.stopped_early and first.steps == 3
    assert not (tmp_path / "resumed" / "student").exists()
    second = train(_recipe(world, tmp_path / "resumed"))
    assert second.steps == 6
    _assert_same_weights(weights(straight.student_dir), weights(second.student_dir))
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert steps == list(range(1, 7))  # rows after the checkpoint were not duplicated


def test_a_checkpoint_from_another_recipe_is_refused(world, tmp_path):
    from distill.train import train

    train(_recipe(world, tmp_path / "run", stop_after=2))
    with pytest.raises(AssistantError, match="different recipe"):
        train(_recipe(world, tmp_path / "run", alpha=0.9))
    # --restart discards it
    assert train(_recipe(world, tmp_path / "run", alpha=0.9, max_steps=2), restart=True).steps == 2


def test_alpha_zero_trains_on_cross_entropy_only(world, tmp_path):
    from distill.train import train

    train(_recipe(world, tmp_path / "ce", alpha=0.0, max_steps=2))
    rows = [json.loads(line) for line in (tmp_path / "ce" / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert all(r["loss"] == pytest.approx(r["ce"]) for r in rows)


def test_training_from_the_logit_cache_needs_no_teacher_in_memory(world, tmp_path, monkeypatch):
    from distill import train as train_module
    from distill.corpus import TokenCorpus
    from distill.logit_cache import CacheConfig, build_logit_cache

    teacher = load_teacher(world["teacher"])
    corpus = TokenCorpus.open(world["corpus"])
    cache_dir = tmp_path / "cache"
    build_logit_cache(
        lambda ids: teacher.model(input_ids=ids).logits,
        corpus.split("train"),
        CacheConfig(
            block_size=32,
            vocab_size=teacher.vocab_size,
            teacher_source=teacher.source,
            teacher_sha256=teacher.sha256,
            k=16,
        ),
        cache_dir,
    )

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(train_module, "load_teacher", no_teacher)
    recipe = _recipe(
        world,
        tmp_path / "cached",
        logit_cache=str(cache_dir),
        eval_with_teacher=False,
        student={"init": "random", "layers": 2, "hidden": 64, "intermediate": 128},
    )
    result = train_module.train(recipe)
    assert result.steps == 6 and "val_ce" in result.final and "val_kl" not in result.final
    prov = json.loads((result.student_dir / "provenance.json").read_text())
    assert prov["logit_cache"]["manifest_sha256"]
    # a cache made with another block size is refused before any training
    with pytest.raises(AssistantError):
        train_module.train(recipe.replace(block_size=16, out=str(tmp_path / "other")))


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_run_matches_one_process_with_the_same_global_batch(world, tmp_path, fsdp):
    from distill.train import train

    single = train(_recipe(world, tmp_path / "single", micro_batch=2, grad_accum=1, max_steps=4))
    ddp_recipe = _recipe(world, tmp_path / "ddp", micro_batch=1, grad_accum=1, max_steps=4, fsdp=fsdp)
    proc = torchrun(ddp_recipe, tmp_path / "ddp.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    prov = json.loads((tmp_path / "ddp" / "student" / "provenance.json").read_text())
    assert prov["world_size"] == 2
    # Adam divides by sqrt(v): float-summation noise on near-zero embedding gradients grows to ~1e-5
    _assert_same_weights(weights(single.student_dir), weights(tmp_path / "ddp" / "student"), atol=2e-5)
    other = train(_recipe(world, tmp_path / "other", micro_batch=2, grad_accum=1, max_steps=4, seed=1))
    a, b = weights(single.student_dir), weights(other.student_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-3  # other data: the tolerance is meaningful


def test_student_from_all_teacher_layers_is_the_teacher(world):
    teacher = load_teacher(world["teacher"])
    student = build_student(StudentSpec(), teacher.model).model.eval()
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher.model(ids).logits)


def test_narrowed_student_is_smaller_and_warns_about_k_quants(world):
    teacher = load_teacher(world["teacher"])
    s = build_student(StudentSpec(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64), teacher.model)
    assert count_parameters(s.model) < count_parameters(teacher.model) / 1.9
    assert s.kept_layers == [0, 2]
    assert any("hidden_size=32" in n for n in s.notes)
    with pytest.raises(UsageError, match="kv_heads"):
        build_student(StudentSpec(heads=4, kv_heads=4), teacher.model)


def test_recipe_toml_and_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('teacher = "x"\nalpha = 0.2\n[student]\nlayers = 4\nhidden = 256\n')
    recipe = apply_overrides(load_recipe(path), ["temperature=2", "student.layers=6", 'out="runs/x"'])
    assert (recipe.alpha, recipe.temperature, recipe.student.layers, recipe.student.hidden, recipe.out) == (
        0.2,
        2.0,
        6,
        256,
        "runs/x",
    )
    assert recipe.hash() == recipe.replace(out="elsewhere", log_interval=99).hash()
    assert recipe.hash() != recipe.replace(alpha=0.3).hash()
    path.write_text("alpah = 0.5\n")
    with pytest.raises(UsageError, match="alpah"):
        load_recipe(path)
    with pytest.raises(UsageError, match="alpha"):
        Recipe(alpha=2.0)


def test_lr_schedule_warms_up_then_decays_to_min():
    from distill.train import lr_at

    r = Recipe(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=20)
    lrs = [lr_at(s, r) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_data_order_depends_only_on_the_global_batch():
    from distill.train import Env, sample_indices

    one = Recipe(micro_batch=4, grad_accum=1)
    two = Recipe(micro_batch=1, grad_accum=2)
    for step in range(5):
        single = sorted(sum(sample_indices(step, one, Env(), 37), []))
        split = sorted(
            sum(sample_indices(step, two, Env(rank=0, world=2), 37), [])
            + sum(sample_indices(step, two, Env(rank=1, world=2), 37), [])
        )
        assert single == split
    epoch = sum((sum(sample_indices(s, one, Env(), 8), []) for s in range(2)), [])
    assert sorted(epoch) == list(range(8))  # one epoch visits every block once


def test_a_teacher_with_another_tokenizer_is_refused(world, tmp_path):
    from distill.train import train

    other = tmp_path / "teacher"
    shutil.copytree(world["teacher"], other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(AssistantError, match="different tokenizers"):
        train(_recipe(world, tmp_path / "run", teacher=str(other)))
    assert not (tmp_path / "run" / "student").exists()


def test_one_factor_sweep_tabulates_and_resumes(world, tmp_path):
    from distill.sweep import run_sweep
    from distill.train import train

    base = _recipe(world, tmp_path / "unused", max_steps=2, eval_interval=2, ckpt_interval=2)
    calls = []

    def counted(recipe):
        calls.append((recipe.alpha, recipe.temperature))
        return train(recipe)

    points = run_sweep(base, [0.0, 0.5], [2.0], tmp_path / "sweep", mode="one-factor", train_fn=counted)
    assert [(p.alpha, p.temperature) for p in points] == [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0)]
    assert calls == [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0)]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(rows) == 3 and all(r["val_ce"] > 0 and 0 <= r["val_top1"] <= 1 for r in rows)
    png = (tmp_path / "sweep" / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    calls.clear()
    again = run_sweep(base, [0.0, 0.5], [2.0], tmp_path / "sweep", mode="one-factor", train_fn=counted)
    assert calls == [] and [p.metrics for p in again] == [p.metrics for p in points]

    def stopped_after_one(recipe):
        if calls:
            raise KeyboardInterrupt
        return counted(recipe)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, [0.0, 0.5], [2.0], tmp_path / "stopped", mode="one-factor", train_fn=stopped_after_one)
    partial = json.loads((tmp_path / "stopped" / "sweep.json").read_text())
    assert [(r["alpha"], r["temperature"]) for r in partial] == [(0.0, 1.0)]


def test_cli_train_json_and_one_line_errors(world, tmp_path):
    from typer.testing import CliRunner

    from assistant.cli.app import app

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'teacher = "{world["teacher"]}"\ncorpus = "{world["corpus"]}"\nblock_size = 32\nmicro_batch = 2\nmax_steps = 2\n'
        "warmup_steps = 1\neval_blocks = 2\nchunk_size = 16\n[student]\nlayers = 1\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["distill", "train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["student"]).is_dir() and summary["val_ce"] > 0

    bad = runner.invoke(
        app, ["distill", "train", "--recipe", str(recipe), "--set", "alpha=3", "--out", str(tmp_path / "bad")]
    )
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "alpha" in bad.stderr
    missing = runner.invoke(
        app, ["distill", "train", "--corpus", str(tmp_path / "nothing"), "--out", str(tmp_path / "bad")]
    )
    assert missing.exit_code != 0 and "Traceback" not in missing.output and missing.stderr.startswith("error:")
    sweep = runner.invoke(app, ["distill", "sweep", "--alpha", "a,b"])
    assert sweep.exit_code == 2 and "--alpha" in sweep.stderr


@pytest.mark.slow
def test_pipeline_runs_the_whole_chain_into_a_lock_that_generate_uses(world, tmp_path):
    from assistant.codegen.generate import GenerateOptions, generate
    from assistant.runtime.engine import Sampling
    from assistant.runtime.prompts import Request
    from assistant.store.lockfile import load_lock
    from distill.pipeline import load_pipeline, run_pipeline

    lock = tmp_path / "lock" / "models.lock"
    lock.parent.mkdir()
    shutil.copyfile(REPO / "models.lock", lock)
    src = tmp_path / "src"
    src.mkdir()
    for name in CORPUS_FILES[:8]:
        shutil.copyfile(STDLIB / name, src / name)
    recipe = tmp_path / "pipeline.toml"
    recipe.write_text(
        f"""
[corpus]
out = "{tmp_path / "corpus"}"
tokenizer = "{world["teacher"]}"
roots = ["{src}"]
val_fraction = 0.3

[cache]
out = "{tmp_path / "cache"}"
top_k = 8

[distill]
teacher = "{world["teacher"]}"
out = "{tmp_path / "run"}"
train_blocks = 8
block_size = 32
micro_batch = 2
max_steps = 3
warmup_steps = 1
eval_blocks = 2
chunk_size = 16

[distill.student]
layers = 1

[export]
name = "tiny-student"
types = ["Q8_0"]
out_dir = "{lock.parent / "models"}"
lock = "{lock}"
"""
    )
    said = []
    result = run_pipeline(load_pipeline(recipe), say=said.append)
    assert result.cache["n_blocks"] == 8 and result.train["steps"] == 3
    assert result.export["lock_names"] == ["tiny-student"] and result.export["verify"]["passed"]
    entry = load_lock(lock).get("tiny-student")
    assert entry.provenance["tool"] == "assistant export quantize"
    trained = entry.provenance["distilled"]
    assert trained["steps"] == 3 and len(trained["recipe_hash"]) == 64 and trained["teacher"] == world["teacher"]
    out = generate(
        Request(prompt="def add(a, b):"),
        GenerateOptions(
            model="tiny-student", lock=lock, prompt_style="completion", sampling=Sampling(max_tokens=4, seed=0)
        ),
    )
    assert out.generation.timings.generated_tokens >= 1
    # a second run reuses every stage's output
    again = run_pipeline(load_pipeline(recipe), ("corpus", "cache", "train"), say=said.append)
    assert again.corpus["reused"] and again.train["steps"] == 3
