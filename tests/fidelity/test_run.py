"""`assistant fidelity`: its pure metrics, its tasks over the real sandbox, and end to end with the
real embedded model, a deliberately different re-quantization of it, and the real CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from assistant.cli.fidelity.command import fidelity
from assistant.cli.fidelity.views import markdown, print_report
from assistant.evaluation.humaneval import DatasetError, load_problems
from assistant.fidelity import run as fid
from assistant.fidelity.scoring import VocabCheck, chunk_stats, compare_vocab
from assistant.fidelity.tasks import (
    ORIGINAL,
    AssertTask,
    CompletionTask,
    Judgement,
    Variant,
    first_assert,
    load_assert_items,
    marked_program,
    normalize_assert,
    normalize_code,
    split_marked,
)
from assistant.guard import OneLineErrorGroup as _Group
from assistant.runtime.engine import Engine, EngineConfig
from assistant.sandbox.limits import Limits
from assistant.sandbox.pool import run_many
from assistant.store.resolve import HashCache, resolve
from export.requantize import requantize

PROBLEMS = load_problems()
MODEL = "smollm2-135m-instruct"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ASSERT_ROWS = [
    {
        "id": "add",
        "target": "assert result == 5",
        "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\n\ndef test_add():\n    result = add(2, 3)\n    <AssertPlaceHolder>\n',
    },
    {
        "id": "rev",
        "target": "assert out == 'c b a'",
        "prompt": "def reverse_words(text):\n    words = text.split()\n    return ' '.join(reversed(words))\n\n\ndef test_reverse_words():\n    out = reverse_words('a b c')\n    <AssertPlaceHolder>\n",
    },
]


def make_app() -> typer.Typer:
    """The registration the lead will do in assistant/cli/app.py, with the CLI's error handling."""
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """Test app."""

    app.command("fidelity")(fidelity)
    return app


runner = CliRunner()


def invoke(*args):
    return runner.invoke(make_app(), ["fidelity", *args])


def run_programs(programs):
    return run_many(programs, Limits(timeout_s=10))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_one_line_error(r, *needles, code=None):
    assert r.exit_code != 0 and (code is None or r.exit_code == code), (r.exit_code, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output + r.stderr, err
    for n in needles:
        assert n in err, err


# -- pure parts ---------------------------------------------------------------------------------------


def logits(*probs):
    return np.log(np.asarray(probs, dtype=np.float64) + 1e-30)


def test_jsd_is_exact_symmetric_and_bounded():
    p, q = logits([0.5, 0.5, 0.0]), logits([0.0, 0.5, 0.5])
    s = chunk_stats(p, q, 0.9)
    assert s.jsd == pytest.approx(0.5, abs=1e-6)  # M = (.25, .5, .25): each KL is half a bit
    assert chunk_stats(q, p, 0.9).jsd == pytest.approx(s.jsd)
    disjoint = chunk_stats(logits([1.0, 0.0]), logits([0.0, 1.0]), 0.9)
    assert disjoint.jsd == pytest.approx(1.0, abs=1e-6) and disjoint.top1 == 0.0
    same = chunk_stats(p, p, 0.9)
    assert same.jsd == 0.0 and same.top1 == 1.0 and same.cae == 0.0


def test_high_confidence_preservation_and_calibration_gap():
    teacher = logits([0.95, 0.05], [0.95, 0.05], [0.5, 0.5])
    student = logits([0.92, 0.08], [0.60, 0.40], [0.5, 0.5])
    s = chunk_stats(teacher, student, 0.9)
    assert s.positions == 3 and s.hc_positions == 2 and s.hc_kept == 1 and s.hcp == 0.5
    assert s.top1 == 1.0  # the student's top token is the teacher's everywhere (ties go to the first)
    assert s.cae == pytest.approx((abs(0.95 * 2 - (0.92 + 0.60)) + 0.0) / 3)
    assert [c["n"] for c in s.curve()] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert s.add(s).positions == 6 and s.add(s).hcp == 0.5


def _result(item, relation, t_norm, s_norm, t_pass, s_pass, t_sig=None, s_sig=None):
    def out(norm, passed, sig):
        return fid.Output(norm, 1, "stop", Judgement(norm, passed, sig))

    return fid.VariantResult(Variant(item, relation, ""), out(t_norm, t_pass, t_sig), out(s_norm, s_pass, s_sig), None)


def test_summaries_ratios_and_counts():
    results = [
        _result("a", ORIGINAL, "x", "x", True, True, "1", "1"),
        _result("b", ORIGINAL, "y", "z", True, True, "1", "1"),
        _result("a", "dead_code", "x", "w", True, False, "1", "2"),
        _result("b", "dead_code", "y2", "z", False, False, "2", "2"),
    ]
    original, [rel], overall = fid.summarize(
        results, [fid.Skip("c", "dead_code", "not applicable")], ["dead_code"], executes=True
    )
    assert original.n == 2 and original.agree_exact_original == 0.5 and original.agree_exec_original == 1.0
    assert rel.n == 2 and rel.skipped == {"not applicable": 1}
    assert rel.teacher.pass_original == 1.0 and rel.teacher.pass_transformed == 0.5 and rel.teacher.drop == 0.5
    assert rel.student.drop == 1.0 and rel.drop_ratio == 2.0
    assert rel.teacher.keeps_exact == 0.5 and rel.teacher.keeps_exec == 0.5 and rel.student.keeps_exec == 0.0
    assert rel.flip_ratio == 2.0 and rel.agree_exec_transformed == 0.5 and rel.agreement_drop == 0.5
    assert overall.n == 2 and overall.skipped == {"not applicable": 1}
    same = [
        _result("a", ORIGINAL, "x", "x", True, True, "1", "1"),
        _result("a", "dead_code", "x", "x", True, True, "1", "1"),
    ]
    _, [rel], _ = fid.summarize(same, [], ["dead_code"], executes=True)
    assert rel.drop_ratio is None and rel.flip_ratio is None  # nothing dropped: no ratio to take


def test_normalization_maps_renames_back():
    out = 'def func0(arg0):\n    """Doc."""\n    return arg0 + 1  # c\n'
    assert normalize_code(out, {"func0": "inc", "arg0": "x"}) == normalize_code("def inc(x):\n    return x+1\n")
    assert normalize_code("    return x\n") == "return x"  # an indented body still normalizes
    assert normalize_code("def (") == "def ("
    assert first_assert("Sure!\n```python\nassert f(1) == 2\n```") == "assert f(1) == 2"
    assert first_assert("assert (f(1) ==\n        2)\nmore") == "assert f(1) == 2"
    assert first_assert("no assert here") is None
    assert (
        first_assert("    self.assertEqual(w.wrap('a b'),\n                     ['a b'])\n")
        == "self.assertEqual(w.wrap('a b'), ['a b'])"
    )
    assert first_assert("<AssertPlaceHolder>\nself.fail('x')") == "self.fail('x')"
    assert normalize_assert("    self.assertTrue(var0)", {"var0": "ok"}) == "self.assertTrue(ok)"
    assert normalize_assert("assert var0 == 5", {"var0": "result"}) == "assert result == 5"


def test_assert_dataset_schema(tmp_path):
    items = load_assert_items(write_jsonl(tmp_path / "a.jsonl", ASSERT_ROWS))
    assert [i.id for i in items] == ["add", "rev"] and items[0].mask == "<AssertPlaceHolder>"
    custom = load_assert_items(
        write_jsonl(tmp_path / "m.jsonl", [{"prompt": "x = 1\n<MASK>\n", "target": "assert x", "mask": "<MASK>"}])
    )
    assert custom[0].id == "1" and custom[0].mask == "<MASK>"
    bad = [
        ("not json\n", "line 1: bad JSON"),
        ('{"prompt": "x"}\n', "missing or empty fields ['target']"),
        ('{"prompt": "x = 1", "target": "assert x"}\n', "must hold the mask '<AssertPlaceHolder>' exactly once"),
        ("\n", "holds no items"),
    ]
    for text, message in bad:
        (tmp_path / "b.jsonl").write_text(text)
        with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_assert_items(tmp_path / "b.jsonl")


def test_mined_dataset_directory_is_read_through_assert_dataset(tmp_path):
    """The hook to assistant.asserts.dataset: a built dataset directory works as --dataset."""
    ex = {
        "id": "t.py::T.test_wrap",
        "file": "stdlib:test/t.py",
        "split": "test",
        "focal_file": "stdlib:textwrap.py",
        "focal_name": "wrap",
        "focal": "def wrap(text, width=70):\n    return [text]\n",
        "prefix": "def test_wrap(self):\n    out = textwrap.wrap('a b')\n    <AssertPlaceHolder>\n",
        "assertion": "self.assertEqual(out, ['a b'])",
    }
    (tmp_path / "manifest.json").write_text("{}")
    write_jsonl(tmp_path / "test.jsonl", [ex])
    [item] = load_assert_items(tmp_path)
    assert item.id == ex["id"] and item.target == ex["assertion"] and item.prompt.count("<AssertPlaceHolder>") == 1
    variants, _ = AssertTask([item]).variants(["rename_neutral"], 0)
    renamed = variants[1]
    assert "def wrap(arg0, arg1=70)" in renamed.text  # wrap is also called as textwrap.wrap: its name stays
    assert renamed.renames["out"] in renamed.text
    j = AssertTask([item]).judge([renamed], [f"self.assertEqual({renamed.renames['out']}, ['a b'])"], "chat")
    assert j[0].passed


def test_asserts_variants_keep_the_mask_and_the_target():
    task = AssertTask([i for i in load_assert_items_from_rows()])
    variants, skips = task.variants(["rename_neutral", "loop_comprehension"], 0)
    renamed = [v for v in variants if v.relation == "rename_neutral"]
    assert len(renamed) == 2 and all(v.text.count("<AssertPlaceHolder>") == 1 for v in renamed)
    assert "func0(" in renamed[0].text and renamed[0].renames["result"] in renamed[0].text
    assert {(s.item_id, s.reason) for s in skips} == {("add", "not applicable"), ("rev", "not applicable")}
    j = task.judge(renamed, ["```python\nassert var0 == 5\n```", "assert x"], "chat")
    assert j[0].passed and j[0].normalized == "assert result == 5" and not j[1].passed
    assert "has been replaced by <AssertPlaceHolder>" in task.request(renamed[0], "chat")


def load_assert_items_from_rows():
    from assistant.fidelity.tasks import AssertItem

    return [AssertItem(r["id"], r["prompt"], r["target"]) for r in ASSERT_ROWS]


def test_marker_cut_recovers_every_humaneval_prompt():
    for p in PROBLEMS:
        prompt, program = split_marked(marked_program(p))
        assert prompt == p.prompt and program == p.prompt + p.canonical_solution


def test_completion_variants_are_checked_against_the_hidden_tests():
    task = CompletionTask(PROBLEMS[:7], run_programs)
    variants, skips = task.variants(["rename_neutral", "dead_code", "loop_comprehension"], 0)
    originals = [v for v in variants if v.relation == ORIGINAL]
    assert [v.item_id for v in originals] == [p.task_id for p in PROBLEMS[:7]]
    for v in variants:
        if v.relation == ORIGINAL:
            continue
        source = next(p for p in PROBLEMS if p.task_id == v.item_id)
        assert v.text != source.prompt and v.problem.prompt == v.text and v.verified
        assert v.problem.entry_point == v.renames.get(source.entry_point, source.entry_point)
    assert sum(v.relation == "dead_code" for v in variants) == 7
    # HumanEval/6's comprehension is in its solution, not its prompt: nothing for the models to see
    assert ("HumanEval/6", "loop_comprehension", "prompt unchanged") in {
        (s.item_id, s.relation, s.reason) for s in skips
    }
    # a broken relation output is caught by the hidden tests, not passed on to the models
    broken = CompletionTask(PROBLEMS[:1], lambda programs: [type("R", (), {"passed": False})() for _ in programs])
    variants, skips = broken.variants(["dead_code"], 0)
    assert [v.relation for v in variants] == [ORIGINAL] and skips[0].reason == "breaks the tests"


def test_completion_judgement_executes_in_the_sandbox():
    p = PROBLEMS[2]  # truncate_number
    task = CompletionTask([p], run_programs)
    v = Variant(p.task_id, ORIGINAL, p.prompt, problem=p)
    good = f"```python\n{p.prompt}{p.canonical_solution}```"
    also_good = "```python\ndef truncate_number(number: float) -> float:\n    return number - int(number)\n```"
    wrong = "```python\ndef truncate_number(number: float) -> float:\n    return 0.5\n```"
    j = task.judge([v, v, v, v], [good, also_good, wrong, "no code at all"], "chat")
    assert [x.passed for x in j] == [True, True, False, False]
    assert j[0].signature == j[1].signature != j[2].signature  # same behaviour, different text
    assert j[0].normalized != j[1].normalized and j[3].issue


# -- command-line errors (no model run) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles, code",
    [
        (["--student", MODEL, "--relations", "dead_code,nope"], ["unknown relation 'nope'", "choose from"], 2),
        (["--student", MODEL, "--task", "asserts"], ["needs an assertion dataset", '"prompt"', '"target"'], 2),
        (["--student", MODEL, "--task", "summaries"], ["--task must be completion or asserts"], 2),
        (["--student", MODEL, "--confidence", "1.5"], ["--confidence must be between 0 and 1"], 2),
        (["--student", MODEL, "--plot", "/nonexistent-dir/x.png"], ["--plot", "does not exist"], 2),
        (["--student", "no-such-model", "--limit", "1"], ["unknown model 'no-such-model'", "known models"], 1),
        (["--student", "/tmp/definitely-missing.gguf", "--limit", "1"], ["definitely-missing.gguf"], 1),
        (
            ["--student", MODEL, "--ids", "HumanEval/0,HumanEval/999"],
            ["--ids names unknown items HumanEval/999", "HumanEval/0"],
            2,
        ),
    ],
)
def test_bad_input_is_one_line_and_says_the_fix(args, needles, code):
    assert_one_line_error(invoke(*args), *needles, code=code)


def test_bad_assert_dataset_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x = 1", "target": "assert x"}\n')
    assert_one_line_error(
        invoke("--student", MODEL, "--task", "asserts", "--dataset", str(bad)), "line 1", "exactly once"
    )


# -- end to end with real models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_run(tmp_path_factory):
    """The sanity check through the CLI: the teacher against itself; JSON, --out and --plot."""
    d = tmp_path_factory.mktemp("fidelity")
    files = {"out": d / "report.json", "plot": d / "report.png"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSISTANT_CACHE", str(d / "cache"))
        mp.delenv("ASSISTANT_LOCK", raising=False)
        r = invoke(
            "--teacher",
            MODEL,
            "--student",
            MODEL,
            "--limit",
            "1",
            "--relations",
            "rename_synonyms,dead_code",
            "--max-tokens",
            "48",
            "--json",
            "--out",
            str(files["out"]),
            "--plot",
            str(files["plot"]),
        )
    assert r.exit_code == 0, r.stderr + r.stdout
    return json.loads(r.stdout), files


@pytest.mark.slow
def test_teacher_against_itself_agrees_everywhere(self_run):
    report, files = self_run
    assert report["teacher"]["sha256"] == report["student"]["sha256"] and report["vocab"]["shared"]
    assert report["items"] == 1 and report["variants"] == 3 and len(report["rows"]) == 3
    for s in [report["original"], *report["relations"], report["overall"]]:
        assert s["agree_exact_original"] == 1.0 and s["agree_exec_original"] == 1.0, s["relation"]
        assert s["teacher"] == s["student"]
        for dist in (s["dist_original"], s["dist_transformed"]):
            assert dist["positions"] > 0 and dist["jsd"] == 0.0 and dist["top1"] == 1.0 and dist["cae"] == 0.0
            assert dist["hcp"] in (None, 1.0)
    for s in report["relations"]:
        assert s["n"] == 1 and s["agree_exact_transformed"] == 1.0 and s["agree_exec_transformed"] == 1.0
        assert s["flip_ratio"] in (None, 1.0) and s["drop_ratio"] in (None, 1.0)
    assert json.loads(files["out"].read_text()) == report
    assert files["plot"].read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def different(tmp_path_factory, lock):
    """The embedded Q4_1 model against a Q2_K re-quantization of itself: a deliberately different model."""
    d = tmp_path_factory.mktemp("q2k")
    q = requantize(resolve(MODEL, lock, HashCache(d / "h.json")).path, "Q2_K", d / "smollm2.Q2_K.gguf")
    model = resolve(str(q.path), lock, HashCache(d / "h.json"))
    with Engine(model, EngineConfig(n_ctx=2048)) as e:
        yield e


@pytest.mark.slow
def test_a_deliberately_different_model_agrees_less(engine, different):
    assert compare_vocab(engine, different).shared
    task = CompletionTask(PROBLEMS[:2], run_programs)
    cfg = fid.FidelityConfig(relations=("rename_neutral", "dead_code"), max_tokens=48)
    report = fid.run_fidelity(engine, different, task, cfg)
    o, overall = report.original, report.overall
    assert report.items == 2 and overall.n >= 3
    assert o.dist_original.jsd > 0.01 and overall.dist_transformed.jsd > 0.01
    assert o.dist_original.top1 < 0.97 and overall.dist_transformed.top1 < 0.97
    assert min(o.agree_exact_original, overall.agree_exact_transformed) < 1.0
    assert 0.0 <= overall.teacher.keeps_exec <= 1.0 and 0.0 <= overall.student.keeps_exec <= 1.0
    text = markdown(report)
    assert "| overall |" in text and "| original |" in text and "JSD (bits)" in text


@pytest.mark.slow
def test_asserts_task_end_to_end(tmp_path):
    data = write_jsonl(tmp_path / "asserts.jsonl", ASSERT_ROWS)
    r = invoke(
        "--student",
        MODEL,
        "--task",
        "asserts",
        "--dataset",
        str(data),
        "--relations",
        "rename_neutral,formatting",
        "--max-tokens",
        "32",
        "--markdown",
    )
    assert r.exit_code == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    agreement = {row.split("|")[1].strip(): row for row in rows[1:5]}
    assert set(agreement) == {"original", "rename_neutral", "formatting", "overall"}
    assert "| 100% |" in agreement["original"] and agreement["overall"].count("100%") >= 2
    assert "| overall | 4 | 0 | 100% | 100% |" in r.stdout


@pytest.mark.slow
def test_different_vocabularies_skip_distribution_metrics(engine, monkeypatch, capsys):
    monkeypatch.setattr(
        fid, "compare_vocab", lambda t, s: VocabCheck(False, "vocabularies differ in size (49152 vs 32000 tokens)")
    )
    task = CompletionTask(PROBLEMS[:1], run_programs)
    report = fid.run_fidelity(engine, engine, task, fid.FidelityConfig(relations=("dead_code",), max_tokens=16))
    assert all(r.dist is None for r in report.results) and report.overall.dist_transformed is None
    assert report.relations[0].agree_exact_transformed == 1.0
    print_report(report)
    assert "distribution metrics skipped: vocabularies differ in size" in capsys.readouterr().out
    assert "Distribution metrics skipped" in markdown(report) and "JSD" not in markdown(report)
    assert math.isfinite(json.loads(json.dumps(report.to_dict()))["overall"]["n"])
