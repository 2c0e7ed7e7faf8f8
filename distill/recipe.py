"""The training recipe: every setting of a distillation run, loadable from TOML.

A recipe hash covers the settings that change the weights, so a checkpoint made by another
recipe is refused on resume instead of being silently continued.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from assistant.errors import UsageError
from distill.models import StudentSpec

# Settings that do not change the weights a run reaches (where and how often it reports).
NOT_HASHED = (
    "out",
    "hidden_cache",  # where the frozen outputs live does not change them
    "val_logit_cache",  # validation only reads it
    "log_interval",
    "ckpt_interval",
    "eval_interval",
    "eval_blocks",
    "compile",
    "stop_after",
    "time_limit_s",
)


@dataclass(frozen=True)
class Recipe:
    teacher: str = "smollm2-135m-instruct"  # lock name, hf-id@revision, or HF directory
    corpus: str = ""  # directory written by `assistant distill corpus`
    logit_cache: str | None = None  # directory written by `assistant distill cache-logits` (no teacher in memory)
    train_blocks: int | None = None  # draw only from the first N training blocks (e.g. those a logit cache covers)
    eval_with_teacher: bool = True  # load the teacher for validation KL/top-1 even when training from the cache
    val_logit_cache: str | None = None  # the teacher's cache of the validation split: KL/top-1 without the teacher
    out: str = "runs/distill"
    student: StudentSpec = field(default_factory=StudentSpec)
    freeze_layers: int = 0  # keep the embeddings and the lowest N student layers fixed (a pretrained/cut student)
    freeze_head: bool = False  # with freeze_layers: an untied head stays fixed too (only the top layers learn)
    hidden_cache: str | None = None  # directory for the frozen layers' outputs, computed once per student prefix
    # loss
    alpha: float = 0.5
    temperature: float = 1.0
    divergence: str = "forward_kl"
    beta: float = 0.5
    chunk_size: int | None = 1024
    # batches: a step sees micro_batch × grad_accum × world_size blocks of block_size tokens
    block_size: int = 256
    micro_batch: int = 8
    grad_accum: int = 1
    max_steps: int = 200
    # optimizer and schedule
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # reporting
    eval_interval: int = 50
    eval_blocks: int = 32
    log_interval: int = 10
    ckpt_interval: int = 50
    # machine
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    fsdp: bool = False
    stop_after: int | None = None  # stop (as if killed) after this step's checkpoint; for budgets and tests
    time_limit_s: float | None = None  # checkpoint and stop once this much wall time has passed (leased GPUs)

    def __post_init__(self) -> None:
        for name in (
            "block_size",
            "micro_batch",
            "grad_accum",
            "max_steps",
            "eval_blocks",
            "log_interval",
            "ckpt_interval",
            "eval_interval",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise UsageError(f"train_blocks must be at least 1, got {self.train_blocks}")
        if self.warmup_steps < 0 or self.warmup_steps > self.max_steps:
            raise UsageError(f"warmup_steps must be in 0..max_steps ({self.max_steps}), got {self.warmup_steps}")
        if self.min_lr > self.lr:
            raise UsageError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.freeze_layers < 0:
            raise UsageError(f"freeze_layers must be at least 0, got {self.freeze_layers}")
        if self.hidden_cache and not self.freeze_layers:
            raise UsageError(
                "hidden_cache is set but freeze_layers = 0: there is nothing frozen to cache",
                hint="set freeze_layers = N (the lowest N student layers stay fixed)",
            )
        self.loss_config()  # validates alpha, temperature, divergence, beta, chunk_size

    def loss_config(self):
        from distill.losses import LossConfig

        try:
            return LossConfig(self.alpha, self.temperature, self.divergence, self.beta, self.chunk_size)
        except ValueError as e:
            raise UsageError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["student"] = self.student.to_dict()
        return d

    def hash(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}
        if not d["freeze_layers"]:
            del d["freeze_layers"]  # recipes from before the setting keep their hash (and their checkpoints)
        if not d["freeze_head"]:
            del d["freeze_head"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "recipe") -> Recipe:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(
                f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        if "student" in d:
            d["student"] = StudentSpec.from_dict(d["student"])
        try:
            return cls(**d)
        except TypeError as e:
            raise UsageError(f"{where}: {e}") from None

    def replace(self, **changes: Any) -> Recipe:
        student = changes.pop("student", None)
        d = self.to_dict()
        d.update(changes)
        if student:
            d["student"] = {**d["student"], **student}
        return Recipe.from_dict(d)


def load_recipe(path: Path) -> Recipe:
    """A recipe from TOML (or the JSON a launcher writes): top-level keys are Recipe fields, `[student]` the StudentSpec.

    A `[distill]` table is accepted too, so a pipeline recipe can hold other stages beside it.
    """
    try:
        text = Path(path).read_text()
        data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise UsageError(
            f"recipe {path} is not valid {'JSON' if Path(path).suffix == '.json' else 'TOML'}: {e}"
        ) from None
    data = data.get("distill", data)
    return Recipe.from_dict(data, where=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line, value parsed as TOML (so 0.5, true, "x", [1,2] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip(), value


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    changes: dict[str, Any] = {}
    student: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("student."):
            student[key.removeprefix("student.")] = value
        else:
            changes[key] = value
    if student:
        changes["student"] = student
    return recipe.replace(**changes) if changes else recipe
