"""The dead-code relation: a statement that never runs at the top of every function body."""

from __future__ import annotations

import ast
import random
import re
import tokenize

from assistant.fidelity.relations.source import (
    RESERVED,
    NotApplicable,
    SourceText,
    Transformed,
    checked,
    dump_tree,
    end_of,
    has_docstring,
    identifiers_in,
    parse_source,
    source_tokens,
)

_DEAD = (
    "if False:\n{i}{u}{v} = 0",
    "while False:\n{i}{u}pass",
    "for {v} in ():\n{i}{u}pass",
    "{v} = None",
    "if 0 > 1:\n{i}{u}{v} = ()",
)


def _body_start(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, ast.stmt | None]:
    """Index of the first statement after the docstring, and the docstring statement (if any)."""
    doc = fn.body[0] if has_docstring(fn) else None
    return (1 if doc is not None else 0), doc


def _indent_unit(source: str) -> str:
    for tok in source_tokens(source):
        if tok.type == tokenize.INDENT:
            return tok.string
    return "    "


def dead_code(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Insert a statement that never runs (or stores into an unused name) at the top of every function body."""
    tree = parse_source(source)
    text = SourceText(source)
    taken = identifiers_in(source) | RESERVED
    unit = _indent_unit(source)
    inserted = 0
    counter = 0
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        i, doc = _body_start(fn)
        anchor = fn.body[i] if i < len(fn.body) else None
        if anchor is not None:
            if not text.owns_lines(anchor) or anchor.lineno == fn.lineno:
                continue
            indent = text.indent_of(anchor.lineno)
            if indent != text.lines[anchor.lineno - 1][: len(indent)] or not indent:
                continue
            at = text.starts[anchor.lineno - 1]
            if isinstance(anchor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and anchor.decorator_list:
                at = text.starts[anchor.decorator_list[0].lineno - 1]
        elif doc is not None and text.owns_lines(doc) and doc.lineno != fn.lineno:
            indent = text.indent_of(doc.lineno)
            end_lineno = end_of(doc)[0]
            if end_lineno >= len(text.lines):
                continue
            at = text.starts[end_lineno]
        else:
            continue
        while True:
            name = f"_unused{counter}"
            counter += 1
            if name not in taken:
                break
        template = rng.choice(_DEAD)
        stmt = template.format(i=indent, u=unit, v=name)
        text.replace(at, at, indent + stmt + "\n")
        inserted += 1
    if not inserted:
        raise NotApplicable("no function body to insert into")
    result = text.result()
    new_tree = checked(source, result)
    _strip_inserted(new_tree)
    if dump_tree(new_tree) != dump_tree(parse_source(source)):
        raise NotApplicable("dead code insertion changed the program")
    return Transformed(result, {}, inserted)


def _strip_inserted(tree: ast.Module) -> None:
    """Remove the statements ``dead_code`` inserts (they bind a fresh ``_unusedN``)."""

    def is_dead(stmt: ast.stmt) -> bool:
        names = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        return (bool(names) and all(re.fullmatch(r"_unused\d+", n) for n in names)) or (
            isinstance(stmt, ast.While)
            and isinstance(stmt.test, ast.Constant)
            and stmt.test.value is False
            and len(stmt.body) == 1
            and isinstance(stmt.body[0], ast.Pass)
        )

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [s for s in node.body if not is_dead(s)] or node.body
