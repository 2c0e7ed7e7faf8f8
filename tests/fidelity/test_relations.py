"""Metamorphic relations: hand-made cases that pin each rewrite down, then property tests over
real functions (HumanEval's solutions, run against their hidden tests in the real sandbox, and
the standard library's own functions)."""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from assistant.errors import UsageError
from assistant.evaluation.humaneval import hidden_test_program, load_problems
from assistant.fidelity.relations.registry import (
    RELATIONS,
    NotApplicable,
    apply_relation,
    default_relations,
    parse_relations,
)
from assistant.fidelity.relations.rewrites import negate
from assistant.fidelity.tasks import names_tests_use, normalize_code
from assistant.sandbox.limits import Limits
from assistant.sandbox.runner import run_program

PROBLEMS = load_problems()
STDLIB = Path(sysconfig.get_paths()["stdlib"])
STDLIB_MODULES = (
    "textwrap",
    "heapq",
    "bisect",
    "statistics",
    "shlex",
    "fnmatch",
    "posixpath",
    "colorsys",
    "calendar",
    "difflib",
    "base64",
    "glob",
    "quopri",
    "string",
    "shutil",
    "tokenize",
    "pprint",
    "getopt",
    "trace",
    "pstats",
)


def d(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


def apply(name: str, code: str, seed: int = 0, keep=()) -> str:
    return apply_relation(name, d(code), seed, keep).source


def stdlib_functions() -> list[str]:
    """Top-level, undecorated functions and classes of pure-Python standard-library modules, as sources."""
    out = []
    for mod in STDLIB_MODULES:
        source = (STDLIB / f"{mod}.py").read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.decorator_list:
                seg = ast.get_source_segment(source, node)
                if seg:
                    out.append(seg + "\n")
    return out


STDLIB_FUNCTIONS = stdlib_functions()


def applicable(name: str, sources: list[str], keep=lambda s: ()) -> list[str]:
    found = []
    for s in sources:
        try:
            apply_relation(name, s, 0, keep(s))
            found.append(s)
        except NotApplicable:
            pass
    return found


# -- identifier renaming -----------------------------------------------------------------------------


def test_rename_synonyms_renames_params_locals_function_and_callers():
    src = """
    def count_words(text, sep=" "):
        '''Count words. >>> count_words("a b")'''
        words = text.split(sep)
        return len(words)

    def main():
        return count_words(text="x y", sep=" ")  # count_words by keyword
    """
    t = apply_relation("rename_synonyms", d(src), 0)
    out = t.source
    new_fn = t.renames["count_words"]
    assert f"def {new_fn}(" in out and f">>> {new_fn}(" in out and f"# {new_fn} by keyword" in out
    assert t.renames["text"] in out and f"{t.renames['text']}=" in out  # the caller's keyword follows
    assert "words =" not in out and "len(words)" not in out
    assert normalize_code(out, t.inverse()) == normalize_code(d(src))


def test_rename_neutral_uses_fresh_neutral_names():
    src = """
    def f(a, b):
        arg0 = a + b
        return arg0 * 2
    """
    t = apply_relation("rename_neutral", d(src), 0)
    assert set(t.renames.values()) == {"arg1", "arg2", "var0", "func0"}  # arg0 is taken: skipped
    assert ast.dump(ast.parse(t.source)) != ast.dump(ast.parse(d(src)))
    assert normalize_code(t.source, t.inverse()) == normalize_code(d(src))


def test_rename_leaves_globals_builtins_attributes_and_keep_alone():
    src = """
    import os
    LIMIT = 3

    def helper(path):
        total = len(path) + LIMIT
        return os.path.join(path, str(total)).upper()

    def entry(values):
        return [helper(v) for v in values]
    """
    t = apply_relation("rename_neutral", d(src), 0, keep={"helper"})
    assert "LIMIT" in t.source and "os.path.join" in t.source and ".upper()" in t.source and "len(" in t.source
    assert "def helper(" in t.source and "helper(" in t.source  # kept: a test calls it by name
    assert "entry" not in t.source  # the entry point itself was renamed
    assert set(t.renames) == {"path", "total", "values", "v", "entry"}


def test_rename_respects_scopes_it_cannot_follow():
    src = """
    def outer(x):
        global G
        G = x
        class K:
            attr = 1
        y = f"{x}"
        return locals_free(x, K.attr)

    def uses_locals(z):
        return locals()[ "z" ]
    """
    t = apply_relation("rename_neutral", d(src), 0)
    assert "G = " in t.source  # global: not renamed
    assert "attr = 1" in t.source and "K.attr" in t.source  # class attribute
    assert 'f"{x}"' in t.source and "def func0(x)" in t.source  # x appears in an f-string: kept everywhere
    assert "locals()" in t.source and "(z)" in t.source  # dynamic lookup: that function untouched
    assert "y" not in t.renames or t.renames["y"] in t.source


def test_rename_comprehension_variable_does_not_capture_a_global():
    src = """
    x = 10

    def f(items):
        doubled = [x * 2 for x in items]
        return doubled, x
    """
    t = apply_relation("rename_neutral", d(src), 0)
    assert t.source.rstrip().endswith(", x")  # the global x after the comprehension is untouched
    assert "x" not in t.renames


# -- dead code, documentation, layout -----------------------------------------------------------------


def test_dead_code_goes_after_the_docstring_of_every_function():
    src = '''
    def f(a):
        """Doc."""
        return a

    def g():
        pass
    '''
    out = apply("dead_code", src, seed=3)
    tree = ast.parse(out)
    for fn in tree.body:
        assert any("_unused" in ast.unparse(s) for s in fn.body)
    assert out.index('"""Doc."""') < out.index("_unused")


def test_reword_docs_keeps_doctest_examples_and_code():
    src = '''
    def f(n):
        """Return the largest given value.
        >>> f(3)
        Return 3
        """
        # compute the value
        return n
    '''
    out = apply("reword_docs", src)
    assert "Produce the biggest provided value." in out
    assert ">>> f(3)\n    Return 3" in out  # the example and its expected output are untouched
    assert "# calculate the value" in out and "return n" in out


def test_remove_comments_and_docstrings():
    src = '''
    def f(n):  # trailing
        """Doc."""
        # alone
        return n
    '''
    assert apply("remove_comments", src) == d('''
    def f(n):
        """Doc."""
        return n
    ''')
    assert apply("remove_docstrings", 'def f():\n    """Only a docstring."""\n') == "def f():\n    pass\n"


def test_formatting_reindents_and_tightens_commas_only():
    src = '''
    def f(a, b):
        """Doc
        continues."""
        s = """keep
            this string"""
        return [a, b, s]
    '''
    out = apply("formatting", src)
    assert out.splitlines()[1] == '  """Doc' and out.splitlines()[2] == '  continues."""'  # moves with its statement
    assert '"""keep\n        this string"""' in out  # a string's content is not layout
    assert "return [a,b,s]" in out and "def f(a,b):" in out


# -- equivalent rewrites ------------------------------------------------------------------------------


def test_loop_to_comprehension_and_back():
    loop = """
    def f(xs):
        out = []
        for x in xs:
            if x > 0:
                out.append(x * 2)
        return out
    """
    assert "out = [x * 2 for x in xs if x > 0]" in apply("loop_comprehension", loop)
    comp = """
    def g(xs):
        return [x + 1 for x in xs if x]
    """
    out = apply("loop_comprehension", comp)
    assert "for x in xs:" in out and ".append(x + 1)" in out and "return _acc0" in out


def test_loop_whose_variable_is_used_later_is_not_rewritten():
    src = """
    def f(xs):
        out = []
        for x in xs:
            out.append(x)
        return out, x
    """
    with pytest.raises(NotApplicable):
        apply("loop_comprehension", src)


def test_swap_if_else_negates_exactly():
    src = """
    def f(a, b):
        if a == b:
            r = 1
        else:
            r = 2
        return r if a < b else -r
    """
    out = apply("swap_if_else", src)
    assert "if a != b:\n        r = 2\n    else:\n        r = 1" in out
    assert "return (-r if not a < b else r)" in out  # order comparisons are wrapped, never flipped (NaN)
    assert ast.unparse(negate(ast.parse("not x", mode="eval").body)) == "x"
    assert ast.unparse(negate(ast.parse("a in b", mode="eval").body)) == "a not in b"
    assert ast.unparse(negate(ast.parse("a and b", mode="eval").body)) == "not (a and b)"


def test_elif_chains_are_left_alone():
    with pytest.raises(NotApplicable):
        apply(
            "swap_if_else",
            "def f(a):\n    if a:\n        return 1\n    elif a is None:\n        return 2\n    else:\n        return 3\n",
        )


def test_reorder_swaps_only_independent_statements():
    src = """
    def f(a):
        x = len(a)
        y = 2
        z = x + y
        w = print(z)
        v = 1
        return sorted(a, key=abs, reverse=True)
    """
    out = apply("reorder_statements", src)
    assert out.index("y = 2") < out.index("x = len(a)")  # independent: swapped
    assert out.index("z = x + y") < out.index("w = print(z)") < out.index("v = 1")  # dependent / a call: kept
    assert "sorted(a, reverse=True, key=abs)" in out


# -- registry ----------------------------------------------------------------------------------------


def test_registry_and_relation_parsing():
    assert parse_relations(None) == default_relations() == parse_relations("default")
    assert "remove_docstrings" not in default_relations() and parse_relations("all") == list(RELATIONS)
    assert parse_relations("dead_code, formatting,dead_code") == ["dead_code", "formatting"]
    with pytest.raises(UsageError, match="unknown relation 'nope'.*choose from rename_synonyms"):
        parse_relations("dead_code,nope")


def test_relations_are_deterministic_and_seeded():
    for name in RELATIONS:
        src = HE_APPLICABLE[name][0]
        assert apply_relation(name, src, 5).source == apply_relation(name, src, 5).source
    src = PROBLEMS[0].prompt + PROBLEMS[0].canonical_solution
    assert apply_relation("rename_synonyms", src, 0).source != apply_relation("rename_synonyms", src, 1).source


def test_nothing_to_do_and_bad_input_are_not_applicable():
    for name in RELATIONS:
        with pytest.raises(NotApplicable):
            apply_relation(name, "x = (", 0)
    with pytest.raises(NotApplicable):
        apply_relation("swap_if_else", "x = 1\n", 0)


# -- properties over real code ------------------------------------------------------------------------

BY_SOURCE = {p.prompt + p.canonical_solution: p for p in PROBLEMS}


class _Lazy(dict):
    """relation -> the sources it applies to, computed on first use (a subset run pays for its subset)."""

    def __init__(self, sources, keep=lambda s: ()):
        super().__init__()
        self.sources, self.keep = sources, keep

    def __missing__(self, name):
        self[name] = applicable(name, self.sources, self.keep)
        return self[name]


HE_APPLICABLE = _Lazy(list(BY_SOURCE), lambda s: names_tests_use(BY_SOURCE[s]))
STD_APPLICABLE = _Lazy(STDLIB_FUNCTIONS)
PROPERTY = settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def test_every_relation_applies_to_real_code():
    for name in RELATIONS:
        assert len(HE_APPLICABLE[name]) >= (2 if name == "remove_comments" else 15), name  # few comments in HumanEval
        assert len(STD_APPLICABLE[name]) >= 10, name


def _check_parses_and_differs(name: str, source: str, seed: int, keep=()) -> str:
    try:
        out = apply_relation(name, source, seed, keep)
    except NotApplicable:
        assume(False)  # a rare seed can make a rewrite unsafe; the relation said so
    assert out.source != source
    compile(ast.parse(out.source), "<relation>", "exec")
    if out.renames:
        assert len(set(out.renames.values())) == len(out.renames)
        assert normalize_code(out.source, out.inverse()) == normalize_code(source)  # names map back exactly
    return out


@pytest.mark.parametrize("name", list(RELATIONS))
def test_humaneval_solutions_keep_passing_their_hidden_tests(name):
    @PROPERTY
    @given(source=st.sampled_from(HE_APPLICABLE[name]), seed=st.integers(0, 2**16))
    def prop(source, seed):
        problem = BY_SOURCE[source]
        out = _check_parses_and_differs(name, source, seed, names_tests_use(problem))
        entry = out.renames.get(problem.entry_point, problem.entry_point)
        program = hidden_test_program(problem.__class__(problem.task_id, "", entry, problem.test), out.source)
        result = run_program(program, Limits(timeout_s=20))
        assert result.passed, f"{problem.task_id} under {name}: {result.detail}\n{out.source}"

    prop()


@pytest.mark.parametrize("name", list(RELATIONS))
def test_standard_library_functions_still_parse_and_differ(name):
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(source=st.sampled_from(STD_APPLICABLE[name]), seed=st.integers(0, 2**16))
    def prop(source, seed):
        _check_parses_and_differs(name, source, seed)

    prop()


def test_layout_and_comment_relations_keep_the_syntax_tree():
    for name in ("formatting", "remove_comments"):
        for source in STD_APPLICABLE[name][:40]:
            out = apply_relation(name, source, random.Random(0).randrange(100)).source
            strip = lambda s: ast.dump(ast.parse(normalize_code(s)))
            assert strip(out) == strip(source)
