"""The relations of `assistant fidelity` by name, and how to choose and apply them.

Everything callers need is importable from here: RELATIONS, default_relations, parse_relations,
apply_relation, and the NotApplicable / Transformed types.
"""

from __future__ import annotations

import random
from typing import Iterable

from assistant.errors import UsageError
from assistant.fidelity.relations.dead_code import dead_code
from assistant.fidelity.relations.documentation import remove_comments, remove_docstrings, reword_docs
from assistant.fidelity.relations.layout import formatting
from assistant.fidelity.relations.renaming import rename_neutral, rename_synonyms
from assistant.fidelity.relations.rewrites import loop_comprehension, reorder_statements, swap_if_else
from assistant.fidelity.relations.source import NotApplicable, Relation, Transformed

__all__ = [
    "RELATIONS",
    "NotApplicable",
    "Relation",
    "Transformed",
    "apply_relation",
    "default_relations",
    "parse_relations",
]


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "rename_synonyms",
            "identifiers",
            "parameters, locals and functions renamed to synonyms (callers updated)",
            rename_synonyms,
        ),
        Relation(
            "rename_neutral",
            "identifiers",
            "parameters, locals and functions renamed to arg0/var0/func0",
            rename_neutral,
        ),
        Relation("dead_code", "dead code", "a never-executed statement at the top of every function body", dead_code),
        Relation(
            "reword_docs", "documentation", "docstring and comment prose reworded (doctest examples kept)", reword_docs
        ),
        Relation("remove_comments", "documentation", "comments deleted", remove_comments),
        Relation(
            "remove_docstrings",
            "documentation",
            "docstrings deleted (removes a task's specification)",
            remove_docstrings,
            default=False,
        ),
        Relation("formatting", "layout", "another indent width, no space after commas", formatting),
        Relation("loop_comprehension", "rewrite", "append-loops <-> list comprehensions", loop_comprehension),
        Relation("swap_if_else", "rewrite", "if/else branches swapped under the negated condition", swap_if_else),
        Relation(
            "reorder_statements",
            "rewrite",
            "independent assignments and keyword arguments reordered",
            reorder_statements,
        ),
    )
}


def default_relations() -> list[str]:
    return [r.name for r in RELATIONS.values() if r.default]


def parse_relations(spec: str | None) -> list[str]:
    """``"rename_synonyms,dead_code"`` -> names; ``default``/empty -> the default set; ``all`` -> every one."""
    if spec is None or not spec.strip() or spec.strip() == "default":
        return default_relations()
    if spec.strip() == "all":
        return list(RELATIONS)
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in RELATIONS]
    if unknown:
        raise UsageError(
            f"unknown relation {', '.join(map(repr, unknown))}",
            hint=f"choose from {', '.join(RELATIONS)} (or 'all', 'default')",
        )
    return names


def apply_relation(name: str, source: str, seed: int = 0, keep: Iterable[str] = ()) -> Transformed:
    """Apply one relation deterministically (the seed picks synonyms and dead-code forms)."""
    rng = random.Random(f"{name}:{seed}")
    return RELATIONS[name].apply(source, rng, frozenset(keep))
