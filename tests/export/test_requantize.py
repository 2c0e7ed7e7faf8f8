"""export.requantize: the embedded Q4_1 model re-quantized by the real llama.cpp quantizer."""

from __future__ import annotations

import pytest

from assistant.store.gguf_file import read_gguf
from export.errors import ExportError
from export.requantize import main, requantize


def test_q4_1_to_q8_0_is_a_complete_gguf_and_existing_outputs_are_kept(default_gguf, tmp_path):
    out = tmp_path / "smollm2.Q8_0.gguf"
    r = requantize(default_gguf, "q8_0", out)
    info = read_gguf(out)
    assert r.qtype == "Q8_0" and info.quantization == "Q8_0" and r.size == out.stat().st_size
    assert r.type_counts.get("Q8_0", 0) >= 200 and not r.fallbacks  # Q8_0 blocks of 32 fit 576-wide rows
    before = out.read_bytes()
    with pytest.raises(ExportError, match="already exists.*--force"):
        requantize(default_gguf, "Q4_0", out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind


def test_command_line_reports_one_line(default_gguf, tmp_path, capsys):
    assert main([str(default_gguf), "--type", "IQ2_XS", "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: quantization type IQ2_XS needs an importance matrix") and "\n" not in err
    assert main(["smollm2-135m-instruct", "--type", "Q4_0", "--out", str(tmp_path / "q.gguf")]) == 0
    assert "Q4_0" in capsys.readouterr().out and read_gguf(tmp_path / "q.gguf").quantization == "Q4_0"
