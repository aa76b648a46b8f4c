"""pass@k against brute force, majority vote, maj@k."""

from __future__ import annotations

from itertools import combinations

import pytest

from incentivize.eval.metrics import maj_at_k, mean_pass_at_k
from incentivize.inference.voting import majority_vote, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(n, c, k) for n in (1, 2, 5, 8, 10) for c in range(n + 1) for k in (1, 2, 3, 5) if k <= n],
)
def test_pass_at_k_matches_brute_force(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5-subset holds a correct sample
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6


def test_pass_at_k_large_n_is_stable() -> None:
    value = pass_at_k(10_000, 1, 1)
    assert value == pytest.approx(1e-4, rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 1, 6), (5, 1, 0), (5, 6, 1), (5, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([(4, 1), (4, 0), (4, 4)], 2) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_majority_vote() -> None:
    assert majority_vote(["3", "4", "4"]) == "4"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote([None, "5", None]) == "5"


def test_majority_vote_ties_go_to_first_seen() -> None:
    assert majority_vote(["a", "b", "b", "a"]) == "a"
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"


def test_majority_vote_compares_numbers_by_value() -> None:
    # "1,000", "1000.0" and "1000" are one class of 3 votes against two "7"s.
    assert majority_vote(["7", "1,000", "7.00", "1000.0", "1000"]) == "1,000"
    assert majority_vote([" x ", "x", "y"]) == " x "


def test_maj_at_k() -> None:
    answers = [["4", "4", "5", "5", "5"], ["1", "2", "2", None, None], [None, None, None, None, None]]
    golds = ["4", "2", "0"]
    assert maj_at_k(answers, golds, k=3) == pytest.approx(2 / 3)
    assert maj_at_k(answers, golds, k=5) == pytest.approx(1 / 3)  # problem 1 now votes 5
    assert maj_at_k(answers, golds, k=1) == pytest.approx(1 / 3)


def test_maj_at_k_uses_answer_equivalence() -> None:
    # The winner "1/2" (first of a three-way tie) matches the gold 0.5 by value.
    assert maj_at_k([["1/2", "0.5", "3"]], ["0.5"], k=3) == 1.0
    assert maj_at_k([["1/2"]], ["0.5"], k=1, match=lambda a, b: a == b) == 0.0


def test_maj_at_k_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        maj_at_k([["1"]], ["1", "2"], k=1)
    with pytest.raises(ValueError):
        maj_at_k([["1"]], ["1"], k=2)
    with pytest.raises(ValueError):
        maj_at_k([["1"]], ["1"], k=0)
