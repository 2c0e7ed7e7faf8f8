"""Read a Hugging Face Llama or Qwen2 directory: config.json and safetensors, no torch.

The safetensors format is a JSON header plus raw little-endian arrays, so numpy reads it
directly (bf16 included, by widening the bits): exporting needs neither torch nor
transformers, and a bad directory fails in milliseconds with the reason.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.model_dir import HASHED_SUFFIXES, content_sha256, model_files  # noqa: F401  (re-exported)
from export.errors import ExportError

#: transformers architecture -> GGUF architecture (``general.architecture``, llama.cpp's model family).
ARCHITECTURES: dict[str, str] = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
GGUF_FAMILIES = tuple(ARCHITECTURES.values())
#: GGUF families whose q/k/v projections carry biases (Qwen2: always, with no config flag).
QKV_BIAS_FAMILIES = ("qwen2",)
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: Rope types we can express in GGUF (transformers' ``rope_type`` names).
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: safetensors dtype -> (numpy dtype name, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # widened to float32 by shifting the bits
    "F64": ("<f8", 8),
}


@dataclass(frozen=True)
class RopeScaling:
    """RoPE context extension as transformers describes it (``rope_parameters``/``rope_scaling``)."""

    kind: str  # linear, llama3 or yarn
    factor: float
    original_context: int | None = None
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only


@dataclass(frozen=True)
class LlamaHParams:
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    rms_eps: float
    rope_theta: float
    tied_embeddings: bool
    rope_scaling: RopeScaling | None = None
    arch: str = "llama"  # GGUF architecture: "llama" (rotate-half RoPE, permuted) or "qwen2" (NEOX, q/k/v biases)

    @property
    def n_params_hint(self) -> str:
        return (
            f"{self.n_layers} layers, hidden {self.n_embd}, {self.n_head}/{self.n_head_kv} heads, vocab {self.n_vocab}"
        )


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    end: int


@dataclass(frozen=True)
class Checkpoint:
    dir: Path
    config: dict[str, Any]
    hparams: LlamaHParams
    tensors: dict[str, TensorRef]

    @property
    def name(self) -> str:
        return self.dir.resolve().name


def _get(config: dict, key: str, kind: type, where: Path, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise ExportError(f"{where}: config.json has no {key!r}", hint="is this a complete transformers checkpoint?")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ExportError(f"{where}: config.json field {key!r} should be {kind.__name__}, got {value!r}")
    return value


def _rope(config: dict, where: Path) -> tuple[float, RopeScaling | None]:
    """theta and scaling from transformers 5 ``rope_parameters`` or transformers 4 ``rope_scaling``."""
    params = dict(config.get("rope_parameters") or {})
    legacy = dict(config.get("rope_scaling") or {})
    merged = {**legacy, **params}
    theta = merged.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ExportError(
            f"{where}: RoPE type {kind!r} is not supported by this exporter",
            hint=f"supported: {', '.join(ROPE_TYPES)}",
        )
    if kind == "default":
        return float(theta), None
    factor = merged.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ExportError(f"{where}: RoPE scaling {kind!r} needs a positive 'factor', got {factor!r}")
    orig = merged.get("original_max_position_embeddings")
    if kind in ("llama3", "yarn") and not orig:
        raise ExportError(f"{where}: RoPE scaling {kind!r} needs 'original_max_position_embeddings'")
    return float(theta), RopeScaling(
        kind,
        float(factor),
        int(orig) if orig else None,
        float(merged.get("low_freq_factor", 1.0)),
        float(merged.get("high_freq_factor", 4.0)),
    )


def read_hparams(config: dict, where: Path) -> LlamaHParams:
    """Validate that ``config`` is a Llama/Qwen2 decoder we can express in GGUF and extract its shape."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if not known and not archs and model_type in ARCHITECTURES.values():
        known = [model_type]
    if not known:
        found = ", ".join(archs) if archs else f"model_type {model_type!r}"
        raise ExportError(
            f"{where} is not a Llama or Qwen2 checkpoint: config.json names {found}",
            hint=f"only {', '.join(SUPPORTED_ARCHITECTURES)} can be exported",
        )
    arch = known[0]
    if arch == "qwen2" and config.get("use_sliding_window"):
        raise ExportError(
            f"{where}: use_sliding_window = true is not supported by llama.cpp's qwen2 graph",
            hint="set use_sliding_window to false (Qwen2.5 models ship it off)",
        )
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ExportError(f"{where}: hidden_act {act!r} is not Llama's silu; llama.cpp would compute a different model")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ExportError(f"{where}: {flag} = true is not supported by this exporter")
    n_embd = _get(config, "hidden_size", int, where)
    n_head = _get(config, "num_attention_heads", int, where)
    n_head_kv = _get(config, "num_key_value_heads", int, where, default=n_head)
    head_dim = config.get("head_dim") or n_embd // n_head
    if n_head % n_head_kv:
        raise ExportError(f"{where}: {n_head} attention heads is not a multiple of {n_head_kv} KV heads")
    if head_dim % 2:
        raise ExportError(f"{where}: head_dim {head_dim} is odd; RoPE needs pairs")
    theta, scaling = _rope(config, where)
    return LlamaHParams(
        n_layers=_get(config, "num_hidden_layers", int, where),
        n_embd=n_embd,
        n_ff=_get(config, "intermediate_size", int, where),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=int(head_dim),
        n_ctx=_get(config, "max_position_embeddings", int, where),
        n_vocab=_get(config, "vocab_size", int, where),
        rms_eps=_get(config, "rms_norm_eps", float, where, default=1e-6),
        rope_theta=theta,
        # transformers' LlamaConfig defaults to untied embeddings
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        arch=arch,
    )


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ExportError(f"{path} is not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if n > size - 8 or n > 100 << 20:
                raise ExportError(f"{path} is not a safetensors file or is truncated (header of {n} bytes)")
            header = json.loads(f.read(n))
    except json.JSONDecodeError:
        raise ExportError(f"{path} has a corrupt safetensors header") from None
    header.pop("__metadata__", None)
    base = 8 + n
    for name, t in header.items():
        if base + t["data_offsets"][1] > size:
            raise ExportError(f"{path} is truncated: tensor {name} runs past the end of the file")
    return {"base": base, "tensors": header}


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise ExportError(f"{model_dir}: shards listed in {SAFETENSORS_INDEX} are missing: {', '.join(missing)}")
        return [model_dir / s for s in shards]
    single = model_dir / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    if any(model_dir.glob("*.bin")):
        raise ExportError(
            f"{model_dir} holds PyTorch .bin weights, not safetensors",
            hint="re-save it with model.save_pretrained(dir) (safetensors is the default)",
        )
    raise ExportError(f"{model_dir} has no {SAFETENSORS_FILE}", hint="save the model with model.save_pretrained(dir)")


def read_checkpoint(model_dir: str | Path) -> Checkpoint:
    """config.json plus the tensor table of every safetensors shard (no tensor data read)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"model directory not found: {model_dir}", hint="pass a directory written by save_pretrained")
    cfg_path = model_dir / CONFIG_FILE
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{model_dir} has no config.json", hint="pass a directory written by save_pretrained"
        ) from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path} is not valid JSON: {e}") from None
    hparams = read_hparams(config, model_dir)
    tensors: dict[str, TensorRef] = {}
    for path in _weight_files(model_dir):
        header = _read_header(path)
        for name, t in header["tensors"].items():
            if t["dtype"] not in SAFETENSORS_DTYPES:
                raise ExportError(f"{path}: tensor {name} has dtype {t['dtype']}, which is not a float type")
            start, end = t["data_offsets"]
            tensors[name] = TensorRef(
                name, t["dtype"], tuple(t["shape"]), path, header["base"] + start, header["base"] + end
            )
    return Checkpoint(model_dir, config, hparams, tensors)


def load_tensor(ref: TensorRef):
    """The tensor as a float32 numpy array (a copy: the file is closed afterwards)."""
    import numpy as np

    np_dtype, width = SAFETENSORS_DTYPES[ref.dtype]
    with open(ref.file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        raw = np.frombuffer(buf, dtype=np_dtype, count=(ref.end - ref.start) // width, offset=ref.start)
        if ref.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)  # always a copy
        del raw  # the map cannot close while a view of it exists
    return out.reshape(ref.shape)
