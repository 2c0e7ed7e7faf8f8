"""The real Qwen2 round trip: Qwen2.5-Coder-0.5B GGUF → PyTorch → our F16 GGUF → llama.cpp.

The model comes through models.lock (pulled into the user cache once, as CI does); the test is
skipped with the reason when it cannot be had. Dequantizing takes about a minute the first time
(cached after), the export about a minute, the comparison a few minutes on a shared 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.store.gguf_file import read_gguf

pytestmark = pytest.mark.slow
LOCK_NAME = "qwen2.5-coder-0.5b-instruct"
PROMPTS = ("def fibonacci(n):\n", "import os\n\n\ndef list_python_files(root):\n")


@pytest.fixture(scope="module")
def trip(code_model, tmp_path_factory):
    """``code_model`` (tests/conftest.py) pulls the 0.5B through the lock once per session. Module
    scope runs before the per-test cache isolation, so the dequantized teacher is cached across runs."""
    from scripts.gguf_roundtrip import roundtrip

    assert code_model.name == LOCK_NAME
    return roundtrip(LOCK_NAME, tmp_path_factory.mktemp("qwen05"), n_new=32, prompts=PROMPTS)


def test_our_f16_export_is_the_pytorch_model_and_keeps_the_teachers_layout(trip):
    ours, original = trip.report["files"]
    assert ours["tokenization_identical"] and original["tokenization_identical"]
    assert ours["greedy_identical"] and ours["greedy_matched"] == [32, 32]
    assert ours["kl_mean"] < 1e-4 and ours["top1"] == 1.0  # measured 6.8e-7 and 1.0 over 4 x 64 tokens
    a, b = read_gguf(trip.ours, load_arrays=True), read_gguf(trip.original, load_arrays=True)
    assert a.metadata["general.architecture"] == b.metadata["general.architecture"] == "qwen2"
    assert a.n_params == b.n_params
    assert {t.name for t in a.tensors} == {t.name for t in b.tensors}
    for key in (
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.tokens",
    ):
        assert a.metadata[key] == b.metadata[key], key
    assert a.metadata["qwen2.rope.freq_base"] == b.metadata["qwen2.rope.freq_base"] == 1_000_000.0


def test_the_original_file_agrees_with_pytorch_at_least_as_well_as_smollm2s_did(trip):
    """docs/export.md: SmolLM2's own Q4_1 file had KL 2.4e-3 and top-1 0.98 against its PyTorch copy."""
    _, original = trip.report["files"]
    assert Path(original["path"]).name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert original["kl_mean"] < 2.4e-3 and original["top1"] >= 0.98
