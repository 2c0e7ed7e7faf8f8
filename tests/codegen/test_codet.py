"""Ranking rules and test extraction: pure functions, closed-form cases."""

from assistant.codegen.codet import (
    CaseResult,
    call_under_test,
    cluster_rank,
    codet_rank,
    doctest_asserts,
    extract_asserts,
    parse_harness,
)

P, F = CaseResult(True, "1"), CaseResult(False, "2")


def test_codet_prefers_agreement_over_a_lone_overachiever():
    matrix = [
        [P, P, P, F],  # 0: passes 3 tests alone -> 1 x 3 = 3
        [P, P, F, F],  # 1, 2, 3 agree on 2 tests -> 3 x 2 = 6
        [P, P, F, F],
        [P, P, F, F],
        [F, F, F, F],  # 4: passes nothing -> 0
    ]
    r = codet_rank(matrix, [True] * 5)
    assert r.chosen == 1
    assert r.groups[0].members == (1, 2, 3) and r.groups[0].score == 6
    assert r.groups[1].members == (0,) and r.groups[1].score == 3


def test_codet_ignores_invalid_candidates_and_breaks_ties_by_order():
    matrix = [[P, F], [F, P], [P, P]]
    r = codet_rank(matrix, [True, True, False])
    assert r.chosen == 0 and [g.score for g in r.groups] == [1, 1]


def test_cluster_picks_the_largest_behaviour_class():
    a, b = CaseResult(False, "3"), CaseResult(False, "4")
    matrix = [[a, a], [b, b], [b, b], [CaseResult(False, None)] * 2]
    r = cluster_rank(matrix, [True] * 4)
    assert r.chosen == 1 and r.groups[0].members == (1, 2)


def test_extract_asserts_from_messy_model_output():
    text = (
        "Sure! Here are tests:\n```python\nassert add(1, 2) == 3\nassert add(1,2)==3  # dup\n"
        "assert add(-1, 1) == 0, 'msg'\nassert other(1) == 2\nprint(add(2, 2))\nassert add(0,\n```\n"
    )
    assert extract_asserts(text, "add") == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def test_doctest_examples_become_asserts():
    prompt = '''def f(xs):
    """ Sum.
    >>> f([1, 2])
    3
    >>> f([])
    0
    >>> g(1)
    1
    """
'''
    assert doctest_asserts(prompt, "f") == ["assert f([1, 2]) == 3", "assert f([]) == 0"]


def test_test_input_of_an_assert():
    assert call_under_test("assert f(1, [2]) == 3") == "f(1, [2])"
    assert call_under_test("assert not f(0)") == "f(0)"
    assert call_under_test("assert f(2)") == "f(2)"


def test_parse_harness_without_the_marker_fails_every_test():
    assert parse_harness("noise\n", "@@m@@", 2) == [CaseResult(False, None)] * 2
    assert parse_harness('x\n@@m@@{"loaded": null, "rows": [{"pass": true, "out": "1"}]}\n', "@@m@@", 1) == [P]
