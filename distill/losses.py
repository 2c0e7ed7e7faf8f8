"""Distillation losses as small pure functions.

The total is the seed study's `(1-α)·CE + α·T²·D(p_T^teacher, p_T^student)` where D is forward
KL (the seed's choice), reverse KL or generalized JSD(β). Everything is computed in float32 and
normalized by the number of real (unmasked) target tokens.

Two kinds of teacher target exist: dense logits (an online teacher) and a sparse top-k cache
(offline). A sparse target is compared on k+1 buckets (the top-k tokens and "everything else"),
which is the exact KL between the coarse-grained distributions at T=1 (a lower bound on the full
KL); at T≠1 the "else" bucket is tempered as if it were one token, an approximation.

`chunked_distill_loss` never holds full-vocab float32 logits of more than `chunk_size` positions:
it takes hidden states and the output-head weights and recomputes each chunk's logits in the
backward pass (activation checkpointing per chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.5  # weight of the distillation term; 0 = plain CE
    temperature: float = 1.0
    divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    beta: float = 0.5  # JSD mixture weight; 0 = forward KL, 1 = reverse KL (TRL's convention)
    chunk_size: int | None = 1024  # positions per chunk; None = no chunking

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class SparseTarget:
    """A cached teacher target: top-k log-probabilities at T=1, their ids and the leftover mass."""

    logprobs: torch.Tensor  # [N, k] float
    ids: torch.Tensor  # [N, k] int64
    rest: torch.Tensor  # [N] float, 1 - sum(exp(logprobs)) clamped to >= 0

    def __getitem__(self, s: slice | torch.Tensor) -> SparseTarget:
        return SparseTarget(self.logprobs[s], self.ids[s], self.rest[s])


@dataclass
class LossParts:
    """Sums over real tokens (not yet normalized), so chunks and ranks add up exactly."""

    ce_sum: torch.Tensor
    div_sum: torch.Tensor
    n_tokens: int


# --- distributions -------------------------------------------------------------------------


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float32 log-softmax: bf16 log-softmax gives negative JSD and NaN (field notes)."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def shared_vocab(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the shared vocabulary prefix of both (e.g. Code Llama 32016 vs TinyLlama 32000).

    Dropping columns before the softmax renormalizes over the shared tokens; zero-padding the
    smaller one would be wrong (a zero logit is not -inf).
    """
    v = min(teacher_logits.shape[-1], student_logits.shape[-1])
    return teacher_logits[..., :v], student_logits[..., :v]


def log_one_minus_exp_sum(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - Σ exp(logp)) over the last dim, clamped away from log(0)."""
    mass = torch.exp(torch.logsumexp(logp, dim=-1)).clamp(max=1.0 - 1e-6)
    return torch.log1p(-mass)


def sparse_teacher_log_probs(target: SparseTarget, temperature: float = 1.0) -> torch.Tensor:
    """[N, k+1] bucket log-probs of the teacher at temperature T (exact at T=1)."""
    rest = torch.log(target.rest.float().clamp(min=1e-12)).unsqueeze(-1)
    buckets = torch.cat([target.logprobs.float(), rest], dim=-1)
    if temperature == 1.0:
        return buckets - torch.logsumexp(buckets, dim=-1, keepdim=True)
    return F.log_softmax(buckets / temperature, dim=-1)


def bucket_student_log_probs(student_logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[N, k+1]: the student's log-probs at the teacher's top-k ids plus the 'else' bucket."""
    top = student_logp.gather(-1, ids)
    return torch.cat([top, log_one_minus_exp_sum(top).unsqueeze(-1)], dim=-1)


# --- divergences (per position, over the last dim) -----------------------------------------


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher ‖ p_student): mass-covering, the seed's convention."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


def reverse_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_student ‖ p_teacher): mode-seeking."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)


def generalized_jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """β·KL(p_T ‖ m) + (1-β)·KL(p_S ‖ m), m = β·p_T + (1-β)·p_S; β=0/1 are forward/reverse KL as in TRL."""
    if beta == 0.0:
        return forward_kl(teacher_logp, student_logp)
    if beta == 1.0:
        return reverse_kl(teacher_logp, student_logp)
    mixture = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0)
    return beta * forward_kl(teacher_logp, mixture) + (1.0 - beta) * forward_kl(student_logp, mixture)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, config: LossConfig) -> torch.Tensor:
    if config.divergence == "forward_kl":
        return forward_kl(teacher_logp, student_logp)
    if config.divergence == "reverse_kl":
        return reverse_kl(teacher_logp, student_logp)
    return generalized_jsd(teacher_logp, student_logp, config.beta)


# --- the loss on one chunk of positions ----------------------------------------------------


def loss_parts(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | SparseTarget | None,
    labels: torch.Tensor,
    config: LossConfig,
) -> LossParts:
    """CE and divergence sums over the real positions of a flat chunk ([N, V] logits, [N] labels)."""
    mask = labels != IGNORE_INDEX
    n = int(mask.sum())
    zero = student_logits.sum() * 0.0  # keeps the graph connected when a chunk is all padding
    if n == 0:
        return LossParts(zero.float(), zero.float(), 0)
    s_logits = student_logits[mask]
    ce_sum = F.cross_entropy(s_logits.float(), labels[mask], reduction="sum")
    if config.alpha == 0.0 or teacher is None:
        return LossParts(ce_sum, zero.float(), n)
    if isinstance(teacher, SparseTarget):
        target = teacher[mask]
        t_logp = sparse_teacher_log_probs(target, config.temperature)
        s_logp = bucket_student_log_probs(log_probs(s_logits, config.temperature), target.ids)
    else:
        t_logits, s_vocab = shared_vocab(teacher[mask], s_logits)
        t_logp = log_probs(t_logits, config.temperature)
        s_logp = log_probs(s_vocab, config.temperature)
    return LossParts(ce_sum, divergence(t_logp, s_logp, config).sum(), n)


def combine(parts: LossParts, config: LossConfig, n_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """(1-α)·CE + α·T²·D, normalized per real token (n_tokens may be the global count)."""
    n = max(n_tokens if n_tokens is not None else parts.n_tokens, 1)
    ce = parts.ce_sum / n
    div = parts.div_sum / n
    t2 = config.temperature**2
    total = (1.0 - config.alpha) * ce + config.alpha * t2 * div
    return total, {"ce": ce.detach(), "div": div.detach()}


def distill_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | SparseTarget | None,
    labels: torch.Tensor,
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict]:
    """Unchunked reference: logits [..., V], labels [...]; the form the closed-form tests use."""
    v = student_logits.shape[-1]
    flat_t = teacher
    if isinstance(teacher, torch.Tensor):
        flat_t = teacher.reshape(-1, teacher.shape[-1])
    elif isinstance(teacher, SparseTarget):
        k = teacher.ids.shape[-1]
        flat_t = SparseTarget(teacher.logprobs.reshape(-1, k), teacher.ids.reshape(-1, k), teacher.rest.reshape(-1))
    parts = loss_parts(student_logits.reshape(-1, v), flat_t, labels.reshape(-1), config)
    return combine(parts, config)


# --- chunked over the sequence, from hidden states -----------------------------------------

TeacherChunk = Callable[[slice], "torch.Tensor | SparseTarget | None"]


def chunked_distill_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    teacher_chunk: TeacherChunk,
    labels: torch.Tensor,
    config: LossConfig,
    n_tokens: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """The same loss as `distill_loss(hidden @ head_weight.T, ...)` without full logits in memory.

    hidden: [N, H] student final hidden states (after the final norm); head_weight: [V, H];
    teacher_chunk(slice) returns the teacher target for those flat positions (dense logits are
    computed there from the teacher's own hidden states, under no_grad). Each chunk's logits are
    recomputed during backward, so at most one chunk of full-vocab logits per model is alive.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    size = config.chunk_size or hidden.shape[0]
    ce_sum = div_sum = None
    count = 0

    for start in range(0, hidden.shape[0], size):
        s = slice(start, min(start + size, hidden.shape[0]))
        chunk_labels = labels[s]
        if not bool((chunk_labels != IGNORE_INDEX).any()):
            continue

        def run(h: torch.Tensor, w: torch.Tensor, s=s, chunk_labels=chunk_labels) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                target = teacher_chunk(s) if config.alpha > 0 else None
            parts = loss_parts(h @ w.t(), target, chunk_labels, config)
            return parts.ce_sum, parts.div_sum

        if config.chunk_size is not None and torch.is_grad_enabled():
            ce, div = checkpoint(run, hidden[s], head_weight, use_reentrant=False)
        else:
            ce, div = run(hidden[s], head_weight)
        ce_sum = ce if ce_sum is None else ce_sum + ce
        div_sum = div if div_sum is None else div_sum + div
        count += int((chunk_labels != IGNORE_INDEX).sum())

    if ce_sum is None:
        zero = (hidden.sum() + head_weight.sum()) * 0.0
        ce_sum = div_sum = zero.float()
    return combine(LossParts(ce_sum, div_sum, count), config, n_tokens)
