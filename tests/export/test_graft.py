"""Graft and patch on tiny random Qwen2 models: a student whose lower layers are its base's, dequantized.

The chain is the real one: a base checkpoint exported and quantized to Q8_0 (the "pretrained
GGUF"), a student initialized from that file's dequantized values with its top layer trained
(perturbed), the student's own F16 and Q8_0 exports, then the graft onto the base, a patch over
the base, and llama.cpp on the result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import FileSource
from assistant.store.patch import apply_patch
from export.errors import ExportError
from export.graft import graft
from export.patch import make_patch
from export.pipeline import QuantizeRequest, quantize_file
from tests.export.test_qwen2 import NO_LOCK, export, llama_logits, torch_logits
from tests.tiny_qwen2 import TinyQwen2Spec, build_tiny_qwen2, cached_tiny_qwen2_tokenizer

LAYERS = 3
TRAINED = LAYERS - 1


def q8(f16: Path, out_dir: Path) -> Path:
    return quantize_file(QuantizeRequest(f16, "Q8_0", out_dir=out_dir, lock=NO_LOCK))[0].result.path


def load_dequantized(model, gguf_path: Path) -> None:
    """Set every weight of ``model`` to the GGUF's dequantized values, as loading that file does."""
    import gguf
    import torch

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, LAYERS)
    reader = gguf.GGUFReader(str(gguf_path))
    values = {}
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
        data = np.asarray(t.data)
        v = data if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.dequantize(data, qtype)
        values[t.name] = np.array(v, dtype=np.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight":
                continue  # tied to the embeddings
            key = names.get_name(name, try_suffixes=(".weight", ".bias"))
            p.copy_(torch.from_numpy(values[key].reshape(p.shape)))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    import torch

    tok = cached_tiny_qwen2_tokenizer(tmp_path_factory.getbasetemp())
    d = tmp_path_factory.mktemp("graft")
    build_tiny_qwen2(d / "base", TinyQwen2Spec(layers=LAYERS), tokenizer_dir=tok)
    base = q8(export(d / "base", d / "base.F16.gguf", "f16").path, d)
    student = build_tiny_qwen2(d / "student", TinyQwen2Spec(layers=LAYERS, seed=7), tokenizer_dir=tok)
    load_dequantized(student, base)
    torch.manual_seed(0)
    with torch.no_grad():  # "training": the top layer and the final norm move
        for p in [*student.model.layers[TRAINED].parameters(), student.model.norm.weight]:
            p.add_(torch.randn_like(p) * 0.02)
    student.save_pretrained(d / "student")
    ref = export(d / "student", d / "student.F16.gguf", "f16").path
    quant = q8(ref, d)
    return {"dir": d, "base": base, "ref": ref, "student": quant, "model": student, "tok": tok}


def test_the_frozen_tensors_become_the_base_bytes_and_the_trained_ones_stay(chain, tmp_path):
    r = graft(chain["student"], chain["ref"], chain["base"], tmp_path / "g.gguf")
    frozen = {n for n in r.grafted}
    assert all(not n.startswith(f"blk.{TRAINED}.") for n in frozen) and "output_norm.weight" not in frozen
    assert {n for n in r.kept} == {t.name for t in read_gguf(chain["ref"]).tensors} - frozen
    assert "token_embd.weight" in frozen and any(n.startswith("blk.0.") for n in frozen)
    g, b = read_gguf(r.path), read_gguf(chain["base"])
    b_by_name = {t.name: t for t in b.tensors}
    with open(r.path, "rb") as fg, open(chain["base"], "rb") as fb:
        for t in g.tensors:
            if t.name in frozen:
                src = b_by_name[r.grafted[t.name]]
                assert t.ggml_type == src.ggml_type
                fg.seek(g.data_offset + t.offset)
                fb.seek(b.data_offset + src.offset)
                assert fg.read(t.n_bytes) == fb.read(src.n_bytes), t.name
    assert g.metadata["general.architecture"] == "qwen2"


def test_llama_cpp_runs_the_grafted_student_like_pytorch(chain, tmp_path):
    from tokenizers import Tokenizer

    r = graft(chain["student"], chain["ref"], chain["base"], tmp_path / "g.gguf")
    tok = Tokenizer.from_file(str(chain["dir"] / "student" / "tokenizer.json"))
    ids = tok.encode("def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, item):\n").ids
    ref = torch_logits(chain["model"], ids)
    got = llama_logits(r.path, ids)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.05


def test_the_patch_over_the_base_rebuilds_the_grafted_file_and_is_smaller(chain, tmp_path):
    r = graft(chain["student"], chain["ref"], chain["base"], tmp_path / "g.gguf")
    p = make_patch(r.path, chain["base"], tmp_path / "g.patch")
    apply_patch(p.path, chain["base"], tmp_path / "rebuilt.gguf")
    assert (tmp_path / "rebuilt.gguf").read_bytes() == r.path.read_bytes()
    assert p.shared_bytes > 0 and p.size < r.size - p.shared_bytes + 64 * 1024
    assert p.header.sha256 == __import__("hashlib").sha256(r.path.read_bytes()).hexdigest()


def test_bad_inputs_are_refused_with_the_reason(chain, tmp_path):
    with pytest.raises(ExportError, match="must be the student's F16 or F32 export"):
        graft(chain["student"], chain["student"], chain["base"], tmp_path / "a.gguf")
    build_tiny_qwen2(tmp_path / "other", TinyQwen2Spec(layers=LAYERS, seed=3), tokenizer_dir=chain["tok"])
    foreign = q8(export(tmp_path / "other", tmp_path / "other.F16.gguf", "f16").path, tmp_path)
    with pytest.raises(ExportError, match="shares no weight matrix with that base"):
        graft(chain["student"], chain["ref"], foreign, tmp_path / "b.gguf")
    with pytest.raises(ExportError, match="shares no weight matrix"):
        make_patch(chain["student"], foreign, tmp_path / "c.patch")
    build_tiny_qwen2(tmp_path / "short", TinyQwen2Spec(layers=2), tokenizer_dir=chain["tok"])
    short = export(tmp_path / "short", tmp_path / "short.F16.gguf", "f16").path
    with pytest.raises(ExportError, match="not an export of the same student"):
        graft(chain["student"], short, chain["base"], tmp_path / "d.gguf")
    assert not any(p.name.startswith(("a.", "b.", "c.", "d.")) for p in tmp_path.iterdir())


def test_export_graft_pins_a_patch_that_a_fresh_store_assembles_offline(chain, tmp_path, monkeypatch):
    """The user's chain: `assistant export graft` records the entry; a clone without the file pulls it."""
    import hashlib
    import json

    from assistant.store.lockfile import Lock, PatchSource, load_lock, save_lock
    from tests.store.test_pull import cli
    from tests.store.test_resolve import entry

    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    shutil.copyfile(chain["base"], repo / "models" / "base.gguf")
    data = (repo / "models" / "base.gguf").read_bytes()
    save_lock(
        Lock(repo / "models.lock", "base", (entry("base", FileSource("models/base.gguf"), data, prompt_style="chat"),))
    )
    monkeypatch.setenv("ASSISTANT_MODELS", str(tmp_path / "store-a"))
    run = tmp_path / "run" / "student"
    run.mkdir(parents=True)
    (run / "provenance.json").write_text(json.dumps({"recipe_hash": "ab" * 32, "steps": 3, "tokens": 96}))
    done = cli(
        "export", "graft", str(chain["student"]), "--reference", str(chain["ref"]), "--base", "base",
        "--patch", str(repo / "models" / "student.patch"), "--name", "student", "--lock", str(repo / "models.lock"),
        "--trained", str(run), "--recipe", "recipes/x.toml", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    grafted = Path(out["path"]).read_bytes()
    e = load_lock(repo / "models.lock").get("student")
    assert isinstance(e.source, PatchSource) and e.source.base == "base" and e.source.path == "models/student.patch"
    assert e.sha256 == hashlib.sha256(grafted).hexdigest() and e.prompt_style == "chat"
    assert e.provenance["grafted"]["tensors_from_base"] == out["tensors_from_base"] > 0
    assert e.provenance["distilled"]["steps"] == 3 and e.provenance["distilled"]["recipe"] == "recipes/x.toml"
    assert "`assistant distill train --recipe recipes/x.toml` (3 steps, 96 tokens), grafted onto base" in e.description
    assert Path(out["lock"]["installed"]).read_bytes() == grafted  # usable at once, no pull needed
    lock_arg = ("--lock", str(repo / "models.lock"))
    fresh = cli(
        "models",
        "pull",
        "student",
        "--offline",
        "--json",
        *lock_arg,
        env={"ASSISTANT_MODELS": str(tmp_path / "store-b")},
    )
    assert fresh.returncode == 0, fresh.stderr
    assert Path(json.loads(fresh.stdout)["path"]).read_bytes() == grafted
    again = cli(
        "export", "graft", str(chain["student"]), "--reference", str(chain["ref"]), "--base", "base",
        "--patch", str(repo / "models" / "student.patch"), "--name", "student", "--lock", str(repo / "models.lock"),
    )  # fmt: skip
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
