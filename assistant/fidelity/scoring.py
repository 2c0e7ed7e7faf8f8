"""Teacher and student next-token distributions along the teacher's greedy output.

Both models read the same token sequence (the teacher's prompt and its greedy tokens); at each
position we compare their full next-token distributions: Jensen-Shannon divergence, whether the
student's top token is the teacher's, whether the teacher's confident tokens stay confident in
the student, and how the student's probability of the teacher's token tracks the teacher's own.

Memory: one chunk of logit rows per model at a time (``CHUNK`` x vocab floats), never the whole
sequence. We decode through the Llama's own context with a batch that asks for every row's
logits, which is what ``logits_all=True`` would store for the whole context.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Generator, Iterator

if TYPE_CHECKING:
    import numpy as np

from assistant.runtime.engine import Engine

CHUNK = 128
BINS = 10
LN2 = math.log(2.0)


@dataclass(frozen=True)
class VocabCheck:
    shared: bool
    detail: str


def vocab_fingerprint(engine: Engine) -> tuple[int, str]:
    """(vocab size, sha256 over every token's text): equal fingerprints mean the same token ids."""
    model = engine.llm._model
    n = engine.llm.n_vocab()
    h = hashlib.sha256()
    for i in range(n):
        h.update(model.token_get_text(i).encode("utf-8", errors="surrogatepass"))
        h.update(b"\0")
    return n, h.hexdigest()


def compare_vocab(teacher: Engine, student: Engine) -> VocabCheck:
    if teacher is student:
        return VocabCheck(True, "one model")
    (nt, ht), (ns, hs) = vocab_fingerprint(teacher), vocab_fingerprint(student)
    if nt != ns:
        return VocabCheck(False, f"vocabularies differ in size ({nt} vs {ns} tokens)")
    if ht != hs:
        return VocabCheck(False, f"vocabularies have the same size ({nt}) but different tokens")
    return VocabCheck(True, f"same {nt}-token vocabulary")


@contextlib.contextmanager
def recording(engine: Engine) -> Iterator[list[int]]:
    """Record the token ids ``Engine.generate`` samples (it has no token hook of its own)."""
    llm = engine.llm
    tokens: list[int] = []
    original = llm.generate

    def generate(*args, **kwargs):
        for token in original(*args, **kwargs):
            tokens.append(int(token))
            yield token

    llm.generate = generate
    try:
        yield tokens
    finally:
        del llm.generate  # the class's method shows through again


def _logit_rows(engine: Engine, prefix: list[int], continuation: list[int]) -> Generator[np.ndarray, None, None]:
    """Chunks of logit rows: row j predicts ``continuation[j]`` after ``prefix + continuation[:j]``."""
    import numpy as np

    llm = engine.llm
    head = prefix[:-1]  # no logits needed before the first predicted position
    keep = 0  # the prompt is usually still in the KV cache from the generation: reuse it
    for a, b in zip(llm.input_ids[: llm.n_tokens], head):
        if a != b:
            break
        keep += 1
    llm._ctx.kv_cache_seq_rm(-1, keep, -1)
    llm.n_tokens = keep
    if len(head) > keep:
        llm.eval(head[keep:])
    seq = prefix[-1:] + continuation[:-1]
    n_vocab = llm.n_vocab()
    try:
        for i in range(0, len(seq), CHUNK):
            batch = seq[i : i + CHUNK]
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past : n_past + len(batch)] = batch
            llm.n_tokens += len(batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch) * n_vocab,))
            yield rows.reshape(len(batch), n_vocab).copy()
    finally:
        llm._requires_eval = True  # the next generate must not sample from these logits


@dataclass
class DistStats:
    """Per-position comparisons summed over positions (so they add up across variants)."""

    positions: int = 0
    jsd_sum: float = 0.0  # bits
    top1_agree: int = 0  # student's argmax is the teacher's token
    hc_positions: int = 0  # teacher's probability of its token >= the confidence threshold
    hc_kept: int = 0  # ... and the student's top token is it, with probability >= the threshold
    bin_n: list[int] = field(default_factory=lambda: [0] * BINS)  # binned by the teacher's probability
    bin_teacher: list[float] = field(default_factory=lambda: [0.0] * BINS)
    bin_student: list[float] = field(default_factory=lambda: [0.0] * BINS)

    def add(self, other: DistStats) -> DistStats:
        return DistStats(
            self.positions + other.positions,
            self.jsd_sum + other.jsd_sum,
            self.top1_agree + other.top1_agree,
            self.hc_positions + other.hc_positions,
            self.hc_kept + other.hc_kept,
            [a + b for a, b in zip(self.bin_n, other.bin_n)],
            [a + b for a, b in zip(self.bin_teacher, other.bin_teacher)],
            [a + b for a, b in zip(self.bin_student, other.bin_student)],
        )

    @property
    def jsd(self) -> float | None:
        return self.jsd_sum / self.positions if self.positions else None

    @property
    def top1(self) -> float | None:
        return self.top1_agree / self.positions if self.positions else None

    @property
    def hcp(self) -> float | None:
        """High-confidence preservation: share of the teacher's confident tokens the student keeps."""
        return self.hc_kept / self.hc_positions if self.hc_positions else None

    @property
    def cae(self) -> float | None:
        """Calibration alignment error: bin-weighted |teacher's confidence - student's probability|
        of the teacher's token (0: the student is exactly as sure as the teacher, bin by bin)."""
        if not self.positions:
            return None
        return sum(abs(t - s) for t, s in zip(self.bin_teacher, self.bin_student)) / self.positions

    def curve(self) -> list[dict]:
        """Per confidence bin: mean teacher probability and mean student probability of its token."""
        return [
            {"bin": i, "n": n, "teacher": t / n if n else None, "student": s / n if n else None}
            for i, (n, t, s) in enumerate(zip(self.bin_n, self.bin_teacher, self.bin_student))
        ]

    def to_dict(self) -> dict:
        return {**asdict(self), "jsd": self.jsd, "top1": self.top1, "hcp": self.hcp, "cae": self.cae}


def chunk_stats(teacher_logits, student_logits, confidence: float) -> DistStats:
    """Compare two chunks of float32 logit rows, position by position."""
    import numpy as np

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)  # float32 throughout; sums in float64
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    same = teacher_logits is student_logits
    lt = log_softmax(teacher_logits)
    ls = lt if same else log_softmax(student_logits)
    pt = np.exp(lt)
    ps = pt if same else np.exp(ls)
    if same:
        jsd = np.zeros(len(lt))
    else:
        lm = np.logaddexp(lt, ls) - np.float32(LN2)
        jsd = 0.5 * (pt * (lt - lm)).sum(axis=1, dtype=np.float64) + 0.5 * (ps * (ls - lm)).sum(
            axis=1, dtype=np.float64
        )
        jsd = np.clip(jsd / LN2, 0.0, 1.0)
    # The teacher's prediction at each position is its own argmax in this same pass: batched
    # decoding can break near-ties differently from the token-by-token generation that chose
    # ``tokens``, and a model compared with itself must agree everywhere.
    y = lt.argmax(axis=1)
    rows = np.arange(len(y))
    pt_y, ps_y = pt[rows, y].astype(np.float64), ps[rows, y].astype(np.float64)
    agree = ls.argmax(axis=1) == y
    confident = pt_y >= confidence
    kept = confident & agree & (ps_y >= confidence)
    bins = np.minimum((pt_y * BINS).astype(int), BINS - 1)
    stats = DistStats(
        positions=len(y),
        jsd_sum=float(jsd.sum()),
        top1_agree=int(agree.sum()),
        hc_positions=int(confident.sum()),
        hc_kept=int(kept.sum()),
    )
    for b in range(BINS):
        sel = bins == b
        stats.bin_n[b] = int(sel.sum())
        stats.bin_teacher[b] = float(pt_y[sel].sum())
        stats.bin_student[b] = float(ps_y[sel].sum())
    return stats


def score_pair(
    teacher: Engine, student: Engine, prefix: list[int], continuation: list[int], confidence: float
) -> DistStats:
    """Compare the two models at every position of ``continuation`` after ``prefix``.

    The same engine for both (a model against itself) is read once and compared with itself.
    """
    room = min(teacher.n_ctx, student.n_ctx) - len(prefix)
    continuation = continuation[: max(0, room)]
    if not continuation or not prefix:
        return DistStats()
    total = DistStats()
    t_rows = _logit_rows(teacher, prefix, continuation)
    s_rows = t_rows if student is teacher else _logit_rows(student, prefix, continuation)
    try:
        for t in t_rows:
            s = t if student is teacher else next(s_rows)
            total = total.add(chunk_stats(t, s, confidence))
    finally:
        t_rows.close()
        s_rows.close()
    return total
