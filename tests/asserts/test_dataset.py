"""The assertion dataset builder (determinism, split by file, masking, HumanEval exclusion) and
`assistant eval asserts` (scores, saved predictions, the reference model) on the embedded model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from assistant.asserts.dataset import (
    PLACEHOLDER,
    SPLITS,
    build_dataset,
    folder_source,
    load_split,
    split_of,
    tokens,
)
from assistant.asserts.scoring import extract_assertion, normalize, score, similarity
from assistant.errors import UsageError
from tests.asserts.test_pipeline import assert_one_line_error, run

PROJ = Path(__file__).parents[1] / "fixtures" / "asserts" / "dataset" / "proj"
RATIOS = (1, 1, 1)  # a handful of fixture files: give every split a share


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "a"
    manifest = build_dataset(out, [folder_source(PROJ)], ratios=RATIOS)
    return out, manifest


def rows(directory: Path) -> list[dict]:
    return [json.loads(line) for s in SPLITS for line in (directory / f"{s}.jsonl").read_text().splitlines()]


def test_build_is_deterministic(built, tmp_path):
    first, _ = built
    build_dataset(tmp_path / "b", [folder_source(PROJ)], ratios=RATIOS)
    for name in ("manifest.json", *(f"{s}.jsonl" for s in SPLITS)):
        assert (first / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_split_is_by_file_and_the_manifest_counts_and_hashes(built):
    out, manifest = built
    examples = rows(out)
    by_file: dict[str, set[str]] = {}
    for e in examples:
        by_file.setdefault(e["file"], set()).add(e["split"])
    assert all(len(s) == 1 for s in by_file.values())
    assert all(split_of(f, RATIOS) == next(iter(s)) for f, s in by_file.items())
    assert {e["split"] for e in examples} == set(SPLITS)
    for s in SPLITS:
        text = (out / f"{s}.jsonl").read_bytes()
        meta = manifest["splits"][s]
        assert meta["sha256"] == hashlib.sha256(text).hexdigest()
        assert meta["examples"] == text.count(b"\n")
        assert meta["files"] == len({e["file"] for e in examples if e["split"] == s})
    assert sum(f["examples"] for f in manifest["files"]) == len(examples)
    assert manifest["skipped"]["unreadable test file"] == 1  # tests/test_broken.py does not parse
    assert split_of("stdlib:test/test_textwrap.py") == split_of("stdlib:test/test_textwrap.py")


def test_masking_and_focal_code(built):
    out, _ = built
    by_id = {e["id"]: e for e in rows(out)}
    area = by_id["proj:mylib/tests/test_shapes.py::test_area"]
    assert area["prefix"] == f"def test_area():\n    r = 2\n    {PLACEHOLDER}\n"
    assert area["assertion"] == "assert area(r) == 4"  # the first assertion; the one after is not in the prefix
    assert area["focal_name"] == "area" and area["focal"].startswith("def area(side):")
    assert area["focal_file"] == "proj:mylib/shapes.py"
    # unittest style, a method found through the constructor, a multi-line assertion joined
    scaled = by_id["proj:mylib/tests/test_rect.py::RectTests.test_scaled"]
    assert scaled["prefix"] == f"def test_scaled(self):\n    r = Rect(1, 2)\n    big = r.scaled(2)\n    {PLACEHOLDER}\n"
    assert scaled["assertion"] == "self.assertEqual(big.w, 2)" and scaled["focal_name"] == "Rect.scaled"
    # module attribute calls, and a focal found in the prefix when the assertion calls none
    total = by_id["proj:tests/test_top.py::test_perimeter_via_module"]
    assert total["assertion"] == "assert total == 12" and total["focal_name"] == "perimeter"
    for e in by_id.values():
        assert e["prefix"].count(PLACEHOLDER) == 1 and e["prefix"].rstrip().endswith(PLACEHOLDER)
        assert e["assertion"] not in e["prefix"]
    assert not any(e["id"].endswith("::test_no_focal") for e in by_id.values())  # len() is no focal function


def test_examples_that_overlap_humaneval_are_excluded(built):
    out, manifest = built
    assert not any("closeness" in e["id"] or "has_close_elements" in e["focal"] for e in rows(out))
    assert manifest["skipped"]["shares a HumanEval n-gram"] == 1
    assert manifest["decontamination"]["against"] == "HumanEval" and len(manifest["decontamination"]["sha256"]) == 64


def test_load_split_limit_and_errors(built, tmp_path):
    out, manifest = built
    test = load_split(out, "test")
    assert len(test) == manifest["splits"]["test"]["examples"]
    assert [e.id for e in load_split(out, "test", limit=2)] == [e.id for e in test[:2]]
    with pytest.raises(UsageError, match="holds no assertion dataset"):
        load_split(tmp_path, "test")
    with pytest.raises(UsageError, match="--split must be one of"):
        load_split(out, "dev")


# -- scores (pure) --------------------------------------------------------------------------------


def test_normalize_extract_and_score():
    assert normalize("assert  f( 1 )==2") == "assert f(1) == 2"
    assert normalize('self.assertEqual(x, "a")') == "self.assertEqual(x, 'a')"
    assert normalize("not python (") == "not python ("
    assert (
        extract_assertion("def test(self):\n    self.assertEqual(\n        f(1), 2)\n```\nprose")
        == "self.assertEqual(f(1), 2)"
    )
    assert extract_assertion("x = 1\nassert x == 1\n") == "assert x == 1"
    assert extract_assertion("import os\n") == "import os"
    assert extract_assertion("") == ""
    s = score(["assert f(1) == 2", "assert g(1) == 3", ""], ["assert f(1)==2", "assert g(1) == 4", "assert h()"])
    assert s["exact_match"] == round(1 / 3, 4) and s["n"] == 3
    expected = (1.0 + similarity("assert g(1) == 3", "assert g(1) == 4") + 0.0) / 3
    assert s["similarity"] == round(expected, 4)
    assert tokens("a.b(1)") == ["a", ".", "b", "(", "1", ")"]


# -- eval end to end on the embedded model ---------------------------------------------------------


def test_eval_rejects_bad_input(tmp_path, built):
    out, _ = built
    assert_one_line_error(run("eval", "asserts", "--dataset", out, "--split", "dev"), "--split must be one of", code=2)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    assert_one_line_error(run("eval", "asserts", "--dataset", junk), "not an assertion dataset", code=2)


@pytest.mark.slow
def test_eval_against_ground_truth_and_a_reference_then_resume(built, tmp_path, default_gguf):
    data, _ = built
    reference = tmp_path / "reference.gguf"
    shutil.copyfile(default_gguf, reference)
    out = tmp_path / "run"
    args = ("eval", "asserts", "--dataset", data, "--limit", "3", "--out", out, "--threads", "1", "--json")
    r = run(*args, "--reference", reference)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["examples"] == 3 and d["split"] == "test" and d["ground_truth"]["n"] == 3
    assert 0 <= d["ground_truth"]["exact_match"] <= 1 and 0 < d["ground_truth"]["similarity"] <= 1
    assert d["ms_per_sample"] > 0
    # the same weights under another name: greedy predictions agree exactly
    assert d["reference"]["exact_match"] == 1.0 and d["reference"]["ground_truth"] == d["ground_truth"]
    saved = sorted(out.glob("predictions-*.jsonl"))
    assert len(saved) == 2 and all(len(p.read_text().splitlines()) == 3 for p in saved)
    assert json.loads((out / "summary.json").read_text()) == d
    # a rerun reuses the saved predictions: nothing is generated or appended again
    r2 = run(*args)
    assert r2.exit_code == 0, r2.stderr
    d2 = json.loads(r2.stdout)
    assert d2["ground_truth"] == d["ground_truth"] and d2["ms_per_sample"] == d["ms_per_sample"]
    assert all(len(p.read_text().splitlines()) == 3 for p in saved)
