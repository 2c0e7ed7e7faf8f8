"""pass@k against the closed form and the combinatorial definition."""

from math import comb

import pytest

from assistant.evaluation.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 0, 10), (20, 19, 2), (5, 5, 3)])
def test_matches_the_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_large_n_is_stable():
    # comb(200, 100) overflows floats; the product form does not.
    v = pass_at_k(200, 1, 100)
    assert v == pytest.approx(0.5)
    assert 0.0 <= pass_at_k(1000, 7, 500) <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="needs at least 10 samples"):
        pass_at_k(5, 1, 10)


def test_mean_over_problems():
    assert mean_pass_at_k([(2, 1), (2, 2), (2, 0)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k([], 1) == 0.0
