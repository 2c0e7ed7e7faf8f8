"""Teacher and student models for distillation.

The teacher comes from a lock entry (a GGUF, dequantized into a float `LlamaForCausalLM`), a Hugging
Face id pinned to a revision (`id@40-hex-sha`), or a local HF directory. The student comes from an
explicit config, a pretrained directory, or from the teacher itself: a subset of its layers and,
optionally, fewer hidden dims / heads / MLP channels chosen by weight magnitude, so a 4× smaller
student is one flag away.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError, UsageError
from assistant.store.paths import cache_dir

#: Model families the stage can distill and export: transformers model_type -> (model class, config class).
FAMILIES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "LlamaConfig"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
}
#: bumped when the cached dequantized teacher layout changes (v2: tied embeddings detected)
TEACHER_DIR_VERSION = ".v2"
KQUANT_BLOCK = 256  # K-quants need row sizes divisible by this, else llama.cpp falls back per tensor
PINNED = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[0-9a-f]{40})$")


@dataclass
class Teacher:
    model: Any  # transformers LlamaForCausalLM or Qwen2ForCausalLM, eval mode, no grad
    source: str  # what the user named: lock name, "id@rev" or a directory
    sha256: str  # the GGUF's sha256, or a content hash of the weight files
    vocab_size: int
    tokenizer_spec: str  # what distill.tokenizer.load_tokenizer takes for this teacher


def family_of(config: Any, where: str = "the model") -> str:
    """The family (`model_type`) of a config or config dict, refused if the stage cannot handle it."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UsageError(
            f"{where} is a {model_type!r} model; the distill stage handles {', '.join(FAMILIES)}",
            hint="pick a teacher/student of a supported family (Llama, Qwen2)",
        )
    return str(model_type)


def model_class(family: str) -> Any:
    import transformers

    return getattr(transformers, FAMILIES[family][0])


def config_class(family: str) -> Any:
    import transformers

    return getattr(transformers, FAMILIES[family][1])


def _dir_family(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{model_dir / 'config.json'} cannot be read: {e}") from None
    return family_of(config, str(model_dir))


def _dir_sha256(model_dir: Path) -> str:
    """The export stage's provenance key for an HF directory (stat-cached file hashes)."""
    from assistant.model_dir import content_sha256
    from assistant.store.resolve import HashCache

    return content_sha256(model_dir, HashCache().sha256)


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise UsageError(f"unknown dtype {dtype!r}: use one of {', '.join(table)}")
    return table[dtype]


def _finish(model, device: str, dtype) -> Any:
    model = model.to(device=device, dtype=_torch_dtype(dtype)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gguf_as_hf_dir(gguf_path: Path, sha256: str) -> Path:
    """Dequantize a Llama or Qwen2 GGUF once into a cached HF directory (safetensors + config).

    transformers refuses `save_pretrained` on a GGUF-loaded model, and loading the GGUF costs
    ~16 s each time; the cached float32 copy loads in about a second.
    """
    out = cache_dir() / "teachers" / f"{sha256[:16]}{TEACHER_DIR_VERSION}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    if model.config.model_type not in FAMILIES:
        raise AssistantError(
            f"{gguf_path.name} is a {model.config.model_type} model; the distill stage handles {', '.join(FAMILIES)}"
        )
    if not model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, model.model.embed_tokens.weight):
        # a GGUF without output.weight (Qwen2.5's small models): transformers copies the embeddings
        # into an untied head; keeping them tied keeps the parameter count and the export's layout
        model.config.tie_word_embeddings = True
    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "gguf_sha256": sha256})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _resolve_gguf(spec: str, offline: bool):
    """A lock name or .gguf path, verified against its pinned sha256 (no llama.cpp import)."""
    from assistant.store.lockfile import load_lock
    from assistant.store.resolve import HashCache, offline_mode, resolve

    return resolve(spec, load_lock(), HashCache(), offline=offline_mode(offline))


def load_teacher(spec: str, *, device: str = "cpu", dtype: Any = None, offline: bool = False) -> Teacher:
    """A teacher by lock name, `hf-id@revision`, or local HF directory (see module docstring)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"{path} has no config.json: give a Hugging Face model directory, a lock name or an id@revision"
            )
        model = model_class(_dir_family(path)).from_pretrained(str(path), dtype=_torch_dtype(dtype))
        return Teacher(_finish(model, device, dtype), spec, _dir_sha256(path), model.config.vocab_size, str(path))
    pinned = PINNED.match(spec)
    if pinned:
        from transformers import AutoConfig

        family = family_of(AutoConfig.from_pretrained(pinned["repo"], revision=pinned["rev"]), spec)
        model = model_class(family).from_pretrained(pinned["repo"], revision=pinned["rev"], dtype=_torch_dtype(dtype))
        return Teacher(_finish(model, device, dtype), spec, pinned["rev"], model.config.vocab_size, spec)
    if "/" in spec and not path.exists():
        raise UsageError(
            f"teacher {spec!r} is not pinned: write it as {spec}@<40-hex commit> so the run is reproducible"
        )

    resolved = _resolve_gguf(spec, offline)
    hf_dir = gguf_as_hf_dir(resolved.path, resolved.sha256)
    model = model_class(_dir_family(hf_dir)).from_pretrained(str(hf_dir), dtype=_torch_dtype(dtype))
    return Teacher(
        _finish(model, device, dtype), resolved.name, resolved.sha256, model.config.vocab_size, resolved.name
    )


def teacher_sha256(spec: str, *, offline: bool = False) -> str:
    """The identity a teacher's logit cache records, without loading the teacher: the GGUF's sha256,
    the pinned revision, or the content hash of an HF directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _dir_sha256(path)
    pinned = PINNED.match(spec)
    if pinned:
        return pinned["rev"]
    return _resolve_gguf(spec, offline).sha256


def load_teacher_config(spec: str, *, offline: bool = False):
    """Only the teacher's config: what a random-init student trained from a logit cache needs."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_dir():
        config = AutoConfig.from_pretrained(str(path))
    elif PINNED.match(spec):
        pinned = PINNED.match(spec)
        assert pinned is not None
        config = AutoConfig.from_pretrained(pinned["repo"], revision=pinned["rev"])
    else:
        resolved = _resolve_gguf(spec, offline)
        cached = cache_dir() / "teachers" / f"{resolved.sha256[:16]}{TEACHER_DIR_VERSION}"
        if (cached / "config.json").is_file():
            config = AutoConfig.from_pretrained(str(cached))
        else:  # the GGUF's metadata alone: no minutes-long dequantization just for a config
            config = AutoConfig.from_pretrained(str(resolved.path.parent), gguf_file=resolved.path.name)
    family_of(config, f"teacher {spec}")
    return config


# --- students ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSpec:
    """How to make the student. `init`: "teacher" (layer subset, optional narrowing), "random"
    (a fresh model with the dims below, the rest copied from the teacher's config), or a path to a
    pretrained HF directory. Unset dims keep the teacher's."""

    init: str = "teacher"
    layers: int | None = None
    keep_layers: tuple[int, ...] | None = None  # explicit teacher layer indices; default evenly spaced
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    tied: bool | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> StudentSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UsageError(
                f"unknown student setting(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        d = dict(d)
        if d.get("keep_layers") is not None:
            d["keep_layers"] = tuple(int(i) for i in d["keep_layers"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["keep_layers"] is not None:
            d["keep_layers"] = list(d["keep_layers"])
        return d


@dataclass
class Student:
    model: Any
    notes: list[str] = field(default_factory=list)  # warnings worth showing the user
    kept_layers: list[int] | None = None


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


def evenly_spaced(n_teacher: int, n_keep: int) -> list[int]:
    """n_keep layer indices spread over the teacher's depth, always the first and the last."""
    if not 1 <= n_keep <= n_teacher:
        raise UsageError(f"cannot keep {n_keep} of the teacher's {n_teacher} layers: choose 1..{n_teacher}")
    if n_keep == 1:
        return [0]
    return sorted({round(i * (n_teacher - 1) / (n_keep - 1)) for i in range(n_keep)})


def student_config(teacher_config, spec: StudentSpec):
    """The student's config, of the teacher's family: the teacher's, with the spec's dims; explicit head_dim."""
    t = teacher_config
    family = family_of(t, "the teacher")
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    d = t.to_dict()
    # layer_types / max_window_layers are per-layer lists and counts of the teacher's depth
    dropped = (
        "quantization_config",
        "_name_or_path",
        "architectures",
        "dtype",
        "torch_dtype",
        "layer_types",
        "max_window_layers",
    )
    for key in dropped:
        d.pop(key, None)
    layers = len(spec.keep_layers) if spec.keep_layers else (spec.layers or t.num_hidden_layers)
    d.update(
        num_hidden_layers=layers,
        hidden_size=spec.hidden or t.hidden_size,
        num_attention_heads=spec.heads or t.num_attention_heads,
        num_key_value_heads=spec.kv_heads or t.num_key_value_heads,
        intermediate_size=spec.intermediate or t.intermediate_size,
        head_dim=head_dim,
        tie_word_embeddings=t.tie_word_embeddings if spec.tied is None else spec.tied,
        architectures=[FAMILIES[family][0]],
    )
    d.pop("model_type", None)
    config = config_class(family)(**d)
    if config.num_attention_heads % config.num_key_value_heads:
        raise UsageError(
            f"heads ({config.num_attention_heads}) must be a multiple of kv_heads ({config.num_key_value_heads})"
        )
    return config


def quantization_notes(config) -> list[str]:
    """Dims that make llama.cpp's K-quants fall back to worse per-tensor types."""
    notes = []
    for name in ("hidden_size", "intermediate_size"):
        value = getattr(config, name)
        if value % KQUANT_BLOCK:
            notes.append(
                f"{name}={value} is not a multiple of {KQUANT_BLOCK}: K-quants (Q4_K_M, ...) fall back to worse types on those tensors"
            )
    return notes


def build_student(spec: StudentSpec, teacher_model=None, teacher_config=None) -> Student:
    """Make the student described by `spec` (see StudentSpec)."""
    import torch

    t_config = teacher_config if teacher_config is not None else getattr(teacher_model, "config", None)
    if spec.init not in ("teacher", "random"):
        path = pretrained_dir(spec.init)
        model = model_class(_dir_family(path)).from_pretrained(str(path), dtype=torch.float32)
        notes = check_pair(t_config, model.config) if t_config is not None else []
        dims = (spec.layers, spec.keep_layers, spec.hidden, spec.heads, spec.kv_heads, spec.intermediate)
        if any(v is not None for v in dims):
            # cut from the pretrained model the way a student is cut from the teacher
            cut = build_student(replace(spec, init="teacher"), model)
            cut.notes[:0] = notes
            n_source = model.config.num_hidden_layers
            cut.notes.append(f"cut from pretrained {spec.init}: layers {cut.kept_layers} of {n_source}")
            return cut
        return Student(model, notes + quantization_notes(model.config))

    config = student_config(t_config, spec)
    torch.manual_seed(spec.seed)
    student = model_class(family_of(config))(config).float()
    notes = quantization_notes(config)
    if spec.init == "random":
        return Student(student, notes)
    if teacher_model is None:
        raise UsageError("student init 'teacher' needs the teacher's weights")
    keep = (
        list(spec.keep_layers)
        if spec.keep_layers
        else evenly_spaced(t_config.num_hidden_layers, config.num_hidden_layers)
    )
    if max(keep) >= t_config.num_hidden_layers or min(keep) < 0:
        raise UsageError(f"keep_layers {keep} out of range: the teacher has layers 0..{t_config.num_hidden_layers - 1}")
    with torch.no_grad():
        copy_from_teacher(student, teacher_model, keep)
    return Student(student, notes, keep)


def check_pair(teacher_config, student_config) -> list[str]:
    """Notes on a teacher/student pair that can be distilled through logits; refuse one that cannot.

    The loss only needs token ids to mean the same tokens (checked on the tokenizers by the trainer),
    so a student of another family is fine; a vocabulary larger than the teacher's is not (its extra
    ids would never get a target).
    """
    t_family, s_family = family_of(teacher_config, "the teacher"), family_of(student_config, "the student")
    notes = []
    if t_family != s_family:
        notes.append(f"student family {s_family}, teacher {t_family}: distilling through logits only")
    tv, sv = teacher_config.vocab_size, student_config.vocab_size
    if sv > tv:
        raise UsageError(
            f"the student's vocabulary ({sv} ids) is larger than the teacher's ({tv}): "
            f"ids {tv}..{sv - 1} have no teacher target",
            hint="pick a student that shares the teacher's tokenizer (or a prefix of it)",
        )
    if sv < tv:
        notes.append(f"teacher vocab {tv} vs student {sv}: distilling over the shared {sv} tokens")
    return notes


def pretrained_dir(spec: str, *, offline: bool = False) -> Path:
    """An HF directory for a pretrained student: the directory itself, or a GGUF (lock name or
    path) dequantized once into the cache, as teachers are."""
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise UsageError(
            f"student init {spec!r} is a directory without config.json", hint="give a Hugging Face model directory"
        )
    try:
        resolved = _resolve_gguf(spec, offline)
    except AssistantError as e:
        raise UsageError(
            f"student init {spec!r} is neither 'teacher', 'random', an HF model directory nor a GGUF ({e})"
        ) from None
    return gguf_as_hf_dir(resolved.path, resolved.sha256)


def _top(scores, n: int):
    """Indices of the n largest scores, in their original order (keeps layouts monotone)."""
    import torch

    return torch.sort(torch.topk(scores.float(), n).indices).values


def copy_from_teacher(student, teacher, keep: list[int]) -> None:
    """Copy the kept teacher layers into the student, narrowing every dim the student lacks.

    Hidden dims are chosen once (by embedding column norm) and used everywhere; KV groups by
    k_proj norm and query heads inside each kept group by q_proj norm; MLP channels by
    |up|·|down| norm. Head size stays the teacher's.
    """
    tc, sc = teacher.config, student.config
    hd = sc.head_dim
    t_embed = teacher.model.embed_tokens.weight
    hid = _top(t_embed.norm(dim=0), sc.hidden_size)

    student.model.embed_tokens.weight.copy_(t_embed[: sc.vocab_size, hid])
    student.model.norm.weight.copy_(teacher.model.norm.weight[hid])
    if not sc.tie_word_embeddings:
        student.lm_head.weight.copy_(teacher.lm_head.weight[: sc.vocab_size, hid])

    t_group = tc.num_attention_heads // tc.num_key_value_heads
    s_group = sc.num_attention_heads // sc.num_key_value_heads
    if sc.num_key_value_heads > tc.num_key_value_heads or s_group > t_group:
        raise UsageError(
            f"student heads {sc.num_attention_heads}/{sc.num_key_value_heads} cannot be cut from the teacher's "
            f"{tc.num_attention_heads}/{tc.num_key_value_heads}: keep kv_heads ≤ {tc.num_key_value_heads} and heads/kv_heads ≤ {t_group}"
        )
    for s_layer, t_index in zip(student.model.layers, keep):
        t_layer = teacher.model.layers[t_index]
        ta, sa = t_layer.self_attn, s_layer.self_attn
        k_rows = ta.k_proj.weight.view(tc.num_key_value_heads, hd, -1)
        groups = _top(k_rows.flatten(1).norm(dim=1), sc.num_key_value_heads)
        q_rows = ta.q_proj.weight.view(tc.num_key_value_heads, t_group, hd, -1)
        heads = []
        for g in groups.tolist():
            inside = _top(q_rows[g].flatten(1).norm(dim=1), s_group)
            heads += [g * t_group + i for i in inside.tolist()]

        def rows(weight, idx):
            return weight.view(-1, hd, weight.shape[-1])[idx].reshape(-1, weight.shape[-1])

        sa.q_proj.weight.copy_(rows(ta.q_proj.weight, heads)[:, hid])
        sa.k_proj.weight.copy_(rows(ta.k_proj.weight, groups)[:, hid])
        sa.v_proj.weight.copy_(rows(ta.v_proj.weight, groups)[:, hid])
        for proj, idx in (("q_proj", heads), ("k_proj", groups), ("v_proj", groups)):
            t_bias, s_bias = getattr(ta, proj).bias, getattr(sa, proj).bias  # Qwen2: q/k/v biases, per head
            if (t_bias is None) != (s_bias is None):
                raise UsageError(
                    f"teacher and student disagree on {proj} biases: cut the student from a teacher of its family"
                )
            if t_bias is not None:
                s_bias.copy_(t_bias.view(-1, hd)[idx].reshape(-1))
        o_cols = ta.o_proj.weight.view(tc.hidden_size, -1, hd)[:, heads].reshape(tc.hidden_size, -1)
        sa.o_proj.weight.copy_(o_cols[hid])

        tm, sm = t_layer.mlp, s_layer.mlp
        chan = _top(tm.up_proj.weight.norm(dim=1) * tm.down_proj.weight.norm(dim=0), sc.intermediate_size)
        sm.gate_proj.weight.copy_(tm.gate_proj.weight[chan][:, hid])
        sm.up_proj.weight.copy_(tm.up_proj.weight[chan][:, hid])
        sm.down_proj.weight.copy_(tm.down_proj.weight[hid][:, chan])
        s_layer.input_layernorm.weight.copy_(t_layer.input_layernorm.weight[hid])
        s_layer.post_attention_layernorm.weight.copy_(t_layer.post_attention_layernorm.weight[hid])


def describe(config) -> str:
    return (
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, heads {config.num_attention_heads}/"
        f"{config.num_key_value_heads} (kv), intermediate {config.intermediate_size}, vocab {config.vocab_size}"
    )
