"""`assistant fidelity`: how deeply a student mimics its teacher, by metamorphic testing.

Accuracy alone hides how far a student departs from its teacher (MetaCompress, arXiv
2511.05476). For every item we show both models the original input and its image under each
behaviour-preserving relation (assistant.fidelity.relations), greedy-decode both, and measure:

- prediction agreement: student vs teacher on the same input, and each model against its own
  output on the original (exact match after normalization; for code also execution
  equivalence: the same results on every call of the hidden tests, run in the sandbox);
- distribution similarity along the teacher's greedy output (assistant.fidelity.scoring):
  Jensen-Shannon divergence, top-1 agreement, high-confidence preservation, calibration
  alignment, on original and transformed inputs;
- robustness: each model's pass-rate drop and flip rate under a relation, and the
  student/teacher ratios of those (the paper's "285% larger drop" is a ratio of 3.85).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from assistant.errors import UsageError
from assistant.fidelity.relations.registry import RELATIONS, default_relations
from assistant.fidelity.scoring import DistStats, VocabCheck, compare_vocab, recording, score_pair
from assistant.fidelity.tasks import ORIGINAL, Judgement, Skip, Task, Variant
from assistant.runtime.engine import ContextError, Engine, Sampling
from assistant.runtime.prompts import Request

TASKS = ("completion", "asserts")


@dataclass(frozen=True)
class FidelityConfig:
    task: str = "completion"
    relations: tuple[str, ...] = field(default_factory=lambda: tuple(default_relations()))
    limit: int | None = None
    max_tokens: int = 384
    prompt_style: str | None = None  # None: the teacher's own
    seed: int = 0  # picks synonyms and dead-code forms; decoding is greedy
    confidence: float = 0.9  # the "high confidence" threshold on the teacher's top probability
    timeout_s: float = 10.0  # per sandboxed program
    dataset: str | None = None

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"--task must be completion or asserts, not {self.task!r}")
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown or not self.relations:
            raise UsageError(f"unknown or no relations {unknown}", hint=f"choose from {', '.join(RELATIONS)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        if not 0.0 < self.confidence < 1.0:
            raise UsageError(f"--confidence must be between 0 and 1 (exclusive), not {self.confidence}")
        if self.prompt_style not in (None, "chat", "completion"):
            raise UsageError(f"--prompt-style must be chat or completion, not {self.prompt_style!r}")


@dataclass(frozen=True)
class Output:
    """One model's answer to one variant."""

    text: str
    generated_tokens: int
    finish_reason: str
    judgement: Judgement


@dataclass(frozen=True)
class VariantResult:
    variant: Variant
    teacher: Output
    student: Output
    dist: DistStats | None  # None when the vocabularies differ

    def row(self) -> dict:
        def side(o: Output) -> dict:
            j = o.judgement
            return {
                "passed": j.passed,
                "normalized": j.normalized,
                "signature": j.signature,
                "issue": j.issue or None,
                "generated_tokens": o.generated_tokens,
                "finish_reason": o.finish_reason,
                "text": o.text,
            }

        return {
            "item": self.variant.item_id,
            "relation": self.variant.relation,
            "renames": dict(self.variant.renames),
            "verified": self.variant.verified,
            "input": self.variant.text,
            "teacher": side(self.teacher),
            "student": side(self.student),
            "distribution": self.dist.to_dict() if self.dist else None,
        }


# -- aggregation (pure) -----------------------------------------------------------------------------


def _mean(bits: Sequence[bool]) -> float | None:
    return sum(bits) / len(bits) if bits else None


def _ratio(student: float | None, teacher: float | None) -> float | None:
    """student / teacher, or None when the teacher's figure is not positive (no ratio to take)."""
    if student is None or teacher is None or teacher <= 0:
        return None
    return student / teacher


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _pool(stats: Sequence[DistStats | None]) -> DistStats | None:
    present = [s for s in stats if s is not None]
    if not present:
        return None
    total = DistStats()
    for s in present:
        total = total.add(s)
    return total


@dataclass
class ModelSide:
    """One model under one relation, on the items the relation applied to."""

    pass_original: float | None
    pass_transformed: float | None
    keeps_exact: float | None  # its transformed output equals its original output (normalized)
    keeps_exec: float | None  # ... or behaves the same on the hidden tests (code only)
    drop: float | None  # pass_original - pass_transformed
    flip: float | None  # 1 - keeps (execution when it applies, else exact)


@dataclass
class RelationSummary:
    relation: str
    n: int  # items with both the original and this relation's variant
    skipped: dict[str, int]
    agree_exact_original: float | None  # student == teacher on the original inputs
    agree_exact_transformed: float | None
    agree_exec_original: float | None
    agree_exec_transformed: float | None
    teacher: ModelSide
    student: ModelSide
    drop_ratio: float | None  # student's pass-rate drop / teacher's
    flip_ratio: float | None  # student's flip rate / teacher's
    agreement_drop: float | None  # student-teacher agreement, original minus transformed
    dist_original: DistStats | None
    dist_transformed: DistStats | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dist_original"] = self.dist_original.to_dict() if self.dist_original else None
        d["dist_transformed"] = self.dist_transformed.to_dict() if self.dist_transformed else None
        return d


def _same_exec(a: Judgement, b: Judgement) -> bool:
    return a.signature is not None and a.signature == b.signature


def _side(pairs: list[tuple[VariantResult, VariantResult]], which: str, executes: bool) -> ModelSide:
    orig = [getattr(o, which).judgement for o, _ in pairs]
    trans = [getattr(t, which).judgement for _, t in pairs]
    p0, p1 = _mean([j.passed for j in orig]), _mean([j.passed for j in trans])
    keeps_exact = _mean([a.normalized == b.normalized for a, b in zip(orig, trans)])
    keeps_exec = _mean([_same_exec(a, b) for a, b in zip(orig, trans)]) if executes else None
    keeps = keeps_exec if executes else keeps_exact
    return ModelSide(p0, p1, keeps_exact, keeps_exec, _diff(p0, p1), None if keeps is None else 1.0 - keeps)


def summarize_pairs(
    relation: str, pairs: list[tuple[VariantResult, VariantResult]], skipped: dict[str, int], executes: bool
) -> RelationSummary:
    """Metrics over (original, transformed) result pairs of the same items."""
    teacher, student = _side(pairs, "teacher", executes), _side(pairs, "student", executes)
    agree = lambda rs: _mean([r.teacher.judgement.normalized == r.student.judgement.normalized for r in rs])
    agree_exec = lambda rs: (
        _mean([_same_exec(r.teacher.judgement, r.student.judgement) for r in rs]) if executes else None
    )
    originals, transformed = [o for o, _ in pairs], [t for _, t in pairs]
    a0 = agree_exec(originals) if executes else agree(originals)
    a1 = agree_exec(transformed) if executes else agree(transformed)
    return RelationSummary(
        relation=relation,
        n=len(pairs),
        skipped=dict(skipped),
        agree_exact_original=agree(originals),
        agree_exact_transformed=agree(transformed),
        agree_exec_original=agree_exec(originals),
        agree_exec_transformed=agree_exec(transformed),
        teacher=teacher,
        student=student,
        drop_ratio=_ratio(student.drop, teacher.drop),
        flip_ratio=_ratio(student.flip, teacher.flip),
        agreement_drop=_diff(a0, a1),
        dist_original=_pool([o.dist for o in originals]),
        dist_transformed=_pool([t.dist for t in transformed]),
    )


def summarize(
    results: Sequence[VariantResult], skips: Sequence[Skip], relations: Sequence[str], executes: bool
) -> tuple[RelationSummary, list[RelationSummary], RelationSummary]:
    """(the originals alone, one summary per relation, all relations pooled)."""
    originals = {r.variant.item_id: r for r in results if r.variant.relation == ORIGINAL}
    per_relation, every_pair = [], []
    all_skips: dict[str, int] = {}
    for rel in relations:
        pairs = [
            (originals[r.variant.item_id], r)
            for r in results
            if r.variant.relation == rel and r.variant.item_id in originals
        ]
        skipped: dict[str, int] = {}
        for s in skips:
            if s.relation == rel:
                skipped[s.reason] = skipped.get(s.reason, 0) + 1
                all_skips[s.reason] = all_skips.get(s.reason, 0) + 1
        per_relation.append(summarize_pairs(rel, pairs, skipped, executes))
        every_pair += pairs
    base = [(o, o) for o in originals.values()]
    original = summarize_pairs(ORIGINAL, base, {}, executes)
    overall = summarize_pairs("overall", every_pair, all_skips, executes)
    return original, per_relation, overall


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class FidelityReport:
    teacher: dict
    student: dict
    task: str
    config: dict
    vocab: VocabCheck
    prompt_style: str
    items: int
    results: list[VariantResult]
    skips: list[Skip]
    original: RelationSummary
    relations: list[RelationSummary]
    overall: RelationSummary
    executes: bool

    def to_dict(self) -> dict:
        return {
            "teacher": self.teacher,
            "student": self.student,
            "task": self.task,
            "prompt_style": self.prompt_style,
            "config": self.config,
            "vocab": asdict(self.vocab),
            "items": self.items,
            "variants": len(self.results),
            "execution_equivalence": self.executes,
            "original": self.original.to_dict(),
            "relations": [r.to_dict() for r in self.relations],
            "overall": self.overall.to_dict(),
            "skipped": [asdict(s) for s in self.skips],
            "rows": [r.row() for r in self.results],
        }


def model_info(engine: Engine) -> dict:
    m = engine.model
    return {"name": m.name, "path": str(m.path), "sha256": m.sha256, "quantization": m.gguf.quantization}


Progress = Callable[[Variant, int, int], None]


def _generate(engine: Engine, task: Task, variant: Variant, style: str, cfg: FidelityConfig) -> tuple:
    prompt = engine.render(Request(task.request(variant, style)), style=style, system=None)
    sampling = Sampling(
        max_tokens=cfg.max_tokens, temperature=0.0, seed=cfg.seed, stop=task.stops(style) + engine.model.stop
    )
    engine.llm.reset()  # always from a cold cache: the same input gives the same logits every time
    with recording(engine) as tokens:
        generation = engine.generate(prompt, sampling)
    return generation, list(tokens), prompt


def run_fidelity(
    teacher: Engine,
    student: Engine,
    task: Task,
    cfg: FidelityConfig,
    *,
    on_variant: Progress | None = None,
    variants_ready: Callable[[int], None] | None = None,
) -> FidelityReport:
    """Generate, score and judge every variant with both models; aggregate per relation."""
    cfg.validate()
    vocab = compare_vocab(teacher, student)
    style = cfg.prompt_style or teacher.model.prompt_style
    variants, skips = task.variants(cfg.relations, cfg.seed)
    if variants_ready:
        variants_ready(len(variants))
    done: list[tuple[Variant, tuple[str, int, str], tuple[str, int, str], DistStats | None]] = []
    failed_items: set[str] = set()
    for i, v in enumerate(variants):
        if v.item_id in failed_items:
            skips.append(Skip(v.item_id, v.relation, "original does not fit the context"))
            continue
        try:
            t_gen, t_tokens, t_prompt = _generate(teacher, task, v, style, cfg)
            s_gen, _, _ = _generate(student, task, v, style, cfg)
        except ContextError:
            if v.relation == ORIGINAL:
                failed_items.add(v.item_id)
            skips.append(Skip(v.item_id, v.relation, "does not fit the context"))
            continue
        dist = (
            score_pair(teacher, student, teacher.tokenize(t_prompt), t_tokens, cfg.confidence) if vocab.shared else None
        )
        done.append(
            (
                v,
                (t_gen.text, t_gen.timings.generated_tokens, t_gen.finish_reason),
                (s_gen.text, s_gen.timings.generated_tokens, s_gen.finish_reason),
                dist,
            )
        )
        if on_variant:
            on_variant(v, i + 1, len(variants))
    kept = [d[0] for d in done]
    judged_t = task.judge(kept, [d[1][0] for d in done], style)
    judged_s = task.judge(kept, [d[2][0] for d in done], style)
    results = [
        VariantResult(v, Output(*t, jt), Output(*s, js), dist)
        for (v, t, s, dist), jt, js in zip(done, judged_t, judged_s)
    ]
    original, per_relation, overall = summarize(results, skips, cfg.relations, task.executes)
    return FidelityReport(
        teacher=model_info(teacher),
        student=model_info(student),
        task=task.name,
        config=asdict(cfg),
        vocab=vocab,
        prompt_style=style,
        items=len({v.item_id for v in variants}),
        results=results,
        skips=skips,
        original=original,
        relations=per_relation,
        overall=overall,
        executes=task.executes,
    )
