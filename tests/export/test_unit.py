"""Export stage, fast parts: the math, the tables, bad input, atomic files, lock entries.

No torch here: checkpoints are written with numpy + safetensors (tests/tiny_llama.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assistant.store.lockfile import FileSource, load_lock
from export import sentencepiece_model as spm
from export.checkpoint import read_checkpoint
from export.errors import ExportError
from export.files import atomic_path
from export.gguf_writer import rope_interleave
from export.lock_entry import check_name_free, default_name
from export.quantize import NEEDS_IMATRIX, output_path, parse_types
from export.tokenizer import detect_pre, tokenizer_for
from export.verify import kl_per_position, matched_prefix, top1_agreement
from tests.tiny_llama import TinyLlamaSpec, llama_config_dict, write_numpy_llama

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "gguf", "llama_cpp", "numpy", "safetensors", "tokenizers")


def test_importing_the_export_cli_loads_no_heavy_package():
    code = f"import sys, export.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- RoPE permutation --------------------------------------------------------------------------


def hf_rope(x, pos, theta=10000.0):
    """transformers' rotate-half RoPE on one head: dim i pairs with dim i + d/2."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.concatenate([pos * inv, pos * inv])
    rot = np.concatenate([-x[d // 2 :], x[: d // 2]])
    return x * np.cos(ang) + rot * np.sin(ang)


def ggml_rope(x, pos, theta=10000.0):
    """llama.cpp's normal-mode RoPE on one head: dims (2i, 2i+1) rotate together."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    out = x.copy()
    out[0::2] = x[0::2] * c - x[1::2] * s
    out[1::2] = x[0::2] * s + x[1::2] * c
    return out


@pytest.mark.parametrize("n_head,n_head_kv", [(4, 4), (4, 2), (6, 1)])
def test_rope_interleave_makes_ggml_attention_scores_equal_hf(n_head, n_head_kv):
    rng = np.random.default_rng(0)
    d, n_embd = 8, 16
    wq = rng.standard_normal((n_head * d, n_embd))
    wk = rng.standard_normal((n_head_kv * d, n_embd))
    x1, x2 = rng.standard_normal(n_embd), rng.standard_normal(n_embd)
    gq, gk = rope_interleave(wq, n_head), rope_interleave(wk, n_head_kv)
    for h in range(n_head):
        kv = h // (n_head // n_head_kv)
        q_hf = hf_rope((wq @ x1)[h * d : (h + 1) * d], pos=5)
        k_hf = hf_rope((wk @ x2)[kv * d : (kv + 1) * d], pos=2)
        q_gg = ggml_rope((gq @ x1)[h * d : (h + 1) * d], pos=5)
        k_gg = ggml_rope((gk @ x2)[kv * d : (kv + 1) * d], pos=2)
        assert np.isclose(q_hf @ k_hf, q_gg @ k_gg)
    assert not np.allclose(wq, gq)  # it did reorder something


# -- checkpoints -------------------------------------------------------------------------------


def write_config(d: Path, **fields) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(fields))
    return d


def test_a_non_llama_directory_names_the_architecture_it_found(tmp_path):
    d = write_config(tmp_path / "m", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ExportError, match="not a Llama or Qwen2 checkpoint: config.json names GPT2LMHeadModel"):
        read_checkpoint(d)
    d = write_config(tmp_path / "n", model_type="mistral")
    with pytest.raises(ExportError, match="model_type 'mistral'"):
        read_checkpoint(d)


def test_missing_config_weights_and_bin_only_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        read_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="has no config.json"):
        read_checkpoint(tmp_path / "empty")
    d = write_config(tmp_path / "bin", **llama_config_dict(TinyLlamaSpec(vocab=64, hidden=64, heads=2, kv_heads=1)))
    with pytest.raises(ExportError, match="no model.safetensors"):
        read_checkpoint(d)
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ExportError, match="PyTorch .bin weights"):
        read_checkpoint(d)


def test_truncated_safetensors_is_refused(tmp_path):
    d = write_numpy_llama(tmp_path / "m", TinyLlamaSpec(vocab=64, hidden=64, intermediate=128, heads=2, kv_heads=1))
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ExportError, match="truncated"):
        read_checkpoint(d)


def test_hparams_come_from_config_including_rope_scaling(tmp_path):
    spec = TinyLlamaSpec(
        vocab=64, hidden=64, intermediate=128, heads=4, kv_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}
    )
    ck = read_checkpoint(write_numpy_llama(tmp_path / "m", spec))
    hp = ck.hparams
    assert (hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_vocab) == (64, 128, 4, 2, 16, 64)
    assert hp.rope_scaling.kind == "linear" and hp.rope_scaling.factor == 2.0
    assert not hp.tied_embeddings and "lm_head.weight" in ck.tensors
    cfg = json.loads((ck.dir / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "factor": 2.0}
    (ck.dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="RoPE type 'longrope' is not supported"):
        read_checkpoint(ck.dir)


def test_missing_tokenizer_says_how_to_add_one(tmp_path):
    d = write_numpy_llama(tmp_path / "m", TinyLlamaSpec(vocab=64, hidden=64, intermediate=128, heads=2, kv_heads=1))
    with pytest.raises(ExportError, match=r"has no tokenizer .*--tokenizer-from"):
        tokenizer_for(d, 64)


# -- tokenizers --------------------------------------------------------------------------------


def test_pre_tokenizer_is_detected_from_structure_or_asked_for(tmp_path):
    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert detect_pre(gpt2, tmp_path) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, gpt2]}
    assert detect_pre(smollm, tmp_path) == "smollm"
    odd = {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False}
    with pytest.raises(ExportError, match="--pre NAME"):
        detect_pre(odd, tmp_path)


def test_sentencepiece_model_round_trips_through_our_protobuf_codec():
    model = spm.SentencePieceModel(
        pieces=(spm.Piece("<unk>", 0.0, spm.UNKNOWN), spm.Piece("<s>", 0.0, spm.CONTROL), spm.Piece("▁a", -1.5)),
        unk_id=0,
        bos_id=1,
        eos_id=-1,
        pad_id=-1,
        add_dummy_prefix=False,
        byte_fallback=True,
    )
    assert spm.parse(spm.serialize(model)) == model
    with pytest.raises(ExportError, match="not a SentencePiece model"):
        spm.parse(b"\x0a\xff\xff")


# -- quantization tables -----------------------------------------------------------------------


def test_quant_types_are_parsed_and_bad_ones_explained():
    assert parse_types("q8_0, Q4_K_M,Q4_K_M") == ["Q8_0", "Q4_K_M"]
    with pytest.raises(ExportError, match="unsupported quantization type 'Q9_Z'.*supported: F32, F16"):
        parse_types("Q9_Z")
    for t in NEEDS_IMATRIX:
        with pytest.raises(ExportError, match="importance matrix"):
            parse_types(t)
    with pytest.raises(ExportError, match="empty"):
        parse_types(" , ")


def test_quantized_file_names_replace_a_trailing_type():
    assert output_path(Path("/m/student.F16.gguf"), "Q4_K_M") == Path("/m/student.Q4_K_M.gguf")
    assert output_path(Path("/m/student.gguf"), "Q8_0", Path("/o")) == Path("/o/student.Q8_0.gguf")
    assert output_path(Path("/m/v1.2.gguf"), "Q4_0") == Path("/m/v1.2.Q4_0.gguf")
    assert default_name(Path("student.Q4_K_M.gguf")) == "student-q4_k_m"


# -- files and lock ----------------------------------------------------------------------------


def test_atomic_path_leaves_nothing_on_failure_and_never_overwrites_without_force(tmp_path):
    out = tmp_path / "m.gguf"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"one")
    with pytest.raises(ExportError, match="already exists.*--force"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"two")
    with atomic_path(out, force=True) as tmp:
        tmp.write_bytes(b"two")
    assert out.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_atomic_path_turns_a_write_error_into_one_clear_line(tmp_path):
    out = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match=r"writing .*m.gguf failed: No space left.*nothing was written"):
        with atomic_path(out):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_taken_lock_name_needs_force(tmp_path):
    lock = load_lock(REPO / "models.lock")
    with pytest.raises(ExportError, match="already has a model named 'smollm2-135m-instruct'"):
        check_name_free(lock, "smollm2-135m-instruct", FileSource("x.gguf"), force=False)
    check_name_free(lock, "smollm2-135m-instruct", FileSource("x.gguf"), force=True)
    check_name_free(lock, "new-name", FileSource("x.gguf"), force=False)


# -- verification math -------------------------------------------------------------------------


def test_kl_and_top1_agreement():
    a = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert np.allclose(kl_per_position(a, a), 0.0)
    assert np.allclose(kl_per_position(a, a + 3.0), 0.0)  # softmax ignores a shift
    p = np.exp(a[0]) / np.exp(a[0]).sum()
    q = np.full(3, 1 / 3)
    assert np.isclose(kl_per_position(a[:1], np.zeros((1, 3)))[0], (p * np.log(p / q)).sum())
    assert top1_agreement(a, np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])) == 0.5
    assert matched_prefix([1, 2, 3], [1, 2, 4]) == 2 and matched_prefix([1], [1]) == 1


# -- SentencePiece end to end (a synthetic tokenizer.model; sentencepiece is not installed) ----


def sentencepiece_pieces(score=None) -> list:
    pieces = [
        spm.Piece("<unk>", 0.0, spm.UNKNOWN),
        spm.Piece("<s>", 0.0, spm.CONTROL),
        spm.Piece("</s>", 0.0, spm.CONTROL),
    ]
    pieces += [spm.Piece(f"<0x{b:02X}>", 0.0, spm.BYTE) for b in range(256)]  # byte fallback, incl. newline
    singles = "▁abcdefghijklmnopqrstuvwxyz():=+-"
    pieces += [spm.Piece(c, -10.0 - 0.01 * i if score is None else score) for i, c in enumerate(singles)]
    words = ["▁▁", "▁▁▁▁", "▁d", "▁de", "▁def", "▁r", "▁re", "▁ret", "▁retu", "▁retur", "▁return"]
    pieces += [spm.Piece(w, -1.0 - 0.01 * i if score is None else score) for i, w in enumerate(words)]
    return pieces


def spm_checkpoint(d: Path, pieces) -> Path:
    spec = TinyLlamaSpec(vocab=len(pieces) + 5, hidden=64, intermediate=128, heads=2, kv_heads=1, layers=1)
    write_numpy_llama(d, spec)
    (d / "tokenizer.model").write_bytes(spm.serialize(spm.SentencePieceModel(tuple(pieces))))
    return d


def test_sentencepiece_tokenizer_keeps_real_scores_and_llama_cpp_uses_them(tmp_path):
    import llama_cpp

    from assistant.store.gguf_file import read_gguf
    from export.pipeline import GgufRequest, LockTarget, export_gguf

    pieces = sentencepiece_pieces()
    d = spm_checkpoint(tmp_path / "m", pieces)
    res = export_gguf(GgufRequest(d, tmp_path / "m.gguf", "f32", lock=LockTarget(enabled=False))).result
    assert res.tokenizer == "sentencepiece:tokenizer.model (unigram)"
    md = read_gguf(res.path, load_arrays=True).metadata
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_space_prefix"] is True
    n = len(pieces)
    assert np.allclose(md["tokenizer.ggml.scores"][:n], [p.score for p in pieces])
    assert md["tokenizer.ggml.tokens"][n:] == [f"[PAD{i}]" for i in range(n, n + 5)]  # padded to vocab_size
    assert md["tokenizer.ggml.token_type"][n:] == [5] * 5
    llm = llama_cpp.Llama(str(res.path), vocab_only=True, verbose=False)
    text = [p.text for p in pieces]
    for src, want in (("def", ["<s>", "▁def"]), ("    return", ["<s>", "▁▁▁▁", "▁return"])):
        ids = llm.tokenize(src.encode(), add_bos=True, special=False)
        assert [text[i] for i in ids] == want
        assert llm.detokenize(ids) == src.encode()
    ids = llm.tokenize(b"def f(x):\n    return x", add_bos=True, special=False)
    assert "<0x0A>" in [text[i] for i in ids] and llm.detokenize(ids) == b"def f(x):\n    return x"


def test_sentencepiece_with_constant_scores_is_refused(tmp_path):
    d = spm_checkpoint(tmp_path / "m", sentencepiece_pieces(score=-1000.0))
    with pytest.raises(ExportError, match="every piece has the score -1000.0; llama.cpp would mis-tokenize"):
        tokenizer_for(d, len(sentencepiece_pieces()) + 5)
