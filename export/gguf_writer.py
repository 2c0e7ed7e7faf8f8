"""HF `LlamaForCausalLM` / `Qwen2ForCausalLM` checkpoint -> GGUF, written with the `gguf` package's GGUFWriter.

Not llama.cpp's convert script (not installed by any wheel, and it breaks on PyPI gguf): these
families have few enough tensor kinds that the whole conversion is a name map, a dtype cast and,
for Llama only, one RoPE permutation (Qwen2 uses NEOX RoPE, which is HF's rotate-half layout
already; it adds q/k/v biases, kept in F32 like every 1-D tensor).
Tensors are streamed one at a time into a temp file beside the
target, which is renamed into place only when everything was written.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from export.checkpoint import QKV_BIAS_FAMILIES, Checkpoint, LlamaHParams, TensorRef, load_tensor
from export.errors import ExportError
from export.files import atomic_path
from export.tokenizer import TokenizerMeta


@dataclass(frozen=True)
class OutType:
    name: str  # as users and FILE_TYPES spell it
    ggml_type: int  # gguf.GGMLQuantizationType of 2-D weights
    file_type: int  # llama_ftype written to general.file_type
    numpy_dtype: str


#: --outtype -> how 2-D weights are stored; 1-D tensors (norms) always stay F32, as in llama.cpp.
OUTTYPES: dict[str, OutType] = {
    "f32": OutType("F32", 0, 0, "float32"),
    "f16": OutType("F16", 1, 1, "float16"),
    "bf16": OutType("BF16", 30, 32, "uint16"),  # bf16 bits, rounded to nearest even
}
F32 = 0
#: our hparams.arch -> the gguf package's MODEL_ARCH member (looked up lazily: gguf is imported inside functions)
GGUF_ARCH: dict[str, Callable[[], object]] = {
    "llama": lambda: __import__("gguf").MODEL_ARCH.LLAMA,
    "qwen2": lambda: __import__("gguf").MODEL_ARCH.QWEN2,
}
QUANTIZATION_VERSION = 2  # ggml's current block layout version; llama.cpp writes it on every file
F16_MAX = 65504.0


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where it comes from, its GGUF name, type, and how to transform it."""

    gguf_name: str
    shape: tuple[int, ...]  # numpy order (rows, cols), as GGUFWriter expects
    ggml_type: int
    source: TensorRef | None  # None: computed (rope_freqs)
    permute_heads: int = 0  # >0: Q/K rows reordered for GGML's RoPE with this many heads


@dataclass(frozen=True)
class ExportResult:
    path: Path
    outtype: str
    size: int
    n_tensors: int
    n_params: int
    tied_embeddings: bool
    tokenizer: str
    seconds: float


def rope_interleave(w, n_head: int):
    """Reorder Q/K projection rows from HF's rotate-half RoPE layout to GGML's interleaved one.

    HF rotates dimension i of each head with dimension i + head_dim/2; GGML rotates the pairs
    (2i, 2i+1). Moving row i+head_dim/2 next to row i makes GGML's RoPE compute exactly HF's.
    K uses the KV-head count.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ExportError(f"cannot split {rows} rows into {n_head} heads of pairs")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(hp: LlamaHParams):
    """Per-frequency divisors for Llama 3 RoPE scaling, stored as ``rope_freqs.weight``.

    Follows the published rule: wavelengths shorter than original_ctx/high_freq_factor keep
    their frequency, longer than original_ctx/low_freq_factor are divided by ``factor``, and
    the band between is interpolated smoothly.
    """
    import numpy as np

    rs = hp.rope_scaling
    assert rs is not None and rs.original_context
    freqs = 1.0 / hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim)
    low_wavelen = rs.original_context / rs.low_freq_factor
    high_wavelen = rs.original_context / rs.high_freq_factor
    factors = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rs.factor)
        else:
            smooth = (rs.original_context / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
            factors.append(1.0 / ((1 - smooth) / rs.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def plan_tensors(ckpt: Checkpoint, outtype: OutType) -> list[TensorPlan]:
    """Map every checkpoint tensor to its GGUF name and type; refuse anything we do not know."""
    import gguf

    hp = ckpt.hparams
    tmap = gguf.get_tensor_name_map(GGUF_ARCH[hp.arch](), hp.n_layers)
    permute = hp.arch == "llama"  # GGML's llama graph uses interleaved RoPE; qwen2's is NEOX (HF's layout)
    plans: list[TensorPlan] = []
    names = set(ckpt.tensors)
    for name in sorted(ckpt.tensors, key=_layer_order):
        ref = ckpt.tensors[name]
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope.freq_base
        if name == "lm_head.weight" and hp.tied_embeddings:
            continue  # tied: llama.cpp reuses token_embd when output.weight is absent
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ExportError(
                f"{ckpt.dir}: tensor {name} has no GGUF name in the {hp.arch} map; is this a plain {hp.arch} model?"
            )
        heads = hp.n_head if new.endswith("attn_q.weight") else hp.n_head_kv if new.endswith("attn_k.weight") else 0
        heads = heads if permute else 0
        ggml_type = F32 if len(ref.shape) == 1 else outtype.ggml_type
        plans.append(TensorPlan(new, ref.shape, ggml_type, ref, heads))
    if not hp.tied_embeddings and "lm_head.weight" not in names:
        raise ExportError(f"{ckpt.dir}: config says the embeddings are not tied but there is no lm_head.weight")
    if hp.arch in QKV_BIAS_FAMILIES:
        for i in range(hp.n_layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                if f"model.layers.{i}.self_attn.{proj}.bias" not in names:
                    raise ExportError(
                        f"{ckpt.dir}: a {hp.arch} model needs model.layers.{i}.self_attn.{proj}.bias, which is missing",
                        hint="save the model with save_pretrained (Qwen2 attention always has q/k/v biases)",
                    )
    if hp.rope_scaling is not None and hp.rope_scaling.kind == "llama3":
        plans.insert(0, TensorPlan("rope_freqs.weight", (hp.head_dim // 2,), F32, None))
    _check_shapes(ckpt, plans)
    return plans


def _layer_order(name: str) -> tuple:
    """Embeddings, then blocks in numeric order, then the rest: the order llama.cpp files use."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return (1, int(parts[i + 1]), name)
    return (0 if "embed_tokens" in name else 2, 0, name)


def _check_shapes(ckpt: Checkpoint, plans: list[TensorPlan]) -> None:
    hp = ckpt.hparams
    expected = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "output.weight": (hp.n_vocab, hp.n_embd),
        "attn_q.weight": (hp.n_head * hp.head_dim, hp.n_embd),
        "attn_q.bias": (hp.n_head * hp.head_dim,),
        "attn_k.bias": (hp.n_head_kv * hp.head_dim,),
        "attn_v.bias": (hp.n_head_kv * hp.head_dim,),
        "attn_k.weight": (hp.n_head_kv * hp.head_dim, hp.n_embd),
        "attn_v.weight": (hp.n_head_kv * hp.head_dim, hp.n_embd),
        "attn_output.weight": (hp.n_embd, hp.n_head * hp.head_dim),
        "ffn_gate.weight": (hp.n_ff, hp.n_embd),
        "ffn_up.weight": (hp.n_ff, hp.n_embd),
        "ffn_down.weight": (hp.n_embd, hp.n_ff),
    }
    for p in plans:
        key = p.gguf_name.split(".", 2)[-1] if p.gguf_name.startswith("blk.") else p.gguf_name
        want = expected.get(key)
        if want is not None and tuple(p.shape) != want:
            raise ExportError(
                f"{ckpt.dir}: {p.source.name if p.source else p.gguf_name} has shape {p.shape}, "
                f"config.json implies {want}"
            )


def _to_bf16_bits(x):
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even like torch does."""
    import numpy as np

    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def tensor_data(plan: TensorPlan, hp: LlamaHParams, outtype: OutType):
    """The bytes to write for one planned tensor, as a contiguous numpy array."""
    import numpy as np

    x = llama3_rope_factors(hp) if plan.source is None else load_tensor(plan.source)
    if not np.isfinite(x).all():
        raise ExportError(
            f"tensor {plan.source.name if plan.source else plan.gguf_name} contains NaN or inf",
            hint="the checkpoint is damaged or training diverged: export an earlier checkpoint",
        )
    if plan.permute_heads:
        x = rope_interleave(x, plan.permute_heads)
    if plan.ggml_type == F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if outtype.name == "F16":
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > F16_MAX:
            raise ExportError(
                f"tensor {plan.gguf_name} has values up to {peak:g}, beyond float16's range",
                hint="export with --outtype bf16 or f32",
            )
        return np.ascontiguousarray(x, dtype=np.float16)
    return _to_bf16_bits(x)


def add_hparams(w, hp: LlamaHParams, outtype: OutType, name: str) -> None:
    import gguf

    w.add_name(name)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layers)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim != hp.n_embd // hp.n_head:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    w.add_vocab_size(hp.n_vocab)
    w.add_file_type(outtype.file_type)
    w.add_quantization_version(QUANTIZATION_VERSION)
    rs = hp.rope_scaling
    if rs is not None and rs.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs.factor)
    elif rs is not None and rs.kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs.factor)
        w.add_rope_scaling_orig_ctx_len(rs.original_context)


def write_gguf(
    ckpt: Checkpoint,
    tokenizer: TokenizerMeta,
    out: Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    force: bool = False,
    on_tensor: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write ``ckpt`` with ``tokenizer`` to ``out`` atomically; return what was written."""
    import gguf
    import numpy as np

    ot = OUTTYPES.get(outtype.lower())
    if ot is None:
        raise ExportError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    hp = ckpt.hparams
    if tokenizer.n_tokens != hp.n_vocab:
        raise ExportError(f"the tokenizer has {tokenizer.n_tokens} tokens but the model's vocab_size is {hp.n_vocab}")
    plans = plan_tensors(ckpt, ot)
    t0 = time.perf_counter()
    n_params = 0
    with atomic_path(out, force) as tmp:
        w = gguf.GGUFWriter(tmp, hp.arch)
        try:
            add_hparams(w, hp, ot, name or ckpt.name)
            tokenizer.add_to(w)
            for p in plans:
                dtype = np.dtype(np.float32 if p.ggml_type == F32 else ot.numpy_dtype)
                nbytes = math.prod(p.shape) * dtype.itemsize
                w.add_tensor_info(p.gguf_name, p.shape, dtype, nbytes, raw_dtype=gguf.GGMLQuantizationType(p.ggml_type))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for p in plans:
                data = tensor_data(p, hp, ot)
                w.write_tensor_data(data)
                n_params += data.size
                if on_tensor:
                    on_tensor(p.gguf_name)
        finally:
            w.close()
    return ExportResult(
        path=Path(out),
        outtype=ot.name,
        size=Path(out).stat().st_size,
        n_tensors=len(plans),
        n_params=n_params,
        tied_embeddings=hp.tied_embeddings,
        tokenizer=tokenizer.source,
        seconds=time.perf_counter() - t0,
    )
