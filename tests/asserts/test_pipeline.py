"""`assistant asserts FILE`: focal parsing, candidate extraction, sandbox validation, the pytest file.

The end-to-end tests run the real embedded model on real fixture modules (tests/fixtures/asserts)
and then run the generated test file with pytest. The commands are registered on a small
Typer app here, as assistant/cli/app.py registers them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from assistant.asserts.candidates import (
    AssertsConfig,
    Candidate,
    doctest_candidates,
    doctest_code,
    extract_candidates,
    free_names,
)
from assistant.asserts.focal import import_root, parse_module, select
from assistant.asserts.render import FunctionReport, confirm, measure_coverage, relative_path_expr, render_test_file
from assistant.asserts.validate import ERRORED, FAILING, KEPT, make_target, validate
from assistant.cli.asserts.command import asserts, eval_asserts
from assistant.errors import UsageError
from assistant.guard import OneLineErrorGroup

FIXTURES = Path(__file__).parents[1] / "fixtures" / "asserts"

app = typer.Typer(cls=OneLineErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False)
eval_app = typer.Typer(cls=OneLineErrorGroup, no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.command("asserts")(asserts)
eval_app.command("asserts")(eval_asserts)
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def assert_one_line_error(result, *needles, code=None):
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output + result.stderr
    for n in needles:
        assert n in err, err


def copy_fixture(name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(FIXTURES / name, dest / name))


def run_pytest(test_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True,
        text=True,
        cwd=test_file.parent,
        timeout=120,
    )


def focal(path: Path, name: str):
    info = parse_module(path)
    return info, next(f for f in info.focal if f.name == name)


# -- focal functions ------------------------------------------------------------------------------


def test_focal_functions_methods_and_context():
    info = parse_module(FIXTURES / "mathutils.py")
    assert info.name == "mathutils" and info.imports == "import math"
    assert [f.name for f in select(info)] == ["add", "clamp", "is_palindrome", "hypotenuse"]
    add = info.focal[0]
    assert add.signature == "def add(a, b)" and add.docstring.startswith("Return the sum")
    assert add.source.startswith("def add(a, b):") and "return a + b" in add.source
    stack = parse_module(FIXTURES / "stack.py")
    names = [f.name for f in select(stack)]
    assert names == ["Stack.push", "Stack.pop", "Stack.peek", "Stack.is_empty", "Stack.size"]
    push = stack.focal[1]
    assert push.is_method and push.attr == "push" and push.class_name == "Stack"
    assert push.class_context.startswith("class Stack:") and "def __init__(self):" in push.class_context
    assert [f.name for f in select(stack, ["Stack"])] == names
    assert [f.name for f in select(info, ["_private_helper", "add"])] == ["_private_helper", "add"]


def test_focal_errors_are_one_line_with_the_fix(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n")
    with pytest.raises(UsageError, match=r"bad.py:1: syntax error"):
        parse_module(bad)
    with pytest.raises(UsageError, match="no function or method named 'nope'.*choose from: add"):
        select(parse_module(FIXTURES / "mathutils.py"), ["nope"])
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(UsageError, match="defines no public function"):
        select(parse_module(empty))
    with pytest.raises(UsageError, match="does not exist"):
        parse_module(tmp_path / "missing.py")


def test_import_root_walks_up_through_packages(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for p in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/mod.py"):
        (tmp_path / p).write_text("")
    assert import_root(tmp_path / "pkg" / "sub" / "mod.py") == (tmp_path.resolve(), "pkg.sub.mod")
    assert import_root(FIXTURES / "mathutils.py") == (FIXTURES.resolve(), "mathutils")


# -- candidates from model output (pure) ----------------------------------------------------------


def test_extract_candidates_from_messy_output():
    info, add = focal(FIXTURES / "mathutils.py", "add")
    text = (
        "Sure!\n```python\nfrom mathutils import add\nimport math\nassert add(1, 2) == 3\nassert add(1,2)==3\n"
        "assert add(-1, 1) == 0, 'msg'\nassert other(1) == 2\nassert True\nassert add\nassert add is not None\n"
        "x = 5\ny = 7\nassert add(x, 1) == 6\n"
        "This is prose, not code.\nassert add(2, 2) == 4\nassert add(0,\n```\n"
    )
    got = [c.code for c in extract_candidates(text, add, ["mathutils"])]
    assert got == [
        "assert add(1, 2) == 3",
        "assert add(-1, 1) == 0",
        "x = 5\nassert add(x, 1) == 6",
        "assert add(2, 2) == 4",
    ]


def test_method_candidates_carry_the_setup_they_need():
    info, peek = focal(FIXTURES / "stack.py", "Stack.peek")
    text = (
        "```python\ns = Stack()\nother = Stack()\nother.push(9)\ns.push(1)\nassert s.peek() == 1\ns.push(2)\n"
        "assert s.peek() == 2\nassert s.size() == 2\ndef test_in_a_function():\n    t = Stack()\n    t.push(3)\n"
        "    assert t.peek() == 3\n```"
    )
    got = [c.code for c in extract_candidates(text, peek)]
    assert got == [
        "s = Stack()\ns.push(1)\nassert s.peek() == 1",
        "s = Stack()\ns.push(1)\ns.push(2)\nassert s.peek() == 2",
        "t = Stack()\nt.push(3)\nassert t.peek() == 3",
    ]


def test_a_property_is_read_not_called(tmp_path):
    path = tmp_path / "box.py"
    path.write_text(
        "class Box:\n    def __init__(self, n):\n        self.n = n\n\n    @property\n    def double(self):\n        return 2 * self.n\n"
    )
    info = parse_module(path)
    prop = info.focal[-1]
    assert prop.name == "Box.double" and prop.is_property
    got = extract_candidates("b = Box(2)\nassert b.double == 4\nassert Box.double\n", prop)
    assert [c.code for c in got] == ["b = Box(2)\nassert b.double == 4", "assert Box.double"]
    # an ordinary function must be called: naming it is no test
    _, add = focal(FIXTURES / "mathutils.py", "add")
    assert extract_candidates("assert add\nassert callable(add)\nassert add(1, 1) == 2\n", add) == cands(
        "add", "assert add(1, 1) == 2"
    )


def test_doctest_examples_become_seed_candidates():
    _, add = focal(FIXTURES / "mathutils.py", "add")
    assert doctest_code(add) == "assert add(2, 3) == 5"
    _, size = focal(FIXTURES / "stack.py", "Stack.size")
    seeds = doctest_candidates(size, ["stack"])
    assert [(c.code, c.origin) for c in seeds] == [("s = Stack()\ns.push('a')\nassert s.size() == 1", "doctest")]
    assert free_names(seeds[0]) == {"Stack"}


# -- validation in the sandbox (no model) ---------------------------------------------------------


def cands(focal_name: str, *codes: str) -> list[Candidate]:
    out = []
    for code in codes:
        *setup, test = code.split("\n")
        out.append(Candidate(focal_name, tuple(setup), test, "model"))
    return out


def test_validation_keeps_passing_reports_failing_and_drops_errors(tmp_path):
    path = copy_fixture("buggy.py", tmp_path)
    cs = cands(
        "average",
        "assert average([1, 2, 3]) == 2.0",  # the documented behaviour: the bug makes it fail
        "assert average([2]) == 1.0",  # passes: it pins the buggy behaviour, as a regression oracle does
        "assert maximum([]) == 0",  # raises inside the module: failing, maybe a real bug
        "assert no_such_function(1) == 1",  # a made-up name: errored
        "assert average([1], 2) == 1",  # a wrong call: errored, not the module's fault
        "assert buggy.square(4) == 16",  # the module under its own name
    )
    v = validate(make_target(path), "buggy", cs, AssertsConfig(case_timeout_s=1))
    assert [x.status for x in v.verdicts] == [FAILING, KEPT, FAILING, ERRORED, ERRORED, KEPT]
    assert v.verdicts[0].detail == "returned 1.5"
    assert v.verdicts[2].reason == "raises IndexError"
    assert v.verdicts[3].reason == "NameError" and v.verdicts[4].reason == "TypeError"
    assert {"average", "maximum", "square"} <= set(v.names)


def test_import_side_effects_and_hangs_stay_in_the_sandbox(tmp_path, capfd):
    path = copy_fixture("noisy.py", tmp_path)
    cs = cands(
        "spin",
        "assert spin(1) == 0",
        "assert double(2) == 4",
        "import os\nos._exit(0)\nassert spin(0) == 0",
        "assert spin(0) == 0",
    )
    v = validate(make_target(path), "noisy", cs, AssertsConfig(case_timeout_s=0.3))
    assert [(x.status, x.reason) for x in v.verdicts] == [
        (ERRORED, "timeout"),
        (KEPT, ""),
        (ERRORED, "exited"),
        (KEPT, ""),
    ]
    assert "noisy" not in sys.modules
    assert "side effect" not in capfd.readouterr().out


def test_a_module_that_does_not_import_errors_every_candidate(tmp_path):
    path = tmp_path / "broken_import.py"
    path.write_text("import no_such_module_anywhere\n\ndef f(x):\n    return x\n")
    v = validate(make_target(path), "broken_import", cands("f", "assert f(1) == 1"), AssertsConfig())
    assert v.import_error and "ModuleNotFoundError" in v.import_error
    assert v.verdicts[0].status == ERRORED and v.verdicts[0].reason == "import failed"


def test_order_dependent_assertions_are_demoted_by_the_whole_file_run(tmp_path):
    path = tmp_path / "counter.py"
    path.write_text("_n = 0\n\n\ndef next_id():\n    global _n\n    _n += 1\n    return _n\n")
    cs = cands("next_id", "assert next_id() == 1", "assert next_id() > 0", "assert next_id() == 1")
    target, cfg = make_target(path), AssertsConfig()
    v = validate(target, "counter", cs, cfg)
    assert [x.status for x in v.verdicts] == [KEPT, KEPT, KEPT]  # each passes alone
    report = FunctionReport("next_id", cs, list(v.verdicts))
    confirm(target, "counter", [report], v.names, cfg)
    assert [x.status for x in report.verdicts] == [KEPT, KEPT, ERRORED]
    assert report.verdicts[2].reason == "fails in the test file"


def test_line_coverage_counts_what_the_kept_assertions_run_beyond_the_import(tmp_path):
    pytest.importorskip("coverage", reason="coverage.py is in the dev extra")
    path = copy_fixture("mathutils.py", tmp_path)
    cs = cands("add", "assert add(2, 3) == 5")
    report = FunctionReport("add", cs, [validate(make_target(path), "mathutils", cs, AssertsConfig()).verdicts[0]])
    c = measure_coverage(make_target(path), "mathutils", [report], ["add"], AssertsConfig())
    assert c.covered == c.import_only + 1  # the body of add: one line
    lines = path.read_text().splitlines()
    assert all(lines[n - 1].strip() != "return a + b" for n in c.missing)
    assert any(lines[n - 1].strip() == "return low" for n in c.missing)


def test_rendered_file_imports_only_what_assertions_use_and_passes_pytest(tmp_path):
    path = copy_fixture("stack.py", tmp_path / "src")
    cs = cands(
        "Stack.size", "stack = Stack()\nassert stack.size() == 0", "s = Stack()\ns.push(1)\nassert s.size() == 1"
    )
    out = tmp_path / "tests" / "test_stack_generated.py"
    out.parent.mkdir()
    rendered = render_test_file(
        make_target(path), "stack", [("Stack.size", cs)], ["Stack"], relative_path_expr(path, out), "doc"
    )
    out.write_text(rendered.source)
    assert "Stack = _module.Stack\n" in rendered.source and "stack = _module" not in rendered.source
    assert "'../src/stack.py'" in rendered.source
    assert sorted(rendered.lines.values()) == [0, 1]
    r = run_pytest(out)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def test_a_prompt_too_long_for_the_context_skips_the_model_but_keeps_doctests(tmp_path, lock):
    from assistant.asserts.pipeline import run_asserts
    from assistant.runtime.engine import Engine, EngineConfig
    from assistant.store.resolve import HashCache, resolve

    path = copy_fixture("mathutils.py", tmp_path)
    info = parse_module(path)
    model = resolve("smollm2-135m-instruct", lock, HashCache(tmp_path / "h.json"))
    with Engine(model, EngineConfig(n_ctx=64, n_threads=1)) as tiny:
        report = run_asserts(tiny, info, select(info), AssertsConfig())
    assert all("does not fit" in f.note or "context window" in f.note for f in report.functions)
    assert [c.code for f in report.functions for c in f.kept()] == ["assert add(2, 3) == 5"]
    assert report.test_source and "def test_add():" in report.test_source


# -- the command: bad input -----------------------------------------------------------------------


def test_bad_input_gets_one_line_errors_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ndef f(:\n")
    assert_one_line_error(run("asserts", bad), "bad.py:2: syntax error", code=2)
    assert_one_line_error(run("asserts", tmp_path / "nope.py"), "does not exist", code=2)
    mod = copy_fixture("mathutils.py", tmp_path)
    assert_one_line_error(run("asserts", mod, "--function", "nope"), "choose from", code=2)
    existing = tmp_path / "existing.py"
    existing.write_text("# mine\n")
    assert_one_line_error(run("asserts", mod, "--out", existing), "already exists", "--force", code=2)
    assert existing.read_text() == "# mine\n"
    assert_one_line_error(run("asserts", mod, "--out", mod), "the module itself", code=2)
    assert_one_line_error(run("asserts", mod, "--out", "-", "--json"), "both print to stdout", code=2)
    assert not (tmp_path / "tests").exists()


# -- end to end on the embedded model -------------------------------------------------------------


@pytest.mark.slow
def test_pure_functions_end_to_end_with_coverage(tmp_path):
    mod = copy_fixture("mathutils.py", tmp_path / "pkgless")
    out = tmp_path / "tests" / "test_mathutils_generated.py"
    r = run("asserts", mod, "--out", out, "--coverage", "--json", "--threads", "1", "--per-function", "4")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    t = d["totals"]
    assert t["generated"] == t["kept"] + t["failing"] + t["errored"] and t["kept"] >= 1
    assert [f["name"] for f in d["functions"]] == ["add", "clamp", "is_palindrome", "hypotenuse"]
    add = d["functions"][0]
    assert add["candidates"][0] == {
        "code": "assert add(2, 3) == 5",
        "origin": "doctest",
        "status": "kept",
        "reason": "",
        "detail": "",
    }
    cov = d["coverage"]
    assert 0 < cov["percent"] <= 100 and cov["statements"] > 10 and cov["import_only"] < cov["covered"]
    assert d["out"] == str(out)
    text = out.read_text()
    assert "def test_add():" in text and "assert add(2, 3) == 5" in text
    kept = [c["code"] for f in d["functions"] for c in f["candidates"] if c["status"] == "kept"]
    failing = [c["code"] for f in d["functions"] for c in f["candidates"] if c["status"] == "failing"]
    assert all(c.splitlines()[-1] in text for c in kept)
    kept_lines = {c.splitlines()[-1] for c in kept}
    assert not any(f"    {c.splitlines()[-1]}\n" in text for c in failing if c.splitlines()[-1] not in kept_lines)
    result = run_pytest(out)
    assert result.returncode == 0, result.stdout + result.stderr
    # never overwritten without --force; with it, yes
    assert_one_line_error(run("asserts", mod, "--out", out), "already exists", code=2)


@pytest.mark.slow
def test_class_methods_end_to_end_table_and_stdout(tmp_path):
    mod = copy_fixture("stack.py", tmp_path)
    r = run(
        "asserts",
        mod,
        "--function",
        "Stack.size",
        "--function",
        "Stack.push",
        "--out",
        "-",
        "--threads",
        "1",
        "--per-function",
        "3",
    )
    assert r.exit_code == 0, r.stderr
    assert "def test_Stack_size():" in r.stdout and "Stack = _module.Stack" in r.stdout
    assert "s.push('a')" in r.stdout  # the doctest's setup came along
    # the table goes to stderr when the tests go to stdout
    assert "Stack.size" in r.stderr and "generated" in r.stderr and "kept" in r.stderr
    out = tmp_path / "test_written.py"
    out.write_text(r.stdout)
    result = run_pytest(out)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_bug_is_reported_failing_and_never_pinned(tmp_path):
    mod = copy_fixture("buggy.py", tmp_path)
    out = tmp_path / "test_buggy_generated.py"
    r = run("asserts", mod, "--out", out, "--json", "--threads", "1", "--per-function", "3")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    average = next(f for f in d["functions"] if f["name"] == "average")
    doc = average["candidates"][0]
    assert doc["origin"] == "doctest" and doc["status"] == "failing" and doc["detail"] == "returned 1.5"
    assert run_pytest(out).returncode == 0
    # Fix the bug: every kept assertion still holds, so none of them encoded the bug as passing.
    mod.write_text(mod.read_text().replace("(len(numbers) + 1)", "len(numbers)"))
    result = run_pytest(out)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_module_that_prints_and_sleeps_at_import(tmp_path):
    mod = copy_fixture("noisy.py", tmp_path)
    out = tmp_path / "t" / "test_noisy_generated.py"
    r = run("asserts", mod, "--out", out, "--timeout", "0.3", "--threads", "1", "--per-function", "3")
    assert r.exit_code == 0, r.stderr
    assert "side effect" not in r.stdout + r.stderr and "noisy" not in sys.modules
    assert "spin" in r.stdout and "timeout" in r.stdout  # hangs are dropped with the reason counted
    result = run_pytest(out)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_markup_in_an_import_error_is_printed_not_parsed(tmp_path):
    """rich reads `[/red]` as a closing tag: unescaped, the report crashed with a MarkupError."""
    mod = tmp_path / "broken.py"
    mod.write_text(
        'def add(a, b):\n    """>>> add(1, 2)\n    3\n    """\n    return a + b\n\n\n'
        'raise RuntimeError("config [/red] missing [b, a]")\n'
    )
    r = run("asserts", mod, "--out", tmp_path / "t.py", "--threads", "1", "--per-function", "1", "--tries", "1")
    assert_one_line_error(r, "did not import in the sandbox", "[/red] missing [b, a]", code=1)
    assert "config [/red] missing [b, a]" in " ".join(r.stdout.split())
    assert not (tmp_path / "t.py").exists()


def test_report_view_escapes_names_paths_and_errors(tmp_path, capsys, monkeypatch):
    from assistant.asserts.pipeline import AssertsReport
    from assistant.asserts.validate import Verdict
    from assistant.cli.asserts.views import print_eval, print_report

    monkeypatch.setenv("COLUMNS", "200")
    c = Candidate("swap", ("x = [b, a]",), "assert swap(x) == [a, b]", "model")
    fn = FunctionReport(
        "swap", [c, c], [Verdict(FAILING, "AssertionError", "returned [b, a]"), Verdict(ERRORED, "[/x] odd reason", "")]
    )
    report = AssertsReport(
        str(tmp_path / "m[/i].py"), {"name": "model [b, a]"}, [fn], import_error="ImportError: [/bold] no [b, a]"
    )
    print_report(report)
    out = capsys.readouterr().out
    for text in (
        "m[/i].py",
        "model [b, a]",
        "ImportError: [/bold] no [b, a]",
        "[/x] odd reason 1",
        "assert swap(x) == [a, b]  # returned [b, a]",
    ):
        assert text in out, text
    summary = {
        "model": {"name": "m [b, a]"},
        "examples": 1,
        "split": "test",
        "ms_per_sample": 1.0,
        "no_assertion": 0,
        "ground_truth": {"exact_match": 0.5, "similarity": 0.5},
        "reference": {
            "name": "[/r]",
            "exact_match": 0.1,
            "similarity": 0.2,
            "ms_per_sample": 2.0,
            "ground_truth": {"exact_match": 0.3, "similarity": 0.4},
        },
    }
    print_eval(summary)
    out = capsys.readouterr().out
    assert "m [b, a] on 1 test" in out and "reference [/r]" in out and "[/r] vs ground truth" in out
