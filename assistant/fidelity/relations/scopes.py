"""Which identifiers can be renamed safely: scopes, bindings and the rename plan with its edits."""

from __future__ import annotations

import ast
import re
import tokenize
from dataclasses import dataclass, field
from typing import Callable, Mapping

from assistant.fidelity.relations.source import (
    RESERVED,
    NotApplicable,
    SourceText,
    Transformed,
    checked,
    docstring_nodes,
    dump_tree,
    end_of,
    identifiers_in,
    parse_source,
    source_tokens,
)

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_SCOPES = _FUNCTIONS + _COMPREHENSIONS + (ast.ClassDef,)
_DYNAMIC = {"locals", "vars", "eval", "exec", "globals", "__import__"}


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    """Parts of a scope node evaluated in the *enclosing* scope (defaults, decorators, bases, first iterator)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        parts: list[ast.AST] = [*node.decorator_list, *node.args.defaults, *[d for d in node.args.kw_defaults if d]]
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
    parent: _Scope | None
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

    def build(self, unit: ast.FunctionDef | ast.AsyncFunctionDef) -> _Scope:
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
            for captured in (getattr(node, "name", None), getattr(node, "rest", None)):
                if captured:
                    self.unsafe.add(captured)
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


def _units(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Module-level functions and the methods of module-level classes."""
    units: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(node)
        elif isinstance(node, ast.ClassDef):
            units += [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return units


@dataclass
class RenamePlan:
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


def _plan_renames(tree: ast.Module, keep: frozenset) -> RenamePlan:
    plan = RenamePlan()
    keyword_uses: dict[str, list[tuple[ast.Call, ast.keyword]]] = {}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for kw in call.keywords:
            if kw.arg:
                keyword_uses.setdefault(kw.arg, []).append((call, kw))
    module_functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    blocked: set[str] = set(keep)
    per_unit: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, dict[str, list[ast.AST]], set[str]]] = []
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
        nested_defs = {
            n.name
            for n in ast.walk(unit)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not unit
        }
        params = {p.arg for n in ast.walk(unit) if isinstance(n, _FUNCTIONS) for p in _params(n)}
        bad = b.unsafe | outside | blocked | RESERVED | {n for n in nested_defs if n not in params}
        for name in list(names):
            if name in bad or name.startswith("__"):
                del names[name]
                continue
            for call, _kw in keyword_uses.get(name, ()):
                # f(name=...) only follows the rename when f is this module-level function
                if not (
                    isinstance(call.func, ast.Name)
                    and call.func.id == getattr(unit, "name", None)
                    and unit in module_functions.values()
                    and name in {p.arg for p in _params(unit)}
                ):
                    del names[name]
                    break
        per_unit.append((unit, names, params))
    for unit, names, params in per_unit:
        for name, nodes in names.items():
            plan.add(name, nodes, "param" if name in params else "local")
            if isinstance(unit, (ast.FunctionDef, ast.AsyncFunctionDef)) and unit.name in module_functions:
                plan.call_keywords.setdefault(name, []).extend(
                    kw
                    for call, kw in keyword_uses.get(name, ())
                    if isinstance(call.func, ast.Name) and call.func.id == unit.name
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


def _plan_function_names(
    tree: ast.Module,
    functions: Mapping[str, ast.FunctionDef | ast.AsyncFunctionDef],
    blocked: set[str],
    plan: RenamePlan,
) -> None:
    """Module-level functions bound nowhere else: rename the def and every use (the callers)."""
    if any(isinstance(n, ast.Name) and n.id == "__all__" for n in ast.walk(tree)):
        return
    counts = _binding_counts(tree)
    in_fstrings = {
        n.id for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j) if isinstance(n, ast.Name)
    }
    # a name also used as an attribute (obj.name(), module.name()) may be this function called another way
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for name, fn in functions.items():
        if (
            name in blocked
            or name in RESERVED
            or name.startswith("__")
            or fn.decorator_list
            or counts.get(name) != 1
            or name in in_fstrings
            or name in attributes
            or name in plan.occurrences
        ):
            continue
        uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
        plan.add(name, [fn, *uses], "function")


def _rename_edits(text: SourceText, plan: RenamePlan, mapping: Mapping[str, str]) -> None:
    """Text edits that rename every planned occurrence; raises NotApplicable on any surprise."""
    for old, new in mapping.items():
        for node in plan.occurrences[old]:
            if isinstance(node, (ast.Name, ast.arg)):
                start = text.offset(node.lineno, node.col_offset)
                if text.source[start : start + len(old)] != old:
                    raise NotApplicable(f"cannot locate {old!r} in the text")
                text.replace(start, start + len(old), new)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = text.offset(node.lineno, node.col_offset)
                m = re.compile(rf"(?:async\s+)?(?:def|class)\s+({re.escape(old)})\b").match(text.source, start)
                if not m:
                    raise NotApplicable(f"cannot locate the definition of {old!r}")
                text.replace(m.start(1), m.end(1), new)
            elif isinstance(node, ast.ExceptHandler):
                start = text.offset(*end_of(node.type)) if node.type else text.offset(node.lineno, node.col_offset)
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
            if text.source[start : start + len(old)] != old:
                raise NotApplicable(f"cannot locate keyword {old!r}")
            text.replace(start, start + len(old), new)


def _rename_docs(text: SourceText, tree: ast.Module, functions: Mapping[str, str]) -> None:
    """Function names mentioned in docstrings (doctest examples) and comments follow the rename."""
    if not functions:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(functions, key=len, reverse=True)) + r")\b")
    for doc in docstring_nodes(tree):
        start, end = text.node_span(doc)
        segment = text.source[start:end]
        new = pattern.sub(lambda m: functions[m.group(1)], segment)
        if new != segment:
            text.replace(start, end, new)
    for tok in source_tokens(text.source):
        if tok.type == tokenize.COMMENT:
            new = pattern.sub(lambda m: functions[m.group(1)], tok.string)
            if new != tok.string:
                start = text.char_offset(*tok.start)
                text.replace(start, start + len(tok.string), new)


def _expected_after_rename(tree: ast.Module, plan: RenamePlan, mapping: Mapping[str, str]) -> str:
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
        for doc in docstring_nodes(tree):
            assert isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)  # docstring_nodes' kind
            doc.value.value = pattern.sub(lambda m: functions[m.group(1)], doc.value.value)
    return dump_tree(tree)


def rename_with(source: str, keep: frozenset, choose: Callable[[RenamePlan, set[str]], dict[str, str]]) -> Transformed:
    tree = parse_source(source)
    plan = _plan_renames(tree, keep)
    taken = identifiers_in(source) | RESERVED
    mapping = choose(plan, taken)
    mapping = {o: n for o, n in mapping.items() if n and n != o}
    if not mapping:
        raise NotApplicable("no identifier can be renamed")
    if len(set(mapping.values())) != len(mapping) or set(mapping.values()) & taken:
        raise NotApplicable("new names are not fresh")  # pragma: no cover - choose() guarantees it
    text = SourceText(source)
    _rename_edits(text, plan, mapping)
    functions = {o: n for o, n in mapping.items() if plan.role[o] == "function"}
    _rename_docs(text, tree, functions)
    result = text.result()
    new_tree = checked(source, result)
    if dump_tree(new_tree) != _expected_after_rename(tree, plan, mapping):
        raise NotApplicable("renaming would change more than names")
    return Transformed(result, dict(mapping), sum(len(plan.occurrences[o]) for o in mapping))
