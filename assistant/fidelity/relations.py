"""Behaviour-preserving rewrites of Python source: the metamorphic relations of `assistant fidelity`.

Each relation is a pure function ``(source, rng, keep) -> Transformed``: the same source and
seed always give the same output. Edits are made in the text at the positions the ``ast``
reports, so whatever a relation does not mean to change (comments, quoting, layout) stays
byte-identical and a model sees one kind of change at a time, not ``ast.unparse``'s
reformatting on top of it. Every result is parsed and checked against the syntax tree the
relation promises (the same tree, the same tree with renamed identifiers, ...); a relation
that has nothing to change, or cannot change it safely, raises ``NotApplicable``.

``keep`` names identifiers that code outside the source refers to (a test calling a helper by
name, a keyword argument): they are never renamed.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import tokenize
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from assistant.errors import UsageError


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


class _Text:
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

    def node_span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

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
        first, last = self.lines[node.lineno - 1], self.lines[node.end_lineno - 1]
        before = first.encode("utf-8")[: node.col_offset].decode("utf-8", errors="replace")
        after = last.encode("utf-8")[node.end_col_offset:].decode("utf-8", errors="replace")
        return not before.strip() and (not after.strip() or after.strip().startswith("#"))


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise NotApplicable(f"source does not parse: {e}") from None


def _checked(source: str, result: str) -> ast.Module:
    """The result parses, compiles and differs from the source."""
    if result == source:
        raise NotApplicable("nothing to change")
    try:
        tree = ast.parse(result)
        compile(tree, "<transformed>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        raise NotApplicable(f"rewrite would not compile: {e}") from None
    return tree


def _docstring_nodes(tree: ast.AST) -> list[ast.Expr]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.append(first)
    return out


def _dump(tree: ast.AST) -> str:
    return ast.dump(tree, include_attributes=False)


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        raise NotApplicable(f"source does not tokenize: {e}") from None


def _identifiers(source: str) -> set[str]:
    """Every NAME token: a new identifier must be none of these (nor a builtin or keyword)."""
    return {t.string for t in _tokens(source) if t.type == tokenize.NAME}


RESERVED = set(keyword.kwlist) | set(getattr(keyword, "softkwlist", ())) | set(dir(builtins)) | {"self", "cls"}


# -- scopes: which identifiers can be renamed -------------------------------------------------------

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_SCOPES = _FUNCTIONS + _COMPREHENSIONS + (ast.ClassDef,)
_DYNAMIC = {"locals", "vars", "eval", "exec", "globals", "__import__"}


def _params(fn: ast.AST) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    """Parts of a scope node evaluated in the *enclosing* scope (defaults, decorators, bases, first iterator)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        parts = [*node.decorator_list, *node.args.defaults, *[d for d in node.args.kw_defaults if d]]
        parts += [p.annotation for p in _params(node) if p.annotation] + ([node.returns] if node.returns else [])
        return parts
    if isinstance(node, ast.Lambda):
        return [*node.args.defaults, *[d for d in node.args.kw_defaults if d]]
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]
    if isinstance(node, _COMPREHENSIONS):
        return [node.generators[0].iter]
    return []


def _inner_parts(node: ast.AST) -> list[ast.AST]:
    """Parts of a scope node that run inside it."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return list(node.body)
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, _COMPREHENSIONS):
        outer = node.generators[0].iter
        parts: list[ast.AST] = []
        for i, g in enumerate(node.generators):
            parts += [g.target, *g.ifs] + ([g.iter] if i else [])
        parts += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        return [p for p in parts if p is not outer]
    return []


@dataclass
class _Scope:
    node: ast.AST
    parent: "_Scope | None"
    bound: set[str] = field(default_factory=set)
    declared: set[str] = field(default_factory=set)  # global / nonlocal
    occurrences: list[tuple[str, ast.AST]] = field(default_factory=list)  # (identifier, node) in this scope

    @property
    def is_class(self) -> bool:
        return isinstance(self.node, ast.ClassDef)


class _ScopeBuilder:
    """Walks one unit (a module-level function or method) and records bindings and uses per scope."""

    def __init__(self) -> None:
        self.scopes: list[_Scope] = []
        self.unsafe: set[str] = set()  # identifiers we never rename in this unit
        self.dynamic = False

    def build(self, unit: ast.AST) -> _Scope:
        root = _Scope(unit, None)
        self.scopes.append(root)
        for p in _params(unit):
            root.bound.add(p.arg)
            root.occurrences.append((p.arg, p))
        for part in _inner_parts(unit):
            self._visit(part, root)
        return root

    def _enter(self, node: ast.AST, scope: _Scope) -> None:
        for part in _outer_parts(node):
            self._visit(part, scope)
        inner = _Scope(node, scope)
        self.scopes.append(inner)
        if isinstance(node, _FUNCTIONS):
            for p in _params(node):
                inner.bound.add(p.arg)
                inner.occurrences.append((p.arg, p))
        for part in _inner_parts(node):
            self._visit(part, inner)
        if isinstance(node, ast.ClassDef):
            self.unsafe |= inner.bound  # class attributes: renaming them changes the class
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope.bound.add(node.name)
            scope.occurrences.append((node.name, node))

    def _visit(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, _SCOPES):
            self._enter(node, scope)
            return
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                scope.bound.add(node.id)
            scope.occurrences.append((node.id, node))
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            scope.declared.update(node.names)
            self.unsafe.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scope.bound.add(node.name)
            scope.occurrences.append((node.name, node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                name = a.asname or a.name.split(".")[0]
                scope.bound.add(name)
                if a.asname:
                    scope.occurrences.append((name, a))
                else:
                    self.unsafe.add(name)  # `import x` cannot be renamed without rewriting the import
        elif isinstance(node, ast.NamedExpr) and isinstance(scope.node, _COMPREHENSIONS):
            self.unsafe.add(node.target.id)  # binds in an enclosing scope: keep it simple
        elif isinstance(node, (ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
            for name in (getattr(node, "name", None), getattr(node, "rest", None)):
                if name:
                    self.unsafe.add(name)
        elif isinstance(node, ast.JoinedStr):
            self.unsafe.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC:
            self.dynamic = True
        for child in ast.iter_child_nodes(node):
            self._visit(child, scope)


def _resolves_inside(scope: _Scope, name: str) -> bool:
    """Whether ``name`` used in ``scope`` is bound in it or an enclosing function scope of the unit."""
    s: _Scope | None = scope
    first = True
    while s is not None:
        if name in s.declared:
            return False
        if name in s.bound and (first or not s.is_class):
            return True
        first = False
        s = s.parent
    return False


def _units(tree: ast.Module) -> list[ast.AST]:
    """Module-level functions and the methods of module-level classes."""
    units: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(node)
        elif isinstance(node, ast.ClassDef):
            units += [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return units


@dataclass
class _Plan:
    """What a renaming relation may rename: identifier -> occurrence nodes, and their role."""

    occurrences: dict[str, list[ast.AST]] = field(default_factory=dict)
    role: dict[str, str] = field(default_factory=dict)  # "function", "param" or "local"
    order: list[str] = field(default_factory=list)  # by first appearance
    call_keywords: dict[str, list[ast.keyword]] = field(default_factory=dict)  # param -> f(param=...) sites

    def add(self, name: str, nodes: list[ast.AST], role: str) -> None:
        if name not in self.occurrences:
            self.occurrences[name] = []
            self.order.append(name)
            self.role[name] = role
        elif role == "param":
            self.role[name] = "param"
        seen = {id(n) for n in self.occurrences[name]}
        self.occurrences[name] += [n for n in nodes if id(n) not in seen]


def _plan_renames(tree: ast.Module, keep: frozenset) -> _Plan:
    plan = _Plan()
    keyword_uses: dict[str, list[tuple[ast.Call, ast.keyword]]] = {}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for kw in call.keywords:
            if kw.arg:
                keyword_uses.setdefault(kw.arg, []).append((call, kw))
    module_functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    blocked: set[str] = set(keep)
    per_unit: list[tuple[ast.AST, dict[str, list[ast.AST]], set[str]]] = []
    for unit in _units(tree):
        b = _ScopeBuilder()
        b.build(unit)
        if b.dynamic:
            continue
        names: dict[str, list[ast.AST]] = {}
        outside: set[str] = set()
        for scope in b.scopes:
            for name, node in scope.occurrences:
                if _resolves_inside(scope, name):
                    names.setdefault(name, []).append(node)
                else:
                    outside.add(name)
        nested_defs = {n.name for n in ast.walk(unit) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not unit}
        params = {p.arg for n in ast.walk(unit) if isinstance(n, _FUNCTIONS) for p in _params(n)}
        bad = b.unsafe | outside | blocked | RESERVED | {n for n in nested_defs if n not in params}
        for name in list(names):
            if name in bad or name.startswith("__"):
                del names[name]
                continue
            for call, kw in keyword_uses.get(name, ()):
                # f(name=...) only follows the rename when f is this module-level function
                if not (isinstance(call.func, ast.Name) and call.func.id == getattr(unit, "name", None)
                        and unit in module_functions.values() and name in {p.arg for p in _params(unit)}):
                    del names[name]
                    break
        per_unit.append((unit, names, params))
    for unit, names, params in per_unit:
        for name, nodes in names.items():
            plan.add(name, nodes, "param" if name in params else "local")
            if isinstance(unit, (ast.FunctionDef, ast.AsyncFunctionDef)) and unit.name in module_functions:
                plan.call_keywords.setdefault(name, []).extend(
                    kw for call, kw in keyword_uses.get(name, ()) if isinstance(call.func, ast.Name) and call.func.id == unit.name
                )
    _plan_function_names(tree, module_functions, blocked, plan)
    return plan


def _binding_counts(tree: ast.Module) -> dict[str, int]:
    """How often each identifier is bound anywhere (def/class names, parameters, stores, imports,
    except-as, global/nonlocal declarations)."""
    counts: dict[str, int] = {}

    def bump(name: str | None) -> None:
        if name:
            counts[name] = counts.get(name, 0) + 1

    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bump(n.name)
        elif isinstance(n, ast.arg):
            bump(n.arg)
        elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            bump(n.id)
        elif isinstance(n, ast.alias):
            bump(n.asname or n.name.split(".")[0])
        elif isinstance(n, ast.ExceptHandler):
            bump(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            for name in n.names:
                bump(name)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)):
            bump(n.name)
        elif isinstance(n, ast.MatchMapping):
            bump(n.rest)
    return counts


def _plan_function_names(tree: ast.Module, functions: dict[str, ast.AST], blocked: set[str], plan: _Plan) -> None:
    """Module-level functions bound nowhere else: rename the def and every use (the callers)."""
    if any(isinstance(n, ast.Name) and n.id == "__all__" for n in ast.walk(tree)):
        return
    counts = _binding_counts(tree)
    in_fstrings = {n.id for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j) if isinstance(n, ast.Name)}
    # a name also used as an attribute (obj.name(), module.name()) may be this function called another way
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for name, fn in functions.items():
        if (name in blocked or name in RESERVED or name.startswith("__") or fn.decorator_list or counts.get(name) != 1
                or name in in_fstrings or name in attributes or name in plan.occurrences):
            continue
        uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
        plan.add(name, [fn, *uses], "function")


def _rename_edits(text: _Text, plan: _Plan, mapping: Mapping[str, str]) -> None:
    """Text edits that rename every planned occurrence; raises NotApplicable on any surprise."""
    for old, new in mapping.items():
        for node in plan.occurrences[old]:
            if isinstance(node, (ast.Name, ast.arg)):
                start = text.offset(node.lineno, node.col_offset)
                if text.source[start:start + len(old)] != old:
                    raise NotApplicable(f"cannot locate {old!r} in the text")
                text.replace(start, start + len(old), new)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = text.offset(node.lineno, node.col_offset)
                m = re.compile(rf"(?:async\s+)?(?:def|class)\s+({re.escape(old)})\b").match(text.source, start)
                if not m:
                    raise NotApplicable(f"cannot locate the definition of {old!r}")
                text.replace(m.start(1), m.end(1), new)
            elif isinstance(node, ast.ExceptHandler):
                start = text.offset(*(node.type.end_lineno, node.type.end_col_offset)) if node.type else text.offset(node.lineno, node.col_offset)
                m = re.compile(rf"\)?\s*as\s+({re.escape(old)})\b").match(text.source, start)
                if not m:
                    raise NotApplicable(f"cannot locate except ... as {old}")
                text.replace(m.start(1), m.end(1), new)
            elif isinstance(node, ast.alias):
                start = text.offset(node.lineno, node.col_offset)
                m = re.compile(rf"[\w.]+\s+as\s+({re.escape(old)})\b").match(text.source, start)
                if not m:
                    raise NotApplicable(f"cannot locate import ... as {old}")
                text.replace(m.start(1), m.end(1), new)
            else:  # pragma: no cover - the plan holds only the node types above
                raise NotApplicable(f"unexpected occurrence {type(node).__name__}")
        for kw in plan.call_keywords.get(old, ()):
            start = text.offset(kw.lineno, kw.col_offset)
            if text.source[start:start + len(old)] != old:
                raise NotApplicable(f"cannot locate keyword {old!r}")
            text.replace(start, start + len(old), new)


def _rename_docs(text: _Text, tree: ast.Module, functions: Mapping[str, str]) -> None:
    """Function names mentioned in docstrings (doctest examples) and comments follow the rename."""
    if not functions:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(functions, key=len, reverse=True)) + r")\b")
    for doc in _docstring_nodes(tree):
        start, end = text.node_span(doc)
        segment = text.source[start:end]
        new = pattern.sub(lambda m: functions[m.group(1)], segment)
        if new != segment:
            text.replace(start, end, new)
    for tok in _tokens(text.source):
        if tok.type == tokenize.COMMENT:
            new = pattern.sub(lambda m: functions[m.group(1)], tok.string)
            if new != tok.string:
                start = text.char_offset(*tok.start)
                text.replace(start, start + len(tok.string), new)


def _expected_after_rename(tree: ast.Module, plan: _Plan, mapping: Mapping[str, str]) -> str:
    """The original tree with the same renames applied to its nodes (and docstrings)."""
    functions = {o: n for o, n in mapping.items() if plan.role[o] == "function"}
    for old, new in mapping.items():
        for node in plan.occurrences[old]:
            if isinstance(node, ast.Name):
                node.id = new
            elif isinstance(node, ast.arg):
                node.arg = new
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler)):
                node.name = new
            elif isinstance(node, ast.alias):
                node.asname = new
        for kw in plan.call_keywords.get(old, ()):
            kw.arg = new
    if functions:
        pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(functions, key=len, reverse=True)) + r")\b")
        for doc in _docstring_nodes(tree):
            doc.value.value = pattern.sub(lambda m: functions[m.group(1)], doc.value.value)
    return _dump(tree)


def _renamed(source: str, keep: frozenset, choose: Callable[[_Plan, set[str]], dict[str, str]]) -> Transformed:
    tree = _parse(source)
    plan = _plan_renames(tree, keep)
    taken = _identifiers(source) | RESERVED
    mapping = choose(plan, taken)
    mapping = {o: n for o, n in mapping.items() if n and n != o}
    if not mapping:
        raise NotApplicable("no identifier can be renamed")
    if len(set(mapping.values())) != len(mapping) or set(mapping.values()) & taken:
        raise NotApplicable("new names are not fresh")  # pragma: no cover - choose() guarantees it
    text = _Text(source)
    _rename_edits(text, plan, mapping)
    functions = {o: n for o, n in mapping.items() if plan.role[o] == "function"}
    _rename_docs(text, tree, functions)
    result = text.result()
    new_tree = _checked(source, result)
    if _dump(new_tree) != _expected_after_rename(tree, plan, mapping):
        raise NotApplicable("renaming would change more than names")
    return Transformed(result, dict(mapping), sum(len(plan.occurrences[o]) for o in mapping))


# -- identifier renaming: synonyms and neutral names ------------------------------------------------

#: Words of identifiers and their synonyms (MORPH-style renaming): first choice first.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "number": ("value", "figure"), "numbers": ("values", "figures"), "num": ("val", "value"), "nums": ("vals", "values"),
    "string": ("text", "word"), "strings": ("texts", "words"), "str": ("text",), "s": ("text", "string"), "txt": ("text",),
    "text": ("content", "string"), "word": ("token", "term"), "words": ("tokens", "terms"), "char": ("symbol", "letter"),
    "chars": ("symbols", "letters"), "c": ("ch", "symbol"), "ch": ("symbol", "char"), "letter": ("character",),
    "letters": ("characters",), "lst": ("items", "seq"), "list": ("seq", "items"), "arr": ("array", "items"),
    "array": ("items", "vector"), "l": ("items", "seq"), "result": ("outcome", "answer"), "res": ("outcome", "answer"),
    "ret": ("outcome", "answer"), "ans": ("answer", "outcome"), "answer": ("outcome", "reply"), "output": ("outcome", "product"),
    "count": ("tally", "total"), "cnt": ("tally", "total"), "total": ("tally", "aggregate"), "sum": ("total", "aggregate"),
    "acc": ("accumulator", "tally"), "index": ("position", "offset"), "idx": ("position", "offset"), "i": ("idx", "pos"),
    "j": ("jdx", "inner"), "k": ("kdx", "step"), "pos": ("position", "offset"), "n": ("num", "size"), "x": ("val", "item"),
    "y": ("other", "second"), "a": ("first", "lhs"), "b": ("second", "rhs"), "d": ("mapping", "table"), "dict": ("mapping", "table"),
    "dic": ("mapping", "table"), "key": ("name", "label"), "keys": ("names", "labels"), "value": ("amount", "datum"),
    "values": ("amounts", "data"), "val": ("amount", "datum"), "item": ("element", "entry"), "items": ("elements", "entries"),
    "element": ("item", "entry"), "elements": ("items", "entries"), "elem": ("item", "entry"), "e": ("entry", "element"),
    "has": ("contains",), "is": ("check",), "get": ("fetch", "obtain"), "find": ("search", "locate"), "check": ("verify", "test"),
    "make": ("build", "create"), "compute": ("calculate", "evaluate"), "calc": ("compute", "evaluate"), "calculate": ("compute",),
    "sort": ("order", "arrange"), "sorted": ("ordered", "arranged"), "remove": ("drop", "delete"), "add": ("append", "insert"),
    "filter": ("select", "keep"), "parse": ("read", "decode"), "max": ("largest", "biggest"), "min": ("smallest", "least"),
    "maximum": ("largest", "biggest"), "minimum": ("smallest", "least"), "largest": ("biggest", "greatest"),
    "smallest": ("least", "tiniest"), "close": ("near", "nearby"), "closest": ("nearest",), "prime": ("primal",),
    "first": ("initial", "leading"), "last": ("final", "trailing"), "reverse": ("invert", "flip"), "length": ("size", "extent"),
    "len": ("size",), "size": ("length", "extent"), "prefix": ("head", "start"), "suffix": ("tail", "ending"),
    "threshold": ("limit", "tolerance"), "delimiter": ("separator",), "delimeter": ("separator",), "sep": ("separator", "divider"),
    "separator": ("delimiter", "divider"), "paren": ("bracket",), "parens": ("brackets",), "depth": ("level", "nesting"),
    "level": ("depth", "tier"), "balance": ("net", "running"), "operations": ("steps", "actions"), "op": ("step", "action"),
    "mean": ("average", "avg"), "avg": ("average", "mean"), "average": ("mean",), "deviation": ("spread",),
    "substring": ("fragment", "piece"), "sub": ("part", "piece"), "factor": ("divisor",), "factors": ("divisors",),
    "new": ("fresh", "updated"), "old": ("previous", "prior"), "prev": ("previous", "prior"), "curr": ("current", "present"),
    "current": ("present", "now"), "cur": ("current", "present"), "next": ("following", "subsequent"), "tmp": ("temp", "scratch"),
    "temp": ("scratch", "interim"), "flag": ("marker", "switch"), "found": ("located", "seen"), "seen": ("visited", "met"),
    "visited": ("seen", "explored"), "left": ("lo", "low"), "right": ("hi", "high"), "low": ("bottom", "lo"),
    "high": ("top", "hi"), "start": ("begin", "origin"), "end": ("stop", "finish"), "begin": ("start",), "mid": ("middle", "center"),
    "grid": ("matrix", "board"), "matrix": ("grid", "table"), "row": ("line", "record"), "rows": ("lines", "records"),
    "col": ("column",), "cols": ("columns",), "node": ("vertex",), "nodes": ("vertices",), "path": ("route", "trail"),
    "date": ("day",), "month": ("mon",), "year": ("yr",), "day": ("date",), "digit": ("figure", "numeral"),
    "digits": ("figures", "numerals"), "base": ("radix",), "power": ("exponent",), "exp": ("exponent", "power"),
    "planet": ("world",), "planets": ("worlds",), "vowels": ("vocals",), "vowel": ("vocal",), "message": ("note", "msg"),
    "msg": ("message", "note"), "name": ("label", "title"), "names": ("labels", "titles"), "file": ("document",),
    "data": ("payload", "records"), "buf": ("buffer",), "buffer": ("buf", "store"), "line": ("row", "record"),
    "lines": ("rows", "records"), "width": ("breadth",), "height": ("tallness",), "area": ("surface",),
    "side": ("edge",), "sides": ("edges",), "shift": ("offset", "displacement"), "encode": ("encrypt", "encipher"),
    "decode": ("decrypt", "decipher"), "cyclic": ("rotating",), "groups": ("chunks", "batches"), "group": ("chunk", "batch"),
    "special": ("particular",), "score": ("points", "mark"), "scores": ("points", "marks"), "guess": ("estimate",),
    "guesses": ("estimates",), "game": ("match",), "extension": ("addon",), "extensions": ("addons",),
    "strength": ("power",), "car": ("vehicle",), "collision": ("crash",), "pairs": ("couples", "duos"), "pair": ("couple", "duo"),
    "triple": ("trio",), "triples": ("trios",), "product": ("prod", "multiple"), "prod": ("product",),
    "even": ("paired",), "odd": ("unpaired",), "odds": ("unpaired",), "evens": ("paired",), "positive": ("plus",),
    "negative": ("minus",), "unique": ("distinct",), "common": ("shared",), "fib": ("fibo",), "fibfib": ("fibofibo",),
    "palindrome": ("mirror",), "triangle": ("trigon",), "median": ("middle",), "mode": ("commonest",), "roman": ("latin",),
}
_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|_+")


def _split_identifier(name: str) -> list[str]:
    parts = _SPLIT.findall(name)
    return parts if "".join(parts) == name else [name]


def _synonym_for(name: str, rng: random.Random, taken: set[str]) -> str | None:
    parts = _split_identifier(name)
    words = [p for p in parts if not p.startswith("_")]
    swappable = [i for i, p in enumerate(parts) if p.lower() in SYNONYMS]
    if not swappable or not words:
        return None
    options: list[str] = []
    for _ in range(6):
        new_parts = list(parts)
        for i in swappable:
            choices = SYNONYMS[parts[i].lower()]
            word = rng.choice(choices)
            if parts[i][:1].isupper():
                word = word[:1].upper() + word[1:]
            if parts[i].isupper() and len(parts[i]) > 1:
                word = word.upper()
            new_parts[i] = word
        options.append("".join(new_parts))
    options += [o + "_v" for o in options[:1]] + [o + "_2" for o in options[:1]]
    for option in options:
        if option.isidentifier() and option not in taken and not keyword.iskeyword(option):
            return option
    return None


def _choose_synonyms(rng: random.Random) -> Callable[[_Plan, set[str]], dict[str, str]]:
    def choose(plan: _Plan, taken: set[str]) -> dict[str, str]:
        mapping: dict[str, str] = {}
        used = set(taken)
        for name in plan.order:
            new = _synonym_for(name, rng, used)
            if new:
                mapping[name] = new
                used.add(new)
        return mapping

    return choose


def _choose_neutral(plan: _Plan, taken: set[str]) -> dict[str, str]:
    prefix = {"function": "func", "param": "arg", "local": "var"}
    counters = {k: 0 for k in prefix}
    mapping: dict[str, str] = {}
    for name in plan.order:
        role = plan.role[name]
        while True:
            new = f"{prefix[role]}{counters[role]}"
            counters[role] += 1
            if new not in taken:
                break
        mapping[name] = new
    return mapping


def rename_synonyms(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Rename parameters, locals and module-level functions (with their callers) to synonyms."""
    return _renamed(source, keep, _choose_synonyms(rng))


def rename_neutral(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Rename parameters, locals and module-level functions to neutral names (arg0, var0, func0)."""
    return _renamed(source, keep, _choose_neutral)


# -- dead code ---------------------------------------------------------------------------------------

_DEAD = (
    "if False:\n{i}{u}{v} = 0",
    "while False:\n{i}{u}pass",
    "for {v} in ():\n{i}{u}pass",
    "{v} = None",
    "if 0 > 1:\n{i}{u}{v} = ()",
)


def _body_start(fn: ast.AST) -> tuple[int, ast.stmt | None]:
    """Index of the first statement after the docstring, and the docstring statement (if any)."""
    doc = fn.body[0] if _docstring_nodes_of(fn) else None
    return (1 if doc is not None else 0), doc


def _docstring_nodes_of(node: ast.AST) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _indent_unit(source: str) -> str:
    for tok in _tokens(source):
        if tok.type == tokenize.INDENT:
            return tok.string
    return "    "


def dead_code(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Insert a statement that never runs (or stores into an unused name) at the top of every function body."""
    tree = _parse(source)
    text = _Text(source)
    taken = _identifiers(source) | RESERVED
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
            at = text.starts[doc.end_lineno] if doc.end_lineno < len(text.lines) else None
            if at is None:
                continue
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
    new_tree = _checked(source, result)
    _strip_inserted(new_tree)
    if _dump(new_tree) != _dump(_parse(source)):
        raise NotApplicable("dead code insertion changed the program")
    return Transformed(result, {}, inserted)


def _strip_inserted(tree: ast.Module) -> None:
    """Remove the statements ``dead_code`` inserts (they bind a fresh ``_unusedN``)."""

    def is_dead(stmt: ast.stmt) -> bool:
        names = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        return bool(names) and all(re.fullmatch(r"_unused\d+", n) for n in names) or (
            isinstance(stmt, ast.While) and isinstance(stmt.test, ast.Constant) and stmt.test.value is False
            and len(stmt.body) == 1 and isinstance(stmt.body[0], ast.Pass)
        )

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [s for s in node.body if not is_dead(s)] or node.body


# -- documentation: comments and docstrings ---------------------------------------------------------

#: Prose rewordings, applied as one simultaneous substitution (so A->B->A cannot chain).
REWORDINGS: dict[str, str] = {
    "Return": "Produce", "return": "produce", "Returns": "Produces", "returns": "produces", "Given": "Provided",
    "given": "provided", "Check if": "Determine whether", "check if": "determine whether", "Check whether": "Determine whether",
    "check whether": "determine whether", "Write a function": "Implement a function", "write a function": "implement a function",
    "Find": "Determine", "find": "determine", "Calculate": "Compute", "calculate": "compute", "Compute": "Calculate",
    "compute": "calculate", "each": "every", "For example": "For instance", "for example": "for instance",
    "largest": "biggest", "smallest": "tiniest", "contains": "includes", "consists of": "is made up of",
    "You are given": "You receive", "you are given": "you receive", "should": "must", "whether": "if", "Create": "Make",
    "create": "make", "Implement": "Write", "implement": "write", "the function": "the routine", "The function": "The routine",
    "Example": "Illustration", "Examples": "Illustrations", "input": "argument", "Input": "Argument",
    "returned": "produced", "such that": "so that", "otherwise": "else", "Otherwise": "Else",
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
    for doc in _docstring_nodes(tree):
        doc.value.value = ""
    return _dump(tree)


def reword_docs(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Reword docstrings and comments with synonyms; doctest examples are left exactly as they are."""
    tree = _parse(source)
    text = _Text(source)
    sites = 0
    for doc in _docstring_nodes(tree):
        start, end = text.node_span(doc)
        segment = text.source[start:end]
        new = _reword_prose(segment)
        if new != segment:
            text.replace(start, end, new)
            sites += 1
    for tok in _tokens(source):
        if tok.type == tokenize.COMMENT:
            new = _reword_prose(tok.string)
            if new != tok.string:
                start = text.char_offset(*tok.start)
                text.replace(start, start + len(tok.string), new)
                sites += 1
    if not sites:
        raise NotApplicable("no docstring or comment prose to reword")
    result = text.result()
    new_tree = _checked(source, result)
    if _blank_docstrings(new_tree) != _blank_docstrings(_parse(source)):
        raise NotApplicable("rewording touched code")
    return Transformed(result, {}, sites)


def remove_comments(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Delete every comment (a line left empty by it goes too)."""
    text = _Text(source)
    sites = 0
    for tok in _tokens(source):
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
    new_tree = _checked(source, result)
    if _dump(new_tree) != _dump(_parse(source)):
        raise NotApplicable("removing comments changed the program")
    return Transformed(result, {}, sites)


def remove_docstrings(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Delete every docstring (a body left empty gets ``pass``). Removes a task's specification."""
    tree = _parse(source)
    text = _Text(source)
    owners = {id(n.body[0]): n for n in ast.walk(tree)
              if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body}
    sites = 0
    for doc in _docstring_nodes(tree):
        if not text.owns_lines(doc):
            continue
        owner = owners[id(doc)]
        start = text.starts[doc.lineno - 1]
        end = text.starts[doc.end_lineno] if doc.end_lineno < len(text.lines) else len(text.source)
        keep_pass = len(owner.body) == 1 and not isinstance(owner, ast.Module)
        text.replace(start, end, text.indent_of(doc.lineno) + "pass\n" if keep_pass else "")
        sites += 1
    if not sites:
        raise NotApplicable("no docstrings")
    result = text.result()
    new_tree = _checked(source, result)
    expected = _parse(source)
    for node in ast.walk(expected):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _docstring_nodes_of(node):
            node.body = node.body[1:] or ([ast.Pass()] if not isinstance(node, ast.Module) else [])
    if _dump(new_tree) != _dump(expected):
        raise NotApplicable("removing docstrings changed the program")
    return Transformed(result, {}, sites)


# -- layout ------------------------------------------------------------------------------------------


def _line_kinds(source: str) -> tuple[dict[int, tuple[str, int]], str]:
    """Per physical line: ("start", depth) for the first line of a logical line, ("cont", first line)
    for its other lines, ("string", 0) for lines that begin inside a string literal."""
    kinds: dict[int, tuple[str, int]] = {}
    depth, unit = 0, ""
    at_start = True
    logical_first = 0
    for tok in _tokens(source):
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
            kinds[row] = ("string", 0) if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1) else ("cont", logical_first)
        if tok.start[0] not in kinds:
            kinds[tok.start[0]] = ("cont", logical_first)
        if tok.type == tokenize.NEWLINE:
            at_start = True
    return kinds, unit


def formatting(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Re-indent with another indent width and drop the space after commas: layout only."""
    if "\t" in "".join(l[: len(l) - len(l.lstrip())] for l in source.split("\n")):
        raise NotApplicable("tab indentation")
    kinds, unit = _line_kinds(source)
    old = len(unit) or 4
    new = 2 if old != 2 else 4
    tree = _parse(source)
    text = _Text(source)
    for doc in _docstring_nodes(tree):  # docstring lines move with their statement
        for row in range(doc.lineno + 1, doc.end_lineno + 1):
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
    tokens = _tokens(source)
    for tok, nxt in zip(tokens, tokens[1:]):
        if tok.type == tokenize.OP and tok.string == "," and nxt.start[0] == tok.end[0] and nxt.start[1] == tok.end[1] + 1:
            if nxt.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT) or nxt.string in ")]}":
                continue
            if text.lines[tok.end[0] - 1][tok.end[1]] == " ":
                start = text.char_offset(*tok.end)
                text.replace(start, start + 1, "")
                sites += 1
    result = text.result()
    new_tree = _checked(source, result)
    if _clean_docstrings(new_tree) != _clean_docstrings(tree):
        raise NotApplicable("re-formatting changed the program")
    return Transformed(result, {}, sites)


def _clean_docstrings(tree: ast.Module) -> str:
    """The tree's dump with every docstring line stripped of its indentation."""
    for doc in _docstring_nodes(tree):
        doc.value.value = "\n".join(line.strip() for line in doc.value.value.split("\n"))
    return _dump(tree)


# -- equivalent rewrites -----------------------------------------------------------------------------


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


def _replace_stmts(text: _Text, first: ast.stmt, last: ast.stmt, code: str) -> None:
    indent = text.indent_of(first.lineno)
    start = text.starts[first.lineno - 1]
    end = text.offset(last.end_lineno, last.end_col_offset)
    body = "\n".join((indent + l) if l.strip() else l for l in code.split("\n"))
    text.replace(start, end, body)


def _append_target(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """``X.append(E)`` -> (X, E)."""
    if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Attribute)
            and stmt.value.func.attr == "append" and isinstance(stmt.value.func.value, ast.Name)
            and len(stmt.value.args) == 1 and not stmt.value.keywords):
        return stmt.value.func.value.id, stmt.value.args[0]
    return None


def _loop_to_comprehension(init: ast.stmt, loop: ast.stmt, fn: ast.AST) -> str | None:
    """``X = []`` + ``for T in I: [if C:] X.append(E)`` -> ``X = [E for T in I if C]``."""
    if not (isinstance(init, ast.Assign) and len(init.targets) == 1 and isinstance(init.targets[0], ast.Name)
            and isinstance(init.value, ast.List) and not init.value.elts):
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
    if acc in targets | _names(loop.iter) | _names(elt) | _names(cond) or _bad_expr(loop) or not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    if not all(isinstance(n, (ast.Name, ast.Tuple)) for n in ast.walk(loop.target) if not isinstance(n, ast.expr_context)):
        return None
    uses = _scope_names(fn)
    if any(uses.count(t) != sum(1 for n in ast.walk(loop) if isinstance(n, ast.Name) and n.id == t) for t in targets):
        return None  # the loop variable is used outside the loop: a comprehension would not leak it
    comp = ast.ListComp(elt=elt, generators=[ast.comprehension(target=loop.target, iter=loop.iter, ifs=[cond] if cond else [], is_async=0)])
    return ast.unparse(ast.Assign(targets=[ast.Name(acc, ast.Store())], value=comp, lineno=0))


def _comprehension_to_loop(stmt: ast.stmt, fn: ast.AST, fresh: Callable[[], str]) -> str | None:
    """``X = [E for T in I if C]`` (or ``return [...]``) -> an explicit loop that appends."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        comp, acc, ret = stmt.value, stmt.targets[0].id, False
    elif isinstance(stmt, ast.Return) and stmt.value is not None:
        comp, acc, ret = stmt.value, None, True
    else:
        return None
    if not isinstance(comp, ast.ListComp) or _bad_expr(comp) or not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
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
    tree = _parse(source)
    text = _Text(source)
    owner = _enclosing_functions(tree)
    taken = _identifiers(source) | RESERVED
    counter = [0]

    def fresh() -> str:
        while True:
            name = f"_acc{counter[0]}"
            counter[0] += 1
            if name not in taken:
                taken.add(name)
                return name

    sites, used_lines = 0, set()
    changes: list[tuple[list[ast.stmt], int, int, list[ast.stmt]]] = []  # (block, index, count, new statements)
    for block in list(_blocks(tree)):  # outer blocks first; a rewritten span is never entered again
        i = 0
        while i < len(block):
            stmt = block[i]
            fn = owner.get(id(stmt))
            span = set(range(stmt.lineno, stmt.end_lineno + 1))
            nxt = block[i + 1] if i + 1 < len(block) else None
            if nxt is not None and text.owns_lines(stmt) and text.owns_lines(nxt):
                code = _loop_to_comprehension(stmt, nxt, fn)
                both = span | set(range(nxt.lineno, nxt.end_lineno + 1))
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
    new_tree = _checked(source, result)
    for block, i, count, new in reversed(changes):  # later indices first within a block
        block[i:i + count] = new
    if _dump(new_tree) != _dump(tree):
        raise NotApplicable("the rewrite landed elsewhere than planned")
    return Transformed(result, {}, sites)


_NEGATED = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


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
    tree = _parse(source)
    text = _Text(source)
    sites = 0
    done: list[tuple[int, int]] = []
    in_fstring = {id(n) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j)}
    elifs = {id(n.orelse[0]) for n in ast.walk(tree) if isinstance(n, ast.If) and len(n.orelse) == 1
             and isinstance(n.orelse[0], ast.If) and text.lines[n.orelse[0].lineno - 1].lstrip().startswith("elif")}
    for node in list(ast.walk(tree)):  # outer first; nothing inside a swapped span is touched again
        if id(node) in in_fstring or not isinstance(node, (ast.If, ast.IfExp)):
            continue  # positions inside f-strings are not reliable before Python 3.12
        if any(s <= node.lineno and node.end_lineno <= e for s, e in done) or _bad_expr(node.test):
            continue
        if isinstance(node, ast.If):
            if not node.orelse or not text.owns_lines(node) or id(node) in elifs or id(node.orelse[0]) in elifs:
                continue  # no else, or part of an elif chain (swapping would nest it)
            node.test, node.body, node.orelse = negate(node.test), node.orelse, node.body
            _replace_stmts(text, node, node, ast.unparse(node))
        else:
            if node.lineno != node.end_lineno:
                continue
            start, end = text.node_span(node)
            node.test, node.body, node.orelse = negate(node.test), node.orelse, node.body
            text.replace(start, end, "(" + ast.unparse(node) + ")")
        done.append((node.lineno, node.end_lineno))
        sites += 1
    if not sites:
        raise NotApplicable("no if/else to swap")
    result = text.result()
    if _dump(_checked(source, result)) != _dump(tree):
        raise NotApplicable("the swap landed elsewhere than planned")
    return Transformed(result, {}, sites)


_PURE_CALLS = {"len", "abs", "int", "float", "str", "bool", "min", "max", "sum", "sorted", "list", "tuple", "set", "dict",
               "range", "round", "ord", "chr", "reversed", "enumerate", "zip", "any", "all", "frozenset"}


def _pure(node: ast.AST, shadowed: set[str]) -> bool:
    """No calls except to builtins that have no side effects, no yields, no walrus."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            if not (isinstance(n.func, ast.Name) and n.func.id in _PURE_CALLS and n.func.id not in shadowed):
                return False
        if isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr, ast.Lambda, ast.ListComp, ast.SetComp,
                          ast.DictComp, ast.GeneratorExp, ast.Starred)):
            return False
    return True


def _reads_writes(stmt: ast.stmt, shadowed: set[str]) -> tuple[set[str], set[str]] | None:
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        value, writes = stmt.value, {t.id for t in stmt.targets}
        reads = _names(value)
    elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        value, writes = stmt.value, {stmt.target.id}
        reads = _names(value) | writes
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None and stmt.simple:
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
    tree = _parse(source)
    text = _Text(source)
    shadowed = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    shadowed |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    shadowed |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    sites = 0
    swaps: list[tuple[list[ast.stmt], int]] = []
    for block in _blocks(tree):
        i = 0
        while i + 1 < len(block):
            a, b = block[i], block[i + 1]
            ra, rb = _reads_writes(a, shadowed), _reads_writes(b, shadowed)
            independent = ra and rb and not (ra[1] & (rb[0] | rb[1])) and not (rb[1] & ra[0])
            if independent and text.owns_lines(a) and text.owns_lines(b) and a.end_lineno < b.lineno:
                sa, ea = text.starts[a.lineno - 1], text.offset(a.end_lineno, a.end_col_offset)
                sb, eb = text.starts[b.lineno - 1], text.offset(b.end_lineno, b.end_col_offset)
                text.replace(sa, ea, text.source[sb:eb].replace(text.indent_of(b.lineno), text.indent_of(a.lineno), 1))
                text.replace(sb, eb, text.source[sa:ea].replace(text.indent_of(a.lineno), text.indent_of(b.lineno), 1))
                swaps.append((block, i))
                sites += 1
                i += 2
                continue
            i += 1
    kw_swaps: list[tuple[list[ast.keyword], int]] = []
    moved = {row for start, end, _ in text.edits for row in range(text.source.count("\n", 0, start), text.source.count("\n", 0, end) + 2)}
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
    new_tree = _checked(source, result)
    for seq, i in swaps + kw_swaps:
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
    if _dump(new_tree) != _dump(tree):
        raise NotApplicable("the reordering landed elsewhere than planned")
    return Transformed(result, {}, sites)


# -- the registry ------------------------------------------------------------------------------------

RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("rename_synonyms", "identifiers", "parameters, locals and functions renamed to synonyms (callers updated)", rename_synonyms),
        Relation("rename_neutral", "identifiers", "parameters, locals and functions renamed to arg0/var0/func0", rename_neutral),
        Relation("dead_code", "dead code", "a never-executed statement at the top of every function body", dead_code),
        Relation("reword_docs", "documentation", "docstring and comment prose reworded (doctest examples kept)", reword_docs),
        Relation("remove_comments", "documentation", "comments deleted", remove_comments),
        Relation("remove_docstrings", "documentation", "docstrings deleted (removes a task's specification)", remove_docstrings, default=False),
        Relation("formatting", "layout", "another indent width, no space after commas", formatting),
        Relation("loop_comprehension", "rewrite", "append-loops <-> list comprehensions", loop_comprehension),
        Relation("swap_if_else", "rewrite", "if/else branches swapped under the negated condition", swap_if_else),
        Relation("reorder_statements", "rewrite", "independent assignments and keyword arguments reordered", reorder_statements),
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
