"""The distillation training loop: one file, read top to bottom.

setup (devices, ranks) → data (corpus blocks, optional teacher-logit cache) → models (teacher,
student) → optimizer → resume → loop (accumulate, clip, step, log, validate, checkpoint) → save
the student as an HF directory with its provenance.

The same entry point runs alone or under `torchrun --nproc_per_node N` (DDP, or FSDP with
`fsdp = true`). The data order is a pure function of (seed, step), the schedule a pure function
of the step, and a checkpoint holds the weights, the optimizer and the RNG states, so a run that
is killed and resumed reaches the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from assistant.atomic import atomic_write_text
from assistant.errors import AssistantError, UsageError
from distill.frozen import freeze_lower, prefix_hidden, run_layers
from distill.losses import (
    IGNORE_INDEX,
    LossConfig,
    SparseTarget,
    bucket_student_log_probs,
    chunked_distill_loss,
    forward_kl,
    log_probs,
    sparse_teacher_log_probs,
)
from distill.models import Teacher, build_student, count_parameters, describe, load_teacher, load_teacher_config
from distill.recipe import Recipe

CHECKPOINT_POINTER = "latest"  # file naming the newest complete checkpoint directory


@dataclass
class Env:
    """Where this process runs: rank, world, device, autocast dtype."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    out: Path
    student_dir: Path
    steps: int
    tokens: int
    final: dict[str, Any]
    params: int
    stopped_early: bool = False


# --- setup ---------------------------------------------------------------------------------


def setup_env(recipe: Recipe) -> Env:
    """Join the process group when launched by torchrun; pick the device and precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = recipe.device.startswith("cuda") or (recipe.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UsageError('device cuda was asked for but PyTorch sees no CUDA GPU: use device = "cpu"')
    device = torch.device(f"cuda:{local}" if want_cuda and world > 1 else ("cuda" if want_cuda else "cpu"))
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and want_cuda)
    return Env(rank, world, local, device, torch.bfloat16 if bf16 else None)


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(recipe.max_steps - recipe.warmup_steps, 1)
    progress = min((step - recipe.warmup_steps) / span, 1.0)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress))


def sample_indices(step: int, recipe: Recipe, env: Env, n_blocks: int) -> list[list[int]]:
    """Block indices for each micro-batch of this rank at this step.

    The global sample counter p runs over epochs of a seeded permutation; step s owns samples
    [s·G, (s+1)·G), split micro-batch-major then rank, so any (world, grad_accum) with the same
    global batch sees the same blocks in the same step.
    """
    per_micro = recipe.micro_batch * env.world
    global_batch = per_micro * recipe.grad_accum
    perms: dict[int, np.ndarray] = {}

    def block(p: int) -> int:
        epoch = p // n_blocks
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([recipe.seed, epoch]).permutation(n_blocks)
        return int(perms[epoch][p % n_blocks])

    base = step * global_batch
    return [
        [block(base + m * per_micro + env.rank * recipe.micro_batch + j) for j in range(recipe.micro_batch)]
        for m in range(recipe.grad_accum)
    ]


def load_blocks(
    split, indices: list[int], block_size: int, device: torch.device, *, trim: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for these blocks; labels are IGNORE_INDEX where an example corpus has no target.

    With ``trim``, the columns after the batch's last target are dropped: a causal model's earlier
    positions never see them, and an example row is mostly padding after its answer.
    """
    rows = np.stack([split.block(i, block_size) for i in indices])
    tokens = torch.from_numpy(rows.astype(np.int64))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    mask = split.label_mask(indices, block_size)
    if mask is not None:
        keep = torch.from_numpy(mask)
        labels = labels.masked_fill(~keep, IGNORE_INDEX)
        if trim:
            used = keep.any(0).nonzero()
            length = int(used[-1]) + 1 if len(used) else 1
            inputs, labels = inputs[:, :length].contiguous(), labels[:, :length].contiguous()
    return inputs.to(device), labels.to(device)


def load_cached_targets(cache, indices: list[int], device: torch.device, length: int | None = None) -> SparseTarget:
    """The cached teacher targets of these blocks, flattened like the student's [n·length] positions."""
    parts = [tuple(a[:length] for a in cache.block(i)) for i in indices]
    return SparseTarget(
        torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)).to(device),
        torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64)).to(device),
        torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.float32)).to(device),
    )


# --- the student's forward + loss as one module, so DDP/FSDP see every use of the weights ----


class DistillStep(torch.nn.Module):
    """forward(input_ids, labels, teacher_chunk, n_tokens, hidden_in) → (loss, parts) for one micro-batch.

    With ``frozen`` lower layers, those run without gradients (or not at all: ``hidden_in`` is their
    cached output). The head and the loss see only positions that have a target.
    """

    def __init__(self, student, loss: LossConfig, frozen: int = 0):
        super().__init__()
        self.student = student
        self.loss = loss
        self.frozen = frozen

    def forward(self, input_ids, labels, teacher_chunk, n_tokens, hidden_in=None):
        body = self.student.model
        if hidden_in is not None:
            hidden = run_layers(body, hidden_in, self.frozen, final_norm=True)
        elif self.frozen:
            hidden = run_layers(body, prefix_hidden(body, input_ids, self.frozen), self.frozen, final_norm=True)
        else:
            hidden = body(input_ids=input_ids).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        labels = labels.reshape(-1)
        keep = labels != IGNORE_INDEX
        if not bool(keep.all()):
            rows = keep.nonzero().squeeze(1)
            hidden, labels = hidden[rows], labels[rows]
            teacher_chunk = lambda s, f=teacher_chunk, rows=rows: f(rows[s])
        return chunked_distill_loss(hidden, self.student.lm_head.weight, teacher_chunk, labels, self.loss, n_tokens)


def teacher_hidden(teacher: Teacher, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher.model.model(input_ids=input_ids).last_hidden_state.reshape(-1, teacher.model.config.hidden_size)


def dense_teacher(teacher: Teacher, input_ids: torch.Tensor) -> Callable[[slice], torch.Tensor]:
    """Teacher logits per chunk, from its hidden states: full logits never exist for the batch."""
    hidden = teacher_hidden(teacher, input_ids)
    head = teacher.model.lm_head.weight
    return lambda s: hidden[s] @ head.t()


# --- validation -----------------------------------------------------------------------------


@torch.no_grad()
def validate(
    step_module: DistillStep, teacher: Teacher | None, split, recipe: Recipe, env: Env, cached=None
) -> dict[str, float]:
    """Student CE on validation blocks; with a teacher also KL(teacher‖student) at T=1 and top-1 agreement.

    Only positions with a target count (an example corpus's answers), and only there do the heads run.
    Without the teacher in memory, ``cached`` (the teacher's logit cache of this split) gives the same
    two figures over its top-k buckets plus the tail, the KL the training loss itself sees.
    """
    student = step_module.student
    n_blocks = split.n_blocks(recipe.block_size)
    if n_blocks == 0:
        return {}
    sharded = hasattr(step_module, "unshard")  # FSDP2: the root's own weights (embeddings, head) are sharded
    if sharded:
        step_module.unshard()
    count = min(recipe.eval_blocks, n_blocks)
    if env.world > 1:  # every rank runs the same number of forwards (FSDP gathers inside them)
        count = max(count - count % env.world, min(env.world, n_blocks))
    indices = [round(i * (n_blocks - 1) / max(count - 1, 1)) for i in range(count)] if count > 1 else [0]
    mine = indices[env.rank :: env.world]
    ce, kl, agree, tokens = (torch.zeros((), dtype=torch.float64, device=env.device) for _ in range(4))
    chunk = recipe.chunk_size or recipe.block_size
    was_training = student.training
    student.eval()
    for start in range(0, len(mine), recipe.micro_batch):
        inputs, targets = load_blocks(split, mine[start : start + recipe.micro_batch], recipe.block_size, env.device)
        with torch.autocast(env.device.type, dtype=env.autocast, enabled=env.autocast is not None):
            hidden = student.model(input_ids=inputs).last_hidden_state.reshape(-1, student.config.hidden_size)
            t_hidden = teacher_hidden(teacher, inputs) if teacher is not None else None
        labels = targets.reshape(-1)
        rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # the heads run on target positions only
        hidden, labels = hidden[rows], labels[rows]
        if t_hidden is not None:
            t_hidden = t_hidden[rows]
        target = None
        if t_hidden is None and cached is not None:
            target = load_cached_targets(cached, mine[start : start + recipe.micro_batch], env.device, inputs.shape[1])
            target = target[rows]
        for s0 in range(0, hidden.shape[0], chunk):
            s = slice(s0, s0 + chunk)
            s_logp = log_probs(hidden[s] @ student.lm_head.weight.t())
            ce += torch.nn.functional.nll_loss(s_logp, labels[s], reduction="sum").double()
            if t_hidden is not None:
                t_logp = log_probs(t_hidden[s] @ teacher.model.lm_head.weight.t())
                v = min(t_logp.shape[-1], s_logp.shape[-1])
                t_v, s_v = t_logp[:, :v].log_softmax(-1), s_logp[:, :v].log_softmax(-1)
                kl += forward_kl(t_v, s_v).sum().double()
                agree += (t_v.argmax(-1) == s_v.argmax(-1)).sum().double()
            elif target is not None:
                t = target[s]
                kl += forward_kl(sparse_teacher_log_probs(t), bucket_student_log_probs(s_logp, t.ids)).sum().double()
                t_top = t.ids.gather(1, t.logprobs.argmax(1, keepdim=True)).squeeze(1)
                agree += (s_logp.argmax(-1) == t_top).sum().double()
        tokens += labels.numel()
    stats = torch.stack([ce, kl, agree, tokens])
    if env.world > 1:
        dist.all_reduce(stats)
    student.train(was_training)
    if sharded:
        step_module.reshard()
    ce, kl, agree, tokens = (float(x) for x in stats)
    tokens = max(tokens, 1.0)
    out = {"val_ce": ce / tokens, "val_ppl": math.exp(min(ce / tokens, 50))}
    if teacher is not None or cached is not None:
        out |= {"val_kl": kl / tokens, "val_top1": agree / tokens}
    return out


# --- checkpoints ----------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(module, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state of the DistillStep, the same call for plain, DDP and FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=opts), get_optimizer_state_dict(module, optimizer, options=opts)


def save_checkpoint(out: Path, step: int, module, optimizer, recipe: Recipe, env: Env, tokens: int) -> None:
    """Write checkpoint-<step>/ completely, then repoint `latest` with an atomic rename."""
    model_state, optim_state = _state_dicts(module, optimizer)  # collective under FSDP: every rank calls it
    if env.main:
        final = out / f"checkpoint-{step:06d}"
        tmp = out / f".checkpoint-{step:06d}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": model_state, "optimizer": optim_state, "rng": _rng_state()}, tmp / "state.pt")
        meta = {"step": step, "tokens": tokens, "recipe_hash": recipe.hash(), "world": env.world}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(out / CHECKPOINT_POINTER, final.name)
        for old in out.glob("checkpoint-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    if env.world > 1:
        dist.barrier()


def find_checkpoint(out: Path, recipe: Recipe) -> Path | None:
    pointer = out / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    ckpt = out / pointer.read_text().strip()
    if not (ckpt / "meta.json").is_file():
        raise AssistantError(f"{pointer} names {ckpt.name}, which is incomplete: delete {out} or use another --out")
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta["recipe_hash"] != recipe.hash():
        raise AssistantError(
            f"{out} holds a checkpoint from a different recipe: use another --out, or --restart to discard it"
        )
    return ckpt


def load_checkpoint(ckpt: Path, module, optimizer) -> tuple[int, int]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    set_model_state_dict(module, state["model"], options=opts)
    set_optimizer_state_dict(module, optimizer, state["optimizer"], options=opts)
    _set_rng_state(state["rng"])
    meta = json.loads((ckpt / "meta.json").read_text())
    return meta["step"], meta["tokens"]


class MetricsLog:
    """metrics.jsonl, appended by rank 0; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.is_file():
            keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        elif enabled and resume_step is None:
            path.unlink(missing_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


# --- the run --------------------------------------------------------------------------------


def _open_data(recipe: Recipe):
    from distill.example_corpus import open_corpus

    if not recipe.corpus:
        raise UsageError("the recipe names no corpus: build one with `assistant distill corpus` and set corpus = DIR")
    corpus = open_corpus(recipe.corpus)  # a token corpus, or an example corpus (one example per block)
    train = corpus.split("train")
    n_train = train.n_blocks(recipe.block_size)
    if n_train == 0:
        raise UsageError(
            f"corpus {recipe.corpus} has fewer than {recipe.block_size + 1} training tokens: lower block_size or build a bigger corpus"
        )
    if recipe.train_blocks is not None:
        n_train = min(n_train, recipe.train_blocks)
    cache = None
    if recipe.logit_cache:
        from distill.logit_cache import LogitCache

        cache = LogitCache.open(recipe.logit_cache)
        cache.check_matches(corpus, "train", recipe.block_size)
        if cache.n_blocks < n_train:
            raise UsageError(
                f"the logit cache covers {cache.n_blocks} training blocks but the run draws from {n_train}: "
                f"set train_blocks = {cache.n_blocks} in the recipe, or cache more blocks"
            )
    return corpus, train, cache, n_train


def _open_val_cache(recipe: Recipe, corpus, val_split):
    """The teacher's cache of the validation split (``val_logit_cache``), checked against the corpus and teacher."""
    if not recipe.val_logit_cache:
        return None
    from distill.logit_cache import LogitCache

    cache = LogitCache.open(recipe.val_logit_cache)
    cache.check_matches(corpus, "validation", recipe.block_size)
    check_cache_teacher(cache, recipe)
    n_val = val_split.n_blocks(recipe.block_size)
    if cache.n_blocks < n_val:
        raise UsageError(
            f"the validation logit cache at {cache.path} covers {cache.n_blocks} of the {n_val} validation blocks: "
            "cache the whole split (assistant distill cache-logits --split validation, no --max-blocks)"
        )
    return cache


def check_tokenizers(teacher: Teacher, corpus, recipe: Recipe) -> None:
    """Token ids must mean the same thing to the corpus, the teacher and a pretrained student."""
    from distill.tokenizer import load_tokenizer, same_tokenizer

    theirs = load_tokenizer(teacher.tokenizer_spec)
    others = [("corpus", Path(recipe.corpus) / "tokenizer.json", corpus.manifest["tokenizer"].get("sha256"))]
    init = Path(recipe.student.init).expanduser()
    if recipe.student.init not in ("teacher", "random") and (init / "tokenizer.json").is_file():
        others.append(("student", init, None))
    elif recipe.student.init not in ("teacher", "random") and not init.is_dir():
        others.append(("student", recipe.student.init, None))  # a GGUF student: its embedded tokenizer
    for what, spec, sha in others:
        if sha == theirs.sha256:
            continue
        ok, reason = same_tokenizer(theirs, str(spec))
        if not ok:
            raise AssistantError(
                f"the {what} and the teacher use different tokenizers ({reason}): rebuild the {what} with --tokenizer {teacher.tokenizer_spec}"
            )


def open_hidden_cache(recipe: Recipe, student, corpus, train_split, n_train: int, env: Env):
    """The frozen prefix's outputs for the training blocks: rank 0 computes what is missing, then every rank reads."""
    from distill.frozen import HiddenIdentity, open_or_build, prefix_sha256

    identity = HiddenIdentity(
        prefix_sha256=prefix_sha256(student, recipe.freeze_layers),
        n_frozen=recipe.freeze_layers,
        corpus_sha256=corpus.manifest_sha256,
        tokenizer_sha256=corpus.manifest["tokenizer"].get("sha256", ""),
        split="train",
        block_size=recipe.block_size,
        hidden_size=student.config.hidden_size,
    )

    def compute(indices: list[int]) -> torch.Tensor:
        inputs, _ = load_blocks(train_split, indices, recipe.block_size, env.device, trim=False)
        with torch.autocast(env.device.type, dtype=env.autocast, enabled=env.autocast is not None):
            return prefix_hidden(student.model, inputs, recipe.freeze_layers)

    was = student.training
    student.eval()  # no dropout in the cached outputs
    try:
        if env.main:
            cache, _ = open_or_build(recipe.hidden_cache, identity, n_train, compute, batch_size=recipe.micro_batch)
        if env.world > 1:
            dist.barrier()
        if not env.main:
            cache, _ = open_or_build(recipe.hidden_cache, identity, n_train, compute, batch_size=recipe.micro_batch)
    finally:
        student.train(was)
    return cache


def check_cache_teacher(cache, recipe: Recipe) -> None:
    """A logit cache is the teacher's output: refuse one made by another teacher than the recipe's."""
    from distill.models import teacher_sha256

    made_by = cache.manifest["teacher"]
    want = teacher_sha256(recipe.teacher)
    if made_by["sha256"] != want:
        raise AssistantError(
            f"the logit cache at {cache.path} was made by teacher {made_by['source']} "
            f"(sha256 {made_by['sha256'][:12]}), "
            f"not by the recipe's teacher {recipe.teacher} ({want[:12]})",
            hint=f"rebuild it: assistant distill cache-logits --teacher {recipe.teacher} ...",
        )


def _wrap(step_module: DistillStep, recipe: Recipe, env: Env):
    """DDP or FSDP around the student when distributed; torch.compile of its transformer body when asked
    (the chunked loss, with its per-chunk recomputation, stays eager)."""
    if recipe.compile:
        step_module.student.model.compile()
    if env.world > 1 and recipe.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in step_module.student.model.layers:
            fully_shard(layer)
        fully_shard(step_module)  # the root owns embeddings, final norm and head, used in DistillStep.forward
        wrapped = step_module
    elif env.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            step_module, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    else:
        wrapped = step_module
    return wrapped


def train(recipe: Recipe, *, restart: bool = False, display_factory=None) -> TrainResult:
    """Run (or resume) the recipe; return where the student was written and its final metrics."""
    env = setup_env(recipe)
    out = Path(recipe.out)
    if restart and env.main:
        for p in [*out.glob("checkpoint-*"), *out.glob(".checkpoint-*"), out / CHECKPOINT_POINTER]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if env.world > 1:
        dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = find_checkpoint(out, recipe)
    torch.manual_seed(recipe.seed)

    corpus, train_split, cache, n_train = _open_data(recipe)
    val_split = corpus.split("validation")

    if cache is not None:
        check_cache_teacher(cache, recipe)
    val_cache = _open_val_cache(recipe, corpus, val_split)
    need_teacher = cache is None or recipe.eval_with_teacher or recipe.student.init == "teacher"
    teacher = load_teacher(recipe.teacher, device=str(env.device)) if need_teacher else None
    if teacher is not None:
        check_tokenizers(teacher, corpus, recipe)
    if teacher is not None:
        student_info = build_student(recipe.student, teacher.model)
    else:
        student_info = build_student(recipe.student, teacher_config=load_teacher_config(recipe.teacher))
    student = student_info.model.to(env.device).train()
    if cache is None and teacher is None:
        raise UsageError("no teacher and no logit cache: set teacher or logit_cache in the recipe")
    if cache is not None and not recipe.eval_with_teacher:
        teacher = None  # only needed for the init; free it

    student_info.notes += freeze_lower(student, recipe.freeze_layers, head=recipe.freeze_head)
    hidden_cache = None
    if recipe.hidden_cache:
        hidden_cache = open_hidden_cache(recipe, student, corpus, train_split, n_train, env)
        student_info.notes.append(
            f"frozen layers' outputs read from {hidden_cache.path} ({hidden_cache.n_blocks} blocks)"
        )

    step_module = DistillStep(student, recipe.loss_config(), recipe.freeze_layers)
    model = _wrap(step_module, recipe, env)
    trainable = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(recipe.beta1, recipe.beta2),
        fused=env.device.type == "cuda",
    )

    start_step, tokens_seen = 0, 0
    if ckpt is not None:
        start_step, tokens_seen = load_checkpoint(ckpt, step_module, optimizer)
    metrics = MetricsLog(out / "metrics.jsonl", start_step if ckpt is not None else None, env.main)
    params = count_parameters(student)
    if env.main:
        write_json(out / "recipe.json", recipe.to_dict())

    display = display_factory(recipe, start_step, env) if (display_factory and env.main) else None
    if display is not None:
        display.start(describe(student.config), params, student_info.notes, teacher is not None and cache is None)
    loss_cfg = recipe.loss_config()
    last_val: dict[str, float] = {}
    tokens_per_step = recipe.micro_batch * recipe.grad_accum * env.world * recipe.block_size
    started = t_last = time.perf_counter()
    tokens_last = tokens_seen
    step = start_step
    try:
        while step < recipe.max_steps:
            lr = lr_at(step, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = sample_indices(step, recipe, env, n_train)
            micro = [load_blocks(train_split, idx, recipe.block_size, env.device) for idx in batches]
            n_local = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro)
            n_global = torch.tensor(n_local, device=env.device)
            if env.world > 1:
                dist.all_reduce(n_global)
            n_global = int(n_global)
            ce_sum = div_sum = torch.zeros((), dtype=torch.float64, device=env.device)  # no host sync per micro-batch
            for m, ((inputs, labels), idx) in enumerate(zip(micro, batches)):
                if cache is not None:
                    target = load_cached_targets(cache, idx, env.device, inputs.shape[1])
                    teacher_chunk = target.__getitem__
                else:
                    with torch.autocast(env.device.type, dtype=env.autocast, enabled=env.autocast is not None):
                        teacher_chunk = dense_teacher(teacher, inputs)
                hidden_in = None
                if hidden_cache is not None:
                    hidden_in = torch.from_numpy(
                        np.ascontiguousarray(hidden_cache.batch(idx)[:, : inputs.shape[1]])
                    ).to(env.device)
                sync = m == recipe.grad_accum - 1 or env.world == 1 or recipe.fsdp
                ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
                with ctx, torch.autocast(env.device.type, dtype=env.autocast, enabled=env.autocast is not None):
                    loss, parts = model(inputs, labels, teacher_chunk, n_global, hidden_in)
                    # DDP/FSDP average gradients over ranks; the loss is already normalized globally
                    (loss * env.world).backward()
                ce_sum = ce_sum + parts["ce"].double() * n_global
                div_sum = div_sum + parts["div"].double() * n_global
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, recipe.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step

            totals = torch.stack([ce_sum, div_sum])
            if env.world > 1:
                dist.all_reduce(totals)
            ce, div = (float(x) / n_global for x in totals)
            row = {
                "step": step,
                "lr": lr,
                "ce": ce,
                "div": div,
                "loss": (1 - loss_cfg.alpha) * ce + loss_cfg.alpha * loss_cfg.temperature**2 * div,
                "grad_norm": float(grad_norm),
                "tokens": tokens_seen,
                "targets": n_global,  # positions with a loss this step (all of them on a token corpus)
            }
            if step % recipe.log_interval == 0 or step == recipe.max_steps:
                now = time.perf_counter()
                row["tokens_per_s"] = (tokens_seen - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens_seen
                metrics.write(row)
            if step % recipe.eval_interval == 0 or step == recipe.max_steps:
                last_val = validate(step_module, teacher, val_split, recipe, env, val_cache)
                metrics.write({"step": step, "tokens": tokens_seen, **last_val})
            if display is not None:
                display.update(step, row, last_val)
            if step % recipe.ckpt_interval == 0 or step == recipe.max_steps:
                save_checkpoint(out, step, step_module, optimizer, recipe, env, tokens_seen)
            out_of_time = recipe.time_limit_s is not None and time.perf_counter() - started > recipe.time_limit_s
            if env.world > 1 and recipe.time_limit_s is not None:  # every rank must stop at the same step
                flag = torch.tensor(int(out_of_time), device=env.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag)
            if step < recipe.max_steps and (
                out_of_time or (recipe.stop_after is not None and step >= recipe.stop_after)
            ):
                if step % recipe.ckpt_interval:
                    save_checkpoint(out, step, step_module, optimizer, recipe, env, tokens_seen)
                return TrainResult(out, out / "student", step, tokens_seen, last_val, params, stopped_early=True)
    except torch.OutOfMemoryError:
        raise AssistantError(
            f"out of memory at step {step} with micro_batch {recipe.micro_batch} × block_size {recipe.block_size}: "
            "lower micro_batch (raise grad_accum to keep the batch) or chunk_size; the last checkpoint is intact"
        ) from None
    finally:
        if display is not None:
            display.stop()

    final = last_val or validate(step_module, teacher, val_split, recipe, env, val_cache)
    student_dir = out / "student"
    model_state = None
    if recipe.fsdp and env.world > 1:  # gather the shards; save_pretrained wants the student's own keys
        full, _ = _state_dicts(step_module, optimizer)
        model_state = {k.removeprefix("student."): v for k, v in full.items()}
    if env.main:
        provenance = {
            "teacher": {
                "source": teacher.source if teacher else recipe.teacher,
                # offline, the cache's teacher: check_cache_teacher proved it is the recipe's
                "sha256": teacher.sha256 if teacher else cache.manifest["teacher"]["sha256"] if cache else None,
            },
            "corpus": {"path": recipe.corpus, "manifest_sha256": corpus.manifest_sha256},
            "logit_cache": {"path": recipe.logit_cache, "manifest_sha256": cache.manifest_sha256}
            if cache is not None
            else None,
            "val_logit_cache": {"path": recipe.val_logit_cache, "manifest_sha256": val_cache.manifest_sha256}
            if val_cache is not None
            else None,
            "validation_teacher": "online" if teacher is not None else "cache" if val_cache is not None else None,
            "recipe": recipe.to_dict(),
            "recipe_hash": recipe.hash(),
            "student": {
                "parameters": params,
                "config": describe(student.config),
                "kept_layers": student_info.kept_layers,
                "notes": student_info.notes,
            },
            "steps": step,
            "tokens": tokens_seen,
            "world_size": env.world,
            "final_metrics": final,
            "torch": torch.__version__,
        }
        save_student(
            student,
            student_dir,
            teacher.tokenizer_spec if teacher else _cache_tokenizer(cache),
            provenance,
            model_state,
        )
    if env.world > 1:
        dist.barrier()
    return TrainResult(out, student_dir, step, tokens_seen, final, params)


def _cache_tokenizer(cache) -> str:
    teacher = cache.manifest["teacher"]
    return teacher.get("tokenizer_spec") or teacher["source"]


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def save_student(student, student_dir: Path, tokenizer_spec: str, provenance: dict, state: dict | None = None) -> None:
    """An HF directory (config, safetensors, tokenizer files, provenance.json), renamed into place."""
    from distill.tokenizer import save_tokenizer_files

    tmp = student_dir.with_name(f".{student_dir.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student.save_pretrained(tmp, state_dict=state)
    save_tokenizer_files(tokenizer_spec, tmp)
    write_json(tmp / "provenance.json", provenance)
    old = student_dir.with_name(f".{student_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if student_dir.exists():
        student_dir.rename(old)
    tmp.rename(student_dir)
    shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    """`python -m distill.train RECIPE.toml [key=value ...]`: the torchrun entry point."""
    import sys

    from distill.recipe import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(Path(sys.argv[1])), sys.argv[2:])
    result = train(recipe)
    if result and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"student": str(result.student_dir), "steps": result.steps, **result.final}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
