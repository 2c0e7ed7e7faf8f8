"""The layout relation: another indent width and no space after commas, the same syntax tree."""

from __future__ import annotations

import ast
import random
import tokenize

from assistant.fidelity.relations.source import (
    NotApplicable,
    SourceText,
    Transformed,
    checked,
    docstring_nodes,
    dump_tree,
    end_of,
    parse_source,
    source_tokens,
)


def _line_kinds(source: str) -> tuple[dict[int, tuple[str, int]], str]:
    """Per physical line: ("start", depth) for the first line of a logical line, ("cont", first line)
    for its other lines, ("string", 0) for lines that begin inside a string literal."""
    kinds: dict[int, tuple[str, int]] = {}
    depth, unit = 0, ""
    at_start = True
    logical_first = 0
    for tok in source_tokens(source):
        if tok.type == tokenize.INDENT:
            depth += 1
            unit = unit or tok.string
            continue
        if tok.type == tokenize.DEDENT:
            depth -= 1
            continue
        if tok.type in (tokenize.NL, tokenize.COMMENT) and at_start:
            if tok.type == tokenize.COMMENT:
                kinds.setdefault(tok.start[0], ("comment", depth))
            continue
        if tok.type == tokenize.ENDMARKER:
            break
        if at_start:
            logical_first = tok.start[0]
            kinds.setdefault(logical_first, ("start", depth))
            at_start = False
        for row in range(tok.start[0] + 1, tok.end[0] + 1):
            kinds[row] = (
                ("string", 0)
                if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
                else ("cont", logical_first)
            )
        if tok.start[0] not in kinds:
            kinds[tok.start[0]] = ("cont", logical_first)
        if tok.type == tokenize.NEWLINE:
            at_start = True
    return kinds, unit


def formatting(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Re-indent with another indent width and drop the space after commas: layout only."""
    if "\t" in "".join(line[: len(line) - len(line.lstrip())] for line in source.split("\n")):
        raise NotApplicable("tab indentation")
    kinds, unit = _line_kinds(source)
    old = len(unit) or 4
    new = 2 if old != 2 else 4
    tree = parse_source(source)
    text = SourceText(source)
    for doc in docstring_nodes(tree):  # docstring lines move with their statement
        for row in range(doc.lineno + 1, end_of(doc)[0] + 1):
            kinds[row] = ("cont", doc.lineno)
    shift: dict[int, int] = {}
    sites = 0
    for row, line in enumerate(text.lines, 1):
        kind, info = kinds.get(row, ("blank", 0))
        width = len(line) - len(line.lstrip(" "))
        if not line.strip() or kind == "string":
            continue
        if kind == "start":
            target = info * new
            shift[row] = target - width
        elif kind == "cont":
            target = max(0, width + shift.get(info, 0))
        elif kind == "comment":
            target = (width // old) * new + width % old
        else:
            continue
        if target != width:
            text.replace(text.starts[row - 1], text.starts[row - 1] + width, " " * target)
            sites += 1
    tokens = source_tokens(source)
    for tok, nxt in zip(tokens, tokens[1:]):
        if (
            tok.type == tokenize.OP
            and tok.string == ","
            and nxt.start[0] == tok.end[0]
            and nxt.start[1] == tok.end[1] + 1
        ):
            if nxt.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT) or nxt.string in ")]}":
                continue
            if text.lines[tok.end[0] - 1][tok.end[1]] == " ":
                start = text.char_offset(*tok.end)
                text.replace(start, start + 1, "")
                sites += 1
    result = text.result()
    new_tree = checked(source, result)
    if _clean_docstrings(new_tree) != _clean_docstrings(tree):
        raise NotApplicable("re-formatting changed the program")
    return Transformed(result, {}, sites)


def _clean_docstrings(tree: ast.Module) -> str:
    """The tree's dump with every docstring line stripped of its indentation."""
    for doc in docstring_nodes(tree):
        assert isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)  # what docstring_nodes selects
        doc.value.value = "\n".join(line.strip() for line in doc.value.value.split("\n"))
    return dump_tree(tree)
