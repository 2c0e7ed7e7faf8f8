"""Untrusted text printed through rich is text, not markup (issue 18 item 13): `[b, a]` must survive."""

from __future__ import annotations

from types import SimpleNamespace

from assistant.codegen.rerank import rerank, sandbox_runner
from assistant.sandbox.limits import Limits


def test_explain_keeps_brackets_in_generated_asserts(capsys, monkeypatch):
    from assistant.cli.generate import print_rerank

    monkeypatch.setenv("COLUMNS", "200")
    solutions = ["def swap(a, b):\n    return [b, a]\n", "def swap(a, b):\n    return [a, b]\n"]
    tests = [
        "assert swap(1, 2) == [2, 1]",
        "assert (lambda b, a: swap(a, b) == [b, a])(2, 1)",
        "assert swap('[/x]', 0) == [0, '[/x]']",
    ]
    rr = rerank("codet", solutions, tests, sandbox_runner(Limits(timeout_s=10)))
    print_rerank(SimpleNamespace(rerank=rr))
    err = capsys.readouterr().err
    assert "swap(a, b) == [b, a])(2, 1)" in err
    assert "assert swap(1, 2) == [2, 1]" in err and "assert swap('[/x]', 0) == [0, '[/x]']" in err
    assert "2/2" not in err.split("swap(1, 2)")[1].splitlines()[0]  # one candidate passes each test
