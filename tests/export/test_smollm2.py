"""The real round trip: embedded SmolLM2 GGUF -> PyTorch -> save -> our export -> GGUF.

transformers dequantizes the Q4_1 teacher into a float32 LlamaForCausalLM (~16 s, once per
module); we save it as a normal checkpoint that records the teacher as its tokenizer source,
export it, quantize it, and check that llama.cpp reproduces PyTorch's greedy output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import load_lock
from export.pipeline import GgufRequest, LockTarget, QuantizeRequest, export_gguf, quantize_file, verify_files
from export.verify import VerifyConfig
from tests.tiny_llama import (
    SMOLLM2_LOCK_NAME,
    cached_smollm2_tokenizer,
    load_smollm2_torch,
    save_smollm2_checkpoint,
    smollm2_gguf,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smollm2")


@pytest.fixture(scope="module")
def checkpoint(workdir, tmp_path_factory) -> Path:
    tok = cached_smollm2_tokenizer(tmp_path_factory.getbasetemp())
    model = load_smollm2_torch()
    return save_smollm2_checkpoint(model, workdir / "smollm2-135m", tokenizer_dir=tok)


@pytest.fixture(scope="module")
def lock_path(workdir) -> Path:
    path = workdir / "lock" / "models.lock"
    path.parent.mkdir()
    shutil.copyfile(REPO / "models.lock", path)
    return path


@pytest.fixture(scope="module")
def files(checkpoint, lock_path) -> dict[str, Path]:
    """F32 and F16 exports (tokenizer auto-detected from the record) and two quantizations."""
    models = lock_path.parent / "models"
    out = {}
    for outtype in ("f32", "f16"):
        o = export_gguf(
            GgufRequest(checkpoint, models / f"smollm2.{outtype.upper()}.gguf", outtype, lock=LockTarget(lock_path))
        )
        out[o.result.outtype] = o.result.path
    for o in quantize_file(QuantizeRequest(out["F16"], "Q8_0,Q4_K_M", threads=2, lock=LockTarget(lock_path))):
        out[o.result.qtype] = o.result.path
    return out


def test_export_copies_the_teacher_tokenizer_and_keeps_every_parameter(files, lock_path):
    teacher_md = read_gguf(smollm2_gguf(), load_arrays=True).metadata
    lock = load_lock(lock_path)
    teacher = lock.get(SMOLLM2_LOCK_NAME)
    for quant, path in files.items():
        md = read_gguf(path, load_arrays=True).metadata
        assert {k: v for k, v in md.items() if k.startswith("tokenizer.")} == {
            k: v for k, v in teacher_md.items() if k.startswith("tokenizer.")
        }
        for key in (
            "llama.block_count",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.context_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
        ):
            assert md[key] == teacher_md[key], key
        entry = lock.get(f"smollm2-{quant.lower()}")
        assert entry.quantization == quant and entry.parameters == teacher.parameters == 134515008
        assert (entry.prompt_style, entry.stop, entry.context_length) == ("chat", ("<|im_end|>",), 8192)
    assert "output.weight" not in {t.name for t in read_gguf(files["F16"]).tensors}  # tied embeddings


def test_q4_k_m_reports_the_tensors_that_fall_back_because_576_is_not_a_multiple_of_256(files, lock_path):
    entry = load_lock(lock_path).get("smollm2-q4_k_m")
    assert entry.provenance["fallback_tensors"] > 100
    types = {t.name: t.type_name for t in read_gguf(files["Q4_K_M"]).tensors}
    assert types["blk.0.attn_q.weight"] != "Q4_K"  # rows of 576
    assert types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")  # rows of 1536 = 6 x 256


def test_llama_cpp_reproduces_pytorch_greedy_output_over_64_tokens(checkpoint, files, lock_path):
    report = verify_files(
        checkpoint,
        [str(files[q]) for q in ("F32", "F16", "Q8_0", "Q4_K_M")],
        VerifyConfig(n_new=64, speed_tokens=0),
        lock_path=lock_path,
    )
    f32, f16, q8, q4 = report.files
    assert all(f.tokenization_identical for f in report.files)
    assert f32.greedy_matched == f16.greedy_matched == [64] * 4, (f32.greedy_matched, f16.greedy_matched)
    assert report.passed, [f.problems for f in report.files]
    assert f32.kl_mean < 1e-5 and f16.kl_mean < 1e-4 and f16.top1 > 0.99
    assert f16.kl_mean < q8.kl_mean < 1e-2 < q4.kl_mean
    assert q8.top1 > 0.9 and q4.top1 > 0.7
    assert f16.kl_f16 == 0.0 and q8.kl_f16 > 0
