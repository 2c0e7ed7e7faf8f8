"""What every relation shares: the result type, source text addressed like ``ast``, and the checks.

Edits are made in the text at the positions the ``ast`` reports, so whatever a relation does not
mean to change (comments, quoting, layout) stays byte-identical; every result is parsed and
checked against the syntax tree the relation promises.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import tokenize
from dataclasses import dataclass, field
from typing import Callable, Mapping


class NotApplicable(Exception):
    """The relation has nothing to change in this source, or cannot change it safely."""


@dataclass(frozen=True)
class Transformed:
    source: str
    renames: Mapping[str, str] = field(default_factory=dict)  # old identifier -> new; a bijection
    sites: int = 0  # how many places were rewritten

    def inverse(self) -> dict[str, str]:
        return {new: old for old, new in self.renames.items()}


Apply = Callable[[str, random.Random, frozenset], Transformed]


@dataclass(frozen=True)
class Relation:
    name: str
    kind: str  # identifiers, dead code, documentation, layout, rewrite
    summary: str
    apply: Apply
    default: bool = True  # part of the default --relations set


# -- text positions and edits ----------------------------------------------------------------------

# The node kinds the relations address by position; ``ast.parse`` fills all four of their positions.
Located = ast.stmt | ast.expr | ast.keyword | ast.arg


def end_of(node: Located) -> tuple[int, int]:
    """``(end_lineno, end_col_offset)``: ``Optional`` in ``ast``, always set on parsed nodes."""
    assert node.end_lineno is not None and node.end_col_offset is not None, "a node not made by ast.parse"
    return node.end_lineno, node.end_col_offset


class SourceText:
    """Source text addressed the way ``ast`` does: 1-based lines, UTF-8 byte columns."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self.edits: list[tuple[int, int, str]] = []

    def offset(self, lineno: int, col_byte: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col_byte].decode("utf-8", errors="replace"))

    def char_offset(self, lineno: int, col_char: int) -> int:
        return self.starts[lineno - 1] + col_char

    def node_span(self, node: Located) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(*end_of(node))

    def replace(self, start: int, end: int, text: str) -> None:
        self.edits.append((start, end, text))

    def result(self) -> str:
        out, last = [], len(self.source)
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            if end > last:
                raise NotApplicable("overlapping edits")
            out.append(self.source[end:last])
            out.append(text)
            last = start
        out.append(self.source[:last])
        return "".join(reversed(out))

    def indent_of(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def owns_lines(self, node: ast.stmt) -> bool:
        """True when the statement alone fills its lines (no ``;`` neighbours, no code after it)."""
        end_lineno, end_col_offset = end_of(node)
        first, last = self.lines[node.lineno - 1], self.lines[end_lineno - 1]
        before = first.encode("utf-8")[: node.col_offset].decode("utf-8", errors="replace")
        after = last.encode("utf-8")[end_col_offset:].decode("utf-8", errors="replace")
        return not before.strip() and (not after.strip() or after.strip().startswith("#"))


def parse_source(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise NotApplicable(f"source does not parse: {e}") from None


def checked(source: str, result: str) -> ast.Module:
    """The result parses, compiles and differs from the source."""
    if result == source:
        raise NotApplicable("nothing to change")
    try:
        tree = ast.parse(result)
        compile(tree, "<transformed>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        raise NotApplicable(f"rewrite would not compile: {e}") from None
    return tree


def docstring_nodes(tree: ast.AST) -> list[ast.Expr]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.append(first)
    return out


def has_docstring(node: ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """Whether the module, class or function body starts with a docstring."""
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def dump_tree(tree: ast.AST) -> str:
    return ast.dump(tree, include_attributes=False)


def source_tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        raise NotApplicable(f"source does not tokenize: {e}") from None


def identifiers_in(source: str) -> set[str]:
    """Every NAME token: a new identifier must be none of these (nor a builtin or keyword)."""
    return {t.string for t in source_tokens(source) if t.type == tokenize.NAME}


RESERVED = set(keyword.kwlist) | set(getattr(keyword, "softkwlist", ())) | set(dir(builtins)) | {"self", "cls"}
