"""Documentation relations: prose reworded, comments removed, docstrings removed."""

from __future__ import annotations

import ast
import random
import re
import tokenize

from assistant.fidelity.relations.source import (
    NotApplicable,
    SourceText,
    Transformed,
    checked,
    docstring_nodes,
    dump_tree,
    end_of,
    has_docstring,
    parse_source,
    source_tokens,
)

#: Prose rewordings, applied as one simultaneous substitution (so A->B->A cannot chain).
REWORDINGS: dict[str, str] = {
    "Return": "Produce",
    "return": "produce",
    "Returns": "Produces",
    "returns": "produces",
    "Given": "Provided",
    "given": "provided",
    "Check if": "Determine whether",
    "check if": "determine whether",
    "Check whether": "Determine whether",
    "check whether": "determine whether",
    "Write a function": "Implement a function",
    "write a function": "implement a function",
    "Find": "Determine",
    "find": "determine",
    "Calculate": "Compute",
    "calculate": "compute",
    "Compute": "Calculate",
    "compute": "calculate",
    "each": "every",
    "For example": "For instance",
    "for example": "for instance",
    "largest": "biggest",
    "smallest": "tiniest",
    "contains": "includes",
    "consists of": "is made up of",
    "You are given": "You receive",
    "you are given": "you receive",
    "should": "must",
    "whether": "if",
    "Create": "Make",
    "create": "make",
    "Implement": "Write",
    "implement": "write",
    "the function": "the routine",
    "The function": "The routine",
    "Example": "Illustration",
    "Examples": "Illustrations",
    "input": "argument",
    "Input": "Argument",
    "returned": "produced",
    "such that": "so that",
    "otherwise": "else",
    "Otherwise": "Else",
}
_REWORD_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(REWORDINGS, key=len, reverse=True)) + r")\b")
_DOCTEST_PROMPT = re.compile(r"^\s*(>>>|\.\.\.)")


def _reword_prose(text: str) -> str:
    """Reword every line except doctest examples and their expected output."""
    out, in_example = [], False
    for line in text.split("\n"):
        if _DOCTEST_PROMPT.match(line):
            in_example = True
            out.append(line)
            continue
        if in_example and line.strip():
            out.append(line)  # expected output of the example above
            continue
        in_example = False
        out.append(_REWORD_RE.sub(lambda m: REWORDINGS[m.group(1)], line))
    return "\n".join(out)


def _blank_docstrings(tree: ast.Module) -> str:
    for doc in docstring_nodes(tree):
        assert isinstance(doc.value, ast.Constant)  # what docstring_nodes selects
        doc.value.value = ""
    return dump_tree(tree)


def reword_docs(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Reword docstrings and comments with synonyms; doctest examples are left exactly as they are."""
    tree = parse_source(source)
    text = SourceText(source)
    sites = 0
    for doc in docstring_nodes(tree):
        start, end = text.node_span(doc)
        segment = text.source[start:end]
        new = _reword_prose(segment)
        if new != segment:
            text.replace(start, end, new)
            sites += 1
    for tok in source_tokens(source):
        if tok.type == tokenize.COMMENT:
            new = _reword_prose(tok.string)
            if new != tok.string:
                start = text.char_offset(*tok.start)
                text.replace(start, start + len(tok.string), new)
                sites += 1
    if not sites:
        raise NotApplicable("no docstring or comment prose to reword")
    result = text.result()
    new_tree = checked(source, result)
    if _blank_docstrings(new_tree) != _blank_docstrings(parse_source(source)):
        raise NotApplicable("rewording touched code")
    return Transformed(result, {}, sites)


def remove_comments(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Delete every comment (a line left empty by it goes too)."""
    text = SourceText(source)
    sites = 0
    for tok in source_tokens(source):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        line = text.lines[row - 1]
        if line[:col].strip():
            before = line[:col].rstrip()
            start = text.char_offset(row, len(before))
            text.replace(start, text.char_offset(row, col) + len(tok.string), "")
        else:
            start = text.starts[row - 1]
            end = start + len(line) + (1 if row < len(text.lines) else 0)
            text.replace(start, end, "")
        sites += 1
    if not sites:
        raise NotApplicable("no comments")
    result = text.result()
    new_tree = checked(source, result)
    if dump_tree(new_tree) != dump_tree(parse_source(source)):
        raise NotApplicable("removing comments changed the program")
    return Transformed(result, {}, sites)


def remove_docstrings(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Delete every docstring (a body left empty gets ``pass``). Removes a task's specification."""
    tree = parse_source(source)
    text = SourceText(source)
    owners = {
        id(n.body[0]): n
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
    }
    sites = 0
    for doc in docstring_nodes(tree):
        if not text.owns_lines(doc):
            continue
        owner = owners[id(doc)]
        start = text.starts[doc.lineno - 1]
        end_lineno = end_of(doc)[0]
        end = text.starts[end_lineno] if end_lineno < len(text.lines) else len(text.source)
        keep_pass = len(owner.body) == 1 and not isinstance(owner, ast.Module)
        text.replace(start, end, text.indent_of(doc.lineno) + "pass\n" if keep_pass else "")
        sites += 1
    if not sites:
        raise NotApplicable("no docstrings")
    result = text.result()
    new_tree = checked(source, result)
    expected = parse_source(source)
    for node in ast.walk(expected):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and has_docstring(node):
            node.body = node.body[1:] or ([ast.Pass()] if not isinstance(node, ast.Module) else [])
    if dump_tree(new_tree) != dump_tree(expected):
        raise NotApplicable("removing docstrings changed the program")
    return Transformed(result, {}, sites)
