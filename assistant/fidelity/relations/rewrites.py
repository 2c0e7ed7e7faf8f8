"""Equivalent rewrites: append-loops <-> comprehensions, if/else swapped, independent statements reordered."""

from __future__ import annotations

import ast
import random
from typing import Callable, Iterable

from assistant.fidelity.relations.source import (
    RESERVED,
    NotApplicable,
    SourceText,
    Transformed,
    checked,
    dump_tree,
    end_of,
    identifiers_in,
    parse_source,
)


def _enclosing_functions(tree: ast.Module) -> dict[int, ast.AST]:
    """id(statement) -> the function (or module) whose body holds it, directly or in blocks."""
    owner: dict[int, ast.AST] = {}

    def visit(node: ast.AST, fn: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                owner[id(child)] = fn
            visit(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else fn)

    visit(tree, tree)
    return owner


def _names(node: ast.AST | None) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} if node is not None else set()


def _scope_names(fn: ast.AST) -> list[str]:
    """Every Name occurrence in a function's own code (nested functions included)."""
    return [n.id for n in ast.walk(fn) if isinstance(n, ast.Name)]


def _bad_expr(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr, ast.Lambda)) for n in ast.walk(node))


def _replace_stmts(text: SourceText, first: ast.stmt, last: ast.stmt, code: str) -> None:
    indent = text.indent_of(first.lineno)
    start = text.starts[first.lineno - 1]
    end = text.offset(*end_of(last))
    body = "\n".join((indent + line) if line.strip() else line for line in code.split("\n"))
    text.replace(start, end, body)


def _append_target(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """``X.append(E)`` -> (X, E)."""
    if (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr == "append"
        and isinstance(stmt.value.func.value, ast.Name)
        and len(stmt.value.args) == 1
        and not stmt.value.keywords
    ):
        return stmt.value.func.value.id, stmt.value.args[0]
    return None


def _loop_to_comprehension(init: ast.stmt, loop: ast.stmt, fn: ast.AST | None) -> str | None:
    """``X = []`` + ``for T in I: [if C:] X.append(E)`` -> ``X = [E for T in I if C]``."""
    if not (
        isinstance(init, ast.Assign)
        and len(init.targets) == 1
        and isinstance(init.targets[0], ast.Name)
        and isinstance(init.value, ast.List)
        and not init.value.elts
    ):
        return None
    if not isinstance(loop, ast.For) or loop.orelse or len(loop.body) != 1 or getattr(loop, "type_comment", None):
        return None
    acc = init.targets[0].id
    body, cond = loop.body[0], None
    if isinstance(body, ast.If) and not body.orelse and len(body.body) == 1:
        cond, body = body.test, body.body[0]
    appended = _append_target(body)
    if not appended or appended[0] != acc:
        return None
    elt = appended[1]
    targets = _names(loop.target)
    if (
        acc in targets | _names(loop.iter) | _names(elt) | _names(cond)
        or _bad_expr(loop)
        or not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
    ):
        return None
    if not all(
        isinstance(n, (ast.Name, ast.Tuple)) for n in ast.walk(loop.target) if not isinstance(n, ast.expr_context)
    ):
        return None
    uses = _scope_names(fn)
    if any(uses.count(t) != sum(1 for n in ast.walk(loop) if isinstance(n, ast.Name) and n.id == t) for t in targets):
        return None  # the loop variable is used outside the loop: a comprehension would not leak it
    comp = ast.ListComp(
        elt=elt,
        generators=[ast.comprehension(target=loop.target, iter=loop.iter, ifs=[cond] if cond else [], is_async=0)],
    )
    return ast.unparse(ast.Assign(targets=[ast.Name(acc, ast.Store())], value=comp, lineno=0))


def _comprehension_to_loop(stmt: ast.stmt, fn: ast.AST | None, fresh: Callable[[], str]) -> str | None:
    """``X = [E for T in I if C]`` (or ``return [...]``) -> an explicit loop that appends."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        comp, acc, ret = stmt.value, stmt.targets[0].id, False
    elif isinstance(stmt, ast.Return) and stmt.value is not None:
        comp, acc, ret = stmt.value, None, True
    else:
        return None
    if (
        not isinstance(comp, ast.ListComp)
        or _bad_expr(comp)
        or not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
    ):
        return None
    if any(g.is_async for g in comp.generators):
        return None
    targets = set().union(*(_names(g.target) for g in comp.generators))
    uses = _scope_names(fn)
    inside = [n.id for n in ast.walk(comp) if isinstance(n, ast.Name)]
    if any(uses.count(t) != inside.count(t) for t in targets):
        return None  # a loop would leak the variable into a name used elsewhere
    acc = acc or fresh()
    if acc in _names(comp):
        return None
    inner: ast.stmt = ast.Expr(ast.Call(ast.Attribute(ast.Name(acc, ast.Load()), "append", ast.Load()), [comp.elt], []))
    for g in reversed(comp.generators):
        for cond in reversed(g.ifs):
            inner = ast.If(test=cond, body=[inner], orelse=[])
        inner = ast.For(target=g.target, iter=g.iter, body=[inner], orelse=[], lineno=0)
    out = [ast.Assign(targets=[ast.Name(acc, ast.Store())], value=ast.List([], ast.Load()), lineno=0), inner]
    if ret:
        out.append(ast.Return(ast.Name(acc, ast.Load())))
    return "\n".join(ast.unparse(s) for s in out)


def _blocks(tree: ast.AST) -> Iterable[list[ast.stmt]]:
    for node in ast.walk(tree):
        for attr in ("body", "orelse", "finalbody"):
            block = getattr(node, attr, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield block  # except-handler bodies come through their ExceptHandler node


def loop_comprehension(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Rewrite append-loops as list comprehensions and list comprehensions as append-loops."""
    tree = parse_source(source)
    text = SourceText(source)
    owner = _enclosing_functions(tree)
    taken = identifiers_in(source) | RESERVED
    counter = [0]

    def fresh() -> str:
        while True:
            name = f"_acc{counter[0]}"
            counter[0] += 1
            if name not in taken:
                taken.add(name)
                return name

    sites = 0
    used_lines: set[int] = set()
    changes: list[tuple[list[ast.stmt], int, int, list[ast.stmt]]] = []  # (block, index, count, new statements)
    for block in list(_blocks(tree)):  # outer blocks first; a rewritten span is never entered again
        i = 0
        while i < len(block):
            stmt = block[i]
            fn = owner.get(id(stmt))
            span = set(range(stmt.lineno, end_of(stmt)[0] + 1))
            nxt = block[i + 1] if i + 1 < len(block) else None
            if nxt is not None and text.owns_lines(stmt) and text.owns_lines(nxt):
                code = _loop_to_comprehension(stmt, nxt, fn)
                both = span | set(range(nxt.lineno, end_of(nxt)[0] + 1))
                if code and not both & used_lines:
                    _replace_stmts(text, stmt, nxt, code)
                    changes.append((block, i, 2, ast.parse(code).body))
                    used_lines |= both
                    sites += 1
                    i += 2
                    continue
            if text.owns_lines(stmt) and not span & used_lines:
                code = _comprehension_to_loop(stmt, fn, fresh)
                if code:
                    _replace_stmts(text, stmt, stmt, code)
                    changes.append((block, i, 1, ast.parse(code).body))
                    used_lines |= span
                    sites += 1
            i += 1
    if not sites:
        raise NotApplicable("no append-loop or list comprehension to rewrite")
    result = text.result()
    new_tree = checked(source, result)
    for block, i, count, new in reversed(changes):  # later indices first within a block
        block[i : i + count] = new
    if dump_tree(new_tree) != dump_tree(tree):
        raise NotApplicable("the rewrite landed elsewhere than planned")
    return Transformed(result, {}, sites)


_NEGATED = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


def negate(test: ast.expr) -> ast.expr:
    """``not test`` simplified where exact: ``not not x`` -> ``x``, ``==`` <-> ``!=``, ``in`` <-> ``not in``.

    Order comparisons are wrapped, never flipped: ``not a < b`` differs from ``a >= b`` for NaN.
    """
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _NEGATED:
        return ast.Compare(test.left, [_NEGATED[type(test.ops[0])]()], test.comparators)
    return ast.UnaryOp(ast.Not(), test)


def swap_if_else(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """``if c: A else: B`` -> ``if not c: B else: A``; ``a if c else b`` -> ``b if not c else a``."""
    tree = parse_source(source)
    text = SourceText(source)
    sites = 0
    done: list[tuple[int, int]] = []
    in_fstring = {id(n) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j)}
    elifs = {
        id(n.orelse[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.If)
        and len(n.orelse) == 1
        and isinstance(n.orelse[0], ast.If)
        and text.lines[n.orelse[0].lineno - 1].lstrip().startswith("elif")
    }
    for node in list(ast.walk(tree)):  # outer first; nothing inside a swapped span is touched again
        if id(node) in in_fstring or not isinstance(node, (ast.If, ast.IfExp)):
            continue  # positions inside f-strings are not reliable before Python 3.12
        end_lineno = end_of(node)[0]
        if any(s <= node.lineno and end_lineno <= e for s, e in done) or _bad_expr(node.test):
            continue
        if isinstance(node, ast.If):
            if not node.orelse or not text.owns_lines(node) or id(node) in elifs or id(node.orelse[0]) in elifs:
                continue  # no else, or part of an elif chain (swapping would nest it)
            node.test, node.body, node.orelse = negate(node.test), node.orelse, node.body
            _replace_stmts(text, node, node, ast.unparse(node))
        else:
            if node.lineno != end_lineno:
                continue
            start, end = text.node_span(node)
            node.test, node.body, node.orelse = negate(node.test), node.orelse, node.body
            text.replace(start, end, "(" + ast.unparse(node) + ")")
        done.append((node.lineno, end_lineno))
        sites += 1
    if not sites:
        raise NotApplicable("no if/else to swap")
    result = text.result()
    if dump_tree(checked(source, result)) != dump_tree(tree):
        raise NotApplicable("the swap landed elsewhere than planned")
    return Transformed(result, {}, sites)


_PURE_CALLS = {
    "len",
    "abs",
    "int",
    "float",
    "str",
    "bool",
    "min",
    "max",
    "sum",
    "sorted",
    "list",
    "tuple",
    "set",
    "dict",
    "range",
    "round",
    "ord",
    "chr",
    "reversed",
    "enumerate",
    "zip",
    "any",
    "all",
    "frozenset",
}


def _pure(node: ast.AST, shadowed: set[str]) -> bool:
    """No calls except to builtins that have no side effects, no yields, no walrus."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and not (
            isinstance(n.func, ast.Name) and n.func.id in _PURE_CALLS and n.func.id not in shadowed
        ):
            return False
        if isinstance(
            n,
            (
                ast.Yield,
                ast.YieldFrom,
                ast.Await,
                ast.NamedExpr,
                ast.Lambda,
                ast.ListComp,
                ast.SetComp,
                ast.DictComp,
                ast.GeneratorExp,
                ast.Starred,
            ),
        ):
            return False
    return True


def _reads_writes(stmt: ast.stmt, shadowed: set[str]) -> tuple[set[str], set[str]] | None:
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        value, writes = stmt.value, {t.id for t in stmt.targets if isinstance(t, ast.Name)}  # all of them
        reads = _names(value)
    elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        value, writes = stmt.value, {stmt.target.id}
        reads = _names(value) | writes
    elif (
        isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None and stmt.simple
    ):
        value, writes = stmt.value, {stmt.target.id}
        reads = _names(value) | _names(stmt.annotation)
    else:
        return None
    if not _pure(value, shadowed):
        return None
    return reads, writes


def reorder_statements(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Swap adjacent assignments that neither read nor write what the other writes, and keyword
    arguments whose values are plain names or constants."""
    tree = parse_source(source)
    text = SourceText(source)
    shadowed = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    shadowed |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    shadowed |= {
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names
    }
    sites = 0
    swaps: list[tuple[list[ast.stmt], int]] = []
    for block in _blocks(tree):
        i = 0
        while i + 1 < len(block):
            a, b = block[i], block[i + 1]
            ra, rb = _reads_writes(a, shadowed), _reads_writes(b, shadowed)
            independent = ra and rb and not (ra[1] & (rb[0] | rb[1])) and not (rb[1] & ra[0])
            if independent and text.owns_lines(a) and text.owns_lines(b) and end_of(a)[0] < b.lineno:
                sa, ea = text.starts[a.lineno - 1], text.offset(*end_of(a))
                sb, eb = text.starts[b.lineno - 1], text.offset(*end_of(b))
                text.replace(sa, ea, text.source[sb:eb].replace(text.indent_of(b.lineno), text.indent_of(a.lineno), 1))
                text.replace(sb, eb, text.source[sa:ea].replace(text.indent_of(a.lineno), text.indent_of(b.lineno), 1))
                swaps.append((block, i))
                sites += 1
                i += 2
                continue
            i += 1
    kw_swaps: list[tuple[list[ast.keyword], int]] = []
    moved = {
        row
        for start, end, _ in text.edits
        for row in range(text.source.count("\n", 0, start), text.source.count("\n", 0, end) + 2)
    }
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        kws = call.keywords
        for k1, k2 in zip(kws, kws[1:]):
            simple = all(k.arg and isinstance(k.value, (ast.Constant, ast.Name)) for k in (k1, k2))
            if simple and k1.end_lineno == k2.lineno and k1.lineno == k1.end_lineno and k1.lineno not in moved:
                s1, e1 = text.node_span(k1)
                s2, e2 = text.node_span(k2)
                text.replace(s1, e1, text.source[s2:e2])
                text.replace(s2, e2, text.source[s1:e1])
                kw_swaps.append((kws, kws.index(k1)))
                sites += 1
                break
    if not sites:
        raise NotApplicable("no independent statements or keyword arguments to reorder")
    result = text.result()
    new_tree = checked(source, result)
    for block, i in swaps:
        block[i], block[i + 1] = block[i + 1], block[i]
    for kws, i in kw_swaps:
        kws[i], kws[i + 1] = kws[i + 1], kws[i]
    if dump_tree(new_tree) != dump_tree(tree):
        raise NotApplicable("the reordering landed elsewhere than planned")
    return Transformed(result, {}, sites)
