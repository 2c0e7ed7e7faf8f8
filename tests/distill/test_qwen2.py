"""The Qwen2 family through the distill stage: teacher loading, students from config, from a pretrained
model and from the teacher (layer subset and narrowing, biases kept), a short run, and its export."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from assistant.errors import UsageError  # noqa: E402
from distill.models import StudentSpec, build_student, check_pair, count_parameters, load_teacher  # noqa: E402
from tests.distill.helpers import stdlib_corpus_world, tiny_recipe  # noqa: E402
from tests.tiny_llama import TinyLlamaSpec, build_tiny_llama  # noqa: E402
from tests.tiny_qwen2 import TinyQwen2Spec, build_tiny_qwen2, cached_tiny_qwen2_tokenizer  # noqa: E402

CORPUS_FILES = ("textwrap.py", "colorsys.py", "bisect.py", "heapq.py", "shlex.py", "fnmatch.py")
TEACHER = TinyQwen2Spec(hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2, vocab=1024, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("qwen2-distill")
    tok_dir = cached_tiny_qwen2_tokenizer(base)
    build_tiny_qwen2(base / "teacher", TEACHER, tokenizer_dir=tok_dir)
    return {**stdlib_corpus_world(base, base / "teacher", CORPUS_FILES), "tok_dir": tok_dir}


def test_qwen2_teacher_loads_as_qwen2_and_a_full_copy_is_the_teacher(world):
    teacher = load_teacher(world["teacher"])
    assert type(teacher.model).__name__ == "Qwen2ForCausalLM"
    student = build_student(StudentSpec(), teacher.model).model.eval()
    assert type(student).__name__ == "Qwen2ForCausalLM"
    ids = torch.randint(0, 900, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher.model(ids).logits)


def test_narrowed_qwen2_student_keeps_the_biases_of_the_heads_it_keeps(world):
    teacher = load_teacher(world["teacher"])
    s = build_student(StudentSpec(layers=2, heads=2, kv_heads=1, intermediate=128), teacher.model)
    assert s.kept_layers == [0, 3]
    assert count_parameters(s.model) < count_parameters(teacher.model) / 1.5
    hd = teacher.model.config.hidden_size // teacher.model.config.num_attention_heads
    for s_layer, t_index in zip(s.model.model.layers, s.kept_layers, strict=True):
        ta, sa = teacher.model.model.layers[t_index].self_attn, s_layer.self_attn
        assert sa.q_proj.bias.shape == (2 * hd,) and sa.k_proj.bias.shape == (hd,)
        # every kept query head's bias is one of the teacher's heads', whole and in place
        t_heads = ta.q_proj.bias.view(-1, hd)
        for head in sa.q_proj.bias.view(-1, hd):
            assert any(torch.equal(head, t) for t in t_heads)
        t_kv = [(k, v) for k, v in zip(ta.k_proj.bias.view(-1, hd), ta.v_proj.bias.view(-1, hd), strict=True)]
        assert any(torch.equal(sa.k_proj.bias, k) and torch.equal(sa.v_proj.bias, v) for k, v in t_kv)


def test_random_and_pretrained_qwen2_students(world, tmp_path):
    teacher = load_teacher(world["teacher"])
    random_student = build_student(StudentSpec(init="random", layers=1, hidden=64, heads=2, kv_heads=1), teacher.model)
    assert type(random_student.model).__name__ == "Qwen2ForCausalLM"
    assert random_student.model.config.num_hidden_layers == 1
    assert len(random_student.model.config.layer_types) == 1
    pre = tmp_path / "pre"
    build_tiny_qwen2(
        pre, TinyQwen2Spec(hidden=64, intermediate=128, layers=1, vocab=1024, seed=5), tokenizer_dir=world["tok_dir"]
    )
    student = build_student(StudentSpec(init=str(pre)), teacher.model)
    assert type(student.model).__name__ == "Qwen2ForCausalLM" and not [n for n in student.notes if "family" in n]


def test_a_student_cut_from_a_pretrained_model_keeps_its_layers(world, tmp_path):
    teacher = load_teacher(world["teacher"])
    pre = tmp_path / "pre"
    source = build_tiny_qwen2(
        pre, TinyQwen2Spec(hidden=64, intermediate=128, layers=4, vocab=1024, seed=6), tokenizer_dir=world["tok_dir"]
    )
    s = build_student(StudentSpec(init=str(pre), layers=2), teacher.model)
    assert s.kept_layers == [0, 3] and s.model.config.num_hidden_layers == 2
    assert any("cut from pretrained" in n for n in s.notes)
    for mine, theirs in zip(s.model.model.layers, (source.model.layers[0], source.model.layers[3]), strict=True):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(UsageError, match=r"neither 'teacher', 'random', an HF model directory nor a GGUF"):
        build_student(StudentSpec(init="no-such-model"), teacher.model)


def test_pairs_of_other_families_and_vocabularies(world, tmp_path):
    teacher = load_teacher(world["teacher"])
    llama = tmp_path / "llama"
    build_tiny_llama(llama, TinyLlamaSpec(hidden=64, intermediate=128, layers=1, heads=2, kv_heads=1, vocab=1024))
    s = build_student(StudentSpec(init=str(llama)), teacher.model)
    assert any("student family llama, teacher qwen2" in n for n in s.notes)
    big = tmp_path / "big"
    build_tiny_llama(big, TinyLlamaSpec(hidden=64, intermediate=128, layers=1, heads=2, kv_heads=1, vocab=2048))
    with pytest.raises(UsageError, match=r"larger than the teacher's \(1024\)"):
        build_student(StudentSpec(init=str(big)), teacher.model)
    small = build_student(StudentSpec(init=str(llama)), teacher.model).model.config
    small.vocab_size = 1000
    assert any("shared 1000 tokens" in n for n in check_pair(teacher.model.config, small))
    gemma_like = type("C", (), {"model_type": "gemma3", "vocab_size": 1024})()
    with pytest.raises(UsageError, match=r"'gemma3' model; the distill stage handles llama, qwen2"):
        check_pair(teacher.model.config, gemma_like)
    with pytest.raises(UsageError, match=r"cut the student from a teacher of its family|cannot be cut"):
        build_student(StudentSpec(heads=4, kv_heads=4), teacher.model)


def test_a_short_qwen2_run_exports_and_llama_cpp_reproduces_the_student(world, tmp_path):
    """teacher → student (half the layers) → a few KD steps → save → F16 GGUF → same greedy tokens."""
    import llama_cpp

    from distill.train import train
    from export.pipeline import GgufRequest, LockTarget, export_gguf
    from export.verify import llama_greedy, torch_greedy

    recipe = tiny_recipe(
        world,
        tmp_path / "run",
        grad_accum=1,
        max_steps=3,
        lr=1e-3,
        min_lr=1e-4,
        eval_interval=3,
        eval_blocks=2,
        ckpt_interval=3,
    )
    result = train(recipe)
    assert result.steps == 3 and result.final["val_ce"] > 0
    out = export_gguf(
        GgufRequest(result.student_dir, tmp_path / "s.F16.gguf", "f16", lock=LockTarget(enabled=False))
    ).result
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(result.student_dir, dtype=torch.float32).eval()
    assert type(student).__name__ == "Qwen2ForCausalLM"
    ids = list(range(100, 120))
    llm = llama_cpp.Llama(str(out.path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    try:
        assert llama_greedy(llm, ids, 24) == torch_greedy(student, ids, 24)
    finally:
        llm.close()
