"""Export stage on tiny random Llamas with SmolLM2's real tokenizer: PyTorch vs llama.cpp.

Models are 2-layer, hidden 256, GQA (4 query / 2 KV heads), vocab 49152, built once per
module; the tokenizer is converted from the embedded GGUF once per session (~10 s).
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import load_lock
from export.errors import ExportError
from export.lock_entry import EntrySpec
from export.pipeline import GgufRequest, LockTarget, QuantizeRequest, export_gguf, quantize_file
from export.quantize import quantize, run_llama_quantize
from export.verify import TOKENIZATION_TEXTS, VerifyConfig
from tests.tiny_llama import (
    SMOLLM2_LOCK_NAME,
    TinyLlamaSpec,
    build_tiny_llama,
    cached_smollm2_tokenizer,
    smollm2_gguf,
    write_numpy_llama,
)

REPO = Path(__file__).resolve().parents[2]
CODE = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\n"
    "class Stack:\n\tdef push(self, item):\n\t\tself.items.append(item)  # 12345\n"
)
NO_LOCK = LockTarget(enabled=False)
runner = CliRunner()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return cached_smollm2_tokenizer(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def models(tok_dir, tmp_path_factory):
    """name -> (checkpoint dir, PyTorch model): untied and tied embeddings."""
    base = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, spec in {"untied": TinyLlamaSpec(), "tied": TinyLlamaSpec(tied=True, seed=1)}.items():
        out[name] = (base / name, build_tiny_llama(base / name, spec, tokenizer_dir=tok_dir))
    return out


@pytest.fixture(scope="module")
def hf_ids(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)(CODE)["input_ids"]


@pytest.fixture
def tmp_lock(tmp_path) -> Path:
    """A private copy of models.lock: exported entries land here, never in the repo's lock."""
    lock = tmp_path / "lock" / "models.lock"
    lock.parent.mkdir()
    shutil.copyfile(REPO / "models.lock", lock)
    return lock


def torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_logits(path: Path, ids, *, f32_kv_cache: bool = False):
    import llama_cpp

    kv = {"type_k": 0, "type_v": 0} if f32_kv_cache else {}  # GGML_TYPE_F32; llama.cpp's default is F16
    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False, **kv)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def rel_err(a, ref) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def export(model_dir: Path, out: Path, outtype: str = "f32", **kw):
    kw.setdefault("lock", NO_LOCK)
    return export_gguf(GgufRequest(model_dir, out, outtype, **kw)).result


# -- conversion --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["untied", "tied"])
def test_f32_export_reproduces_pytorch_logits_and_hparams(variant, models, hf_ids, tmp_path):
    model_dir, model = models[variant]
    res = export(model_dir, tmp_path / "m.F32.gguf")
    ref = torch_logits(model, hf_ids)
    got = llama_logits(res.path, hf_ids)
    assert rel_err(got, ref) < 1e-3  # measured ~5e-4, all of it from llama.cpp's F16 KV cache:
    assert rel_err(llama_logits(res.path, hf_ids, f32_kv_cache=True), ref) < 1e-5  # measured ~1e-6
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    info = read_gguf(res.path)
    md = info.metadata
    expected = {
        "llama.context_length": 2048,
        "llama.embedding_length": 256,
        "llama.feed_forward_length": 512,
        "llama.block_count": 2,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 64,
        "llama.vocab_size": 49152,
        "general.file_type": 0,
    }
    assert {k: md[k] for k in expected} == expected
    assert md["llama.rope.freq_base"] == 10000.0 and np.isclose(md["llama.attention.layer_norm_rms_epsilon"], 1e-5)
    names = {t.name for t in info.tensors}
    assert ("output.weight" in names) == (variant == "untied")
    assert res.tied_embeddings == (variant == "tied")
    assert info.n_params == sum(p.numel() for p in model.parameters())  # tied weights counted once


@pytest.mark.parametrize("outtype,tol", [("f16", 5e-3), ("bf16", 3e-2)])
def test_f16_and_bf16_exports_stay_close(outtype, tol, models, hf_ids, tmp_path):
    model_dir, model = models["untied"]
    res = export(model_dir, tmp_path / f"m.{outtype}.gguf", outtype)
    info = read_gguf(res.path)
    assert info.quantization == outtype.upper()
    assert {t.type_name for t in info.tensors if len(t.shape) == 2} == {outtype.upper()}
    assert {t.type_name for t in info.tensors if len(t.shape) == 1} == {"F32"}
    assert rel_err(llama_logits(res.path, hf_ids), torch_logits(model, hf_ids)) < tol


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
    ],
    ids=lambda s: s["rope_type"],
)
def test_rope_scaling_is_carried_over(scaling, tok_dir, hf_ids, tmp_path):
    from transformers import LlamaForCausalLM

    from tests.tiny_llama import tiny_llama_config

    spec = TinyLlamaSpec(layers=1, rope_scaling=scaling)
    model = build_tiny_llama(tmp_path / "m", spec, tokenizer_dir=tok_dir)
    plain = LlamaForCausalLM(tiny_llama_config(TinyLlamaSpec(layers=1))).eval()
    plain.load_state_dict(model.state_dict())
    ref = torch_logits(model, hf_ids)
    assert rel_err(torch_logits(plain, hf_ids), ref) > 1e-2  # the scaling matters on this prompt
    res = export(tmp_path / "m", tmp_path / "m.gguf")
    assert rel_err(llama_logits(res.path, hf_ids), ref) < 1e-3


# -- tokenizers --------------------------------------------------------------------------------


def tokenizer_metadata(path: Path) -> dict:
    md = read_gguf(path, load_arrays=True).metadata
    return {k: v for k, v in md.items() if k.startswith("tokenizer.")}


def test_hf_bpe_tokenizer_rebuilds_the_teachers_vocab_and_tokenizes_code_identically(models, tok_dir, tmp_path):
    import llama_cpp
    from transformers import AutoTokenizer

    res = export(models["tied"][0], tmp_path / "m.gguf")
    assert res.tokenizer.startswith("hf-bpe")
    mine, teacher = tokenizer_metadata(res.path), tokenizer_metadata(smollm2_gguf())
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ):
        assert mine[key] == teacher[key], key
    hf = AutoTokenizer.from_pretrained(tok_dir)
    llm = llama_cpp.Llama(str(res.path), vocab_only=True, verbose=False)
    for text in TOKENIZATION_TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == hf(text)["input_ids"], text


def test_digit_splitting_pre_tokenizer_is_detected_as_smollm(tok_dir, tmp_path):
    import llama_cpp
    from tokenizers import Tokenizer

    d = write_numpy_llama(
        tmp_path / "m", TinyLlamaSpec(hidden=64, intermediate=128, heads=2, kv_heads=1, layers=1), tokenizer_dir=tok_dir
    )
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, tj["pre_tokenizer"]],
    }
    (d / "tokenizer.json").write_text(json.dumps(tj))
    res = export(d, tmp_path / "m.gguf")
    assert tokenizer_metadata(res.path)["tokenizer.ggml.pre"] == "smollm"
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    llm = llama_cpp.Llama(str(res.path), vocab_only=True, verbose=False)
    for text in TOKENIZATION_TEXTS + ("x = 12345 + 3.14159\n",):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == hf.encode(text).ids, text


def test_teacher_tokenizer_is_copied_verbatim_when_the_directory_records_it(tok_dir, tmp_path):
    d = write_numpy_llama(tmp_path / "m", TinyLlamaSpec(hidden=64, intermediate=128, heads=2, kv_heads=1, layers=1))
    from export.tokenizer import write_record

    write_record(d, SMOLLM2_LOCK_NAME)  # no tokenizer files at all: the record is enough
    res = export(d, tmp_path / "m.gguf", lock=LockTarget(REPO / "models.lock", enabled=False))
    assert res.tokenizer == f"gguf:{SMOLLM2_LOCK_NAME}"
    assert tokenizer_metadata(res.path) == tokenizer_metadata(smollm2_gguf())
    # the same through --tokenizer-from with a path, and a vocab mismatch is refused
    res2 = export(d, tmp_path / "m2.gguf", tokenizer_from=str(smollm2_gguf()))
    assert tokenizer_metadata(res2.path) == tokenizer_metadata(smollm2_gguf())
    small = write_numpy_llama(
        tmp_path / "s", TinyLlamaSpec(vocab=1000, hidden=64, intermediate=128, heads=2, kv_heads=1)
    )
    with pytest.raises(ExportError, match="has 49152 tokens but .* has vocab_size 1000"):
        export(small, tmp_path / "s.gguf", tokenizer_from=str(smollm2_gguf()))


# -- quantization ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def f32_file(models, tmp_path_factory) -> Path:
    return export(models["untied"][0], tmp_path_factory.mktemp("f32") / "tiny.F32.gguf").path


def test_every_supported_quant_type_loads_and_generates(f32_file, tmp_path):
    import llama_cpp

    outcomes = quantize_file(QuantizeRequest(f32_file, "F16,Q8_0,Q5_K_M,Q4_K_M,Q4_0", out_dir=tmp_path, lock=NO_LOCK))
    assert [o.result.path.name for o in outcomes] == [
        f"tiny.{t}.gguf" for t in ("F16", "Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0")
    ]
    sizes = [o.result.size for o in outcomes]
    assert sizes == sorted(sizes, reverse=True)
    for o in outcomes:
        info = read_gguf(o.result.path)
        assert info.quantization == o.result.qtype
        assert o.result.fallbacks == ()  # every row size is a multiple of 256
        llm = llama_cpp.Llama(str(o.result.path), n_ctx=128, n_threads=1, verbose=False)
        out = llm.create_completion("def add(a, b):", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] == 8
        llm.close()


def test_k_quant_fallbacks_are_reported_for_rows_not_divisible_by_256(tok_dir, tmp_path):
    d = write_numpy_llama(
        tmp_path / "m", TinyLlamaSpec(hidden=320, heads=5, kv_heads=1, layers=1), tokenizer_dir=tok_dir
    )
    src = export(d, tmp_path / "m.F16.gguf", "f16").path
    res = quantize(src, "Q4_K_M", tmp_path / "m.Q4_K_M.gguf")
    names = {n.name for n in res.fallbacks}
    assert {"blk.0.attn_q.weight", "blk.0.ffn_up.weight", "token_embd.weight"} <= names
    assert "blk.0.ffn_down.weight" not in names  # its rows are 512 wide
    assert all(n.reason == "row size 320 is not a multiple of 256" and n.got != "Q4_K" for n in res.fallbacks)


def test_imatrix_types_fail_with_llama_cpps_reason_and_leave_no_file(f32_file, tmp_path):
    with pytest.raises(ExportError, match=r"return code 1\).*imatrix"):
        run_llama_quantize(f32_file, tmp_path / "x.gguf", "IQ2_XS")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ExportError, match="importance matrix"):
        quantize(f32_file, "IQ1_S", tmp_path / "y.gguf")
    assert list(tmp_path.iterdir()) == []


def test_quantizing_a_quantized_file_is_refused(f32_file, tmp_path):
    q8 = quantize(f32_file, "Q8_0", tmp_path / "t.Q8_0.gguf").path
    with pytest.raises(ExportError, match=r"already quantized \(Q8_0\)"):
        quantize(q8, "Q4_0", tmp_path / "t.Q4_0.gguf")


# -- files -------------------------------------------------------------------------------------


def test_a_write_failure_leaves_nothing_under_the_final_name(models, tmp_path):
    """A real failed write (file-size limit, like a full disk) part way through the tensors."""
    out = tmp_path / "m.gguf"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, hard))
        with pytest.raises(ExportError, match=r"writing .*m.gguf failed: .*; nothing was written under that name"):
            export(models["untied"][0], out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_only_replaced_with_force(models, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError, match="already exists.*--force"):
        export(models["tied"][0], out)
    assert out.read_bytes() == b"precious"
    export(models["tied"][0], out, force=True)
    assert read_gguf(out).quantization == "F32"


# -- the CLI and models.lock -------------------------------------------------------------------


def test_cli_exports_quantizes_and_verifies_into_a_lock_that_generate_uses(tok_dir, tmp_lock, tmp_path):
    from assistant.cli.app import app
    from export.cli import export_app

    d = tmp_path / "student"
    build_tiny_llama(d, TinyLlamaSpec(seed=3), tokenizer_dir=tok_dir, tokenizer_from=SMOLLM2_LOCK_NAME)
    out = tmp_lock.parent / "models" / "student.F16.gguf"
    r = runner.invoke(export_app, ["gguf", str(d), "--out", str(out), "--lock", str(tmp_lock), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lock"]["name"] == "student-f16"
    r = runner.invoke(export_app, ["quantize", str(out), "--type", "Q8_0,Q4_K_M", "--lock", str(tmp_lock), "--json"])
    assert r.exit_code == 0, r.output
    assert [row["lock_name"] for row in json.loads(r.stdout)] == ["student-q8_0", "student-q4_k_m"]

    lock = load_lock(tmp_lock)
    original = load_lock(REPO / "models.lock")
    assert lock.default == original.default and lock.names() == original.names() + [
        "student-f16",
        "student-q8_0",
        "student-q4_k_m",
    ]
    teacher = lock.get(SMOLLM2_LOCK_NAME)
    for name, quant in (("student-f16", "F16"), ("student-q8_0", "Q8_0"), ("student-q4_k_m", "Q4_K_M")):
        e = lock.get(name)
        path = tmp_lock.parent / e.source.path
        assert e.source.path.startswith("models/student.") and e.quantization == quant
        assert e.size == path.stat().st_size and e.context_length == 2048 and e.parameters == read_gguf(path).n_params
        assert (e.prompt_style, e.stop, e.license) == (teacher.prompt_style, teacher.stop, teacher.license)
        assert e.provenance["tokenizer"] == f"gguf:{SMOLLM2_LOCK_NAME}"
        assert e.provenance["source_sha256"] == lock.get("student-f16").provenance["source_sha256"]
        assert set(e.provenance["versions"]) == {"gguf", "llama-cpp-python", "torch", "transformers"}
    assert lock.get("student-q8_0").provenance["quantized_from"]["name"] == "student-f16"

    r = runner.invoke(
        app,
        [
            "generate",
            "--model",
            "student-q4_k_m",
            "--lock",
            str(tmp_lock),
            "-n",
            "8",
            "--seed",
            "1",
            "--threads",
            "1",
            "--json",
            "def add(a, b):",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["name"] == "student-q4_k_m"

    r = runner.invoke(
        export_app,
        [
            "verify",
            str(d),
            "student-f16",
            str(out.with_name("student.Q8_0.gguf")),
            "--lock",
            str(tmp_lock),
            "--tokens",
            "16",
            "--no-speed",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["passed"] and [f["quantization"] for f in report["files"]] == ["F16", "Q8_0"]
    f16, q8 = report["files"]
    assert f16["tokenization_identical"] and f16["greedy_matched"] == [16] * 4
    assert f16["kl_mean"] < 1e-4 and f16["kl_f16"] == 0.0 and q8["kl_f16"] > 0 and q8["top1"] > 0.5


def test_cli_bad_input_is_one_line_with_a_fix(models, f32_file, tmp_lock, tmp_path):
    from export.cli import export_app

    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    cases = [
        (["gguf", str(bad), "--no-lock"], "config.json names GPT2LMHeadModel"),
        (["gguf", str(models["tied"][0]), "--out", str(f32_file), "--no-lock"], "already exists"),
        (
            ["gguf", str(models["tied"][0]), "--outtype", "q4", "--no-lock"],
            "--outtype 'q4' is not one of f32, f16, bf16",
        ),
        (["quantize", str(f32_file), "--type", "IQ2_XXS", "--no-lock"], "needs an importance matrix"),
        (["quantize", str(f32_file), "--type", "Q7_K", "--no-lock"], "unsupported quantization type 'Q7_K'"),
        (
            [
                "gguf",
                str(models["tied"][0]),
                "--out",
                str(tmp_path / "x.gguf"),
                "--name",
                "smollm2-135m-instruct",
                "--lock",
                str(tmp_lock),
            ],
            "already has a model named 'smollm2-135m-instruct'",
        ),
    ]
    for args, needle in cases:
        r = runner.invoke(export_app, args)
        err = r.stderr.strip()
        assert r.exit_code == 1 and err.startswith("error: ") and "\n" not in err and needle in err, (args, err)
    assert not (tmp_path / "x.gguf").exists()
    assert load_lock(tmp_lock).names() == load_lock(REPO / "models.lock").names()


def test_export_entry_defaults_without_a_teacher(models, tmp_lock, tmp_path):
    outcome = export_gguf(
        GgufRequest(
            models["tied"][0],
            tmp_path / "t.F16.gguf",
            "f16",
            entry=EntrySpec(roles=("generate", "student")),
            lock=LockTarget(tmp_lock),
        )
    )
    e = load_lock(tmp_lock).get("t-f16")
    assert e == outcome.entry
    assert e.roles == ("generate", "student") and e.license == "unknown" and e.prompt_style == "chat" and e.stop == ()
    assert e.source.path == "../t.F16.gguf" and e.provenance["tokenizer"].startswith("hf-bpe")


def test_verify_flags_a_model_that_is_not_the_checkpoint(models, f32_file):
    from export.pipeline import verify_files

    report = verify_files(models["tied"][0], [str(f32_file)], VerifyConfig(n_new=8, speed_tokens=0))
    (f,) = report.files
    assert f.tokenization_identical and not f.greedy_identical and f.kl_mean > 0.1
    assert not report.passed and "diverges from PyTorch" in f.problems[0]


def test_an_export_keeps_its_teachers_prompt_recipe(tmp_path):
    """System message and capabilities travel with prompt style and stop (a student lost `fim` before)."""
    from dataclasses import replace

    from assistant.store.verify import HashCache
    from export.lock_entry import make_entry

    lock = load_lock(REPO / "models.lock")
    teacher = replace(lock.get(SMOLLM2_LOCK_NAME), system="template", capabilities=("chat", "completion", "fim"))
    e = make_entry(
        smollm2_gguf(), lock, EntrySpec(name="s"), base=teacher, provenance={}, cache=HashCache(tmp_path / "h")
    )
    assert (e.prompt_style, e.system, e.stop, e.capabilities) == (
        teacher.prompt_style,
        "template",
        teacher.stop,
        ("chat", "completion", "fim"),
    )
