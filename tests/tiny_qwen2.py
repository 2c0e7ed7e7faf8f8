"""Tiny random Qwen2 checkpoints with a small Qwen2-style tokenizer, for export and distill tests.

The tokenizer is a byte-level BPE trained in about a second on Python source with Qwen2's own
pre-tokenizer (its split regex, then byte-level without a regex) and Qwen2's special tokens
(``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, the FIM tokens), so llama.cpp's ``qwen2``
pre-tokenizer and chat template are exercised without a 151,936-token vocabulary or a model
download. The q/k/v biases are random (transformers initializes them to zero, which would hide
a writer that drops them).
"""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.tiny_llama import cached_once

#: Qwen2's pre-tokenizer split, as its tokenizer.json spells it.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyQwen2Spec:
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 1024  # rows of the embedding; the tokenizer uses the first ids, the rest are padding
    tied: bool = True  # Qwen2.5's small models tie their embeddings
    max_positions: int = 2048
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    init_std: float = 0.05
    bias_std: float = 0.5
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _training_text() -> list[str]:
    """Real Python source from the standard library: deterministic and always installed."""
    import dataclasses
    import json as json_module
    import textwrap

    return [inspect.getsource(m) for m in (dataclasses, json_module.decoder, json_module.encoder, textwrap, inspect)]


def save_tiny_qwen2_tokenizer(out_dir: Path, bpe_vocab: int = 900) -> Path:
    """Train and save a Qwen2-style byte-level BPE tokenizer (tokenizer.json + config)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_training_text(), trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 2048,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def cached_tiny_qwen2_tokenizer(base_dir: Path) -> Path:
    return cached_once(base_dir, "tiny-qwen2-tokenizer", save_tiny_qwen2_tokenizer)


def tiny_qwen2_config(spec: TinyQwen2Spec, *, eos_id: int | None = None):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=spec.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=spec.tied,
        initializer_range=spec.init_std,
        use_sliding_window=False,
        eos_token_id=eos_id,
        **spec.extra,
    )


def random_qwen2(spec: TinyQwen2Spec = TinyQwen2Spec(), *, eos_id: int | None = None):
    """A random Qwen2ForCausalLM (eval mode) with random q/k/v biases."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(spec, eos_id=eos_id)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, spec.bias_std)
    return model


def build_tiny_qwen2(
    out_dir: Path,
    spec: TinyQwen2Spec = TinyQwen2Spec(),
    *,
    tokenizer_dir: Path | None = None,
    tokenizer_from: str | None = None,
):
    """Write a random Qwen2 checkpoint (plus tokenizer files) to ``out_dir``; return the model."""
    from assistant.model_dir import write_tokenizer_record

    eos = None
    if tokenizer_dir is not None:
        vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["added_tokens"]
        eos = next(a["id"] for a in vocab if a["content"] == "<|im_end|>")
    model = random_qwen2(spec, eos_id=eos)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(Path(tokenizer_dir) / name, out_dir / name)
    if tokenizer_from is not None:
        write_tokenizer_record(out_dir, tokenizer_from)
    return model
