"""Sampling metrics: pass@k and majority vote (maj@k). Pure Python, no torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from incentivize.rewards.extract import normalize_number
from incentivize.rewards.verify import answers_match

__all__ = ["maj_at_k", "majority_vote", "mean_pass_at_k", "pass_at_k", "vote_key"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased chance that at least one of k samples is correct, given c correct out of n.

    Chen et al. 2021: ``1 - C(n-c, k) / C(n, k)``, computed as a product so that large n
    neither overflows nor loses precision.

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 10, 5), pass_at_k(4, 2, 1), pass_at_k(4, 1, 2)
    (0.0, 1.0, 0.5, 0.5)
    """
    if k < 1 or k > n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if c < 0 or c > n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (samples n, correct c).

    >>> mean_pass_at_k([(4, 2), (4, 0)], 1)
    0.25
    """
    if not counts:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def vote_key(answer: str) -> str:
    """The class an answer votes for: a number's canonical form, anything else stripped.

    >>> vote_key("1,000.0"), vote_key(" x + 1 ")
    ('1000', 'x + 1')
    """
    number = normalize_number(answer)
    return number if number is not None else answer.strip()


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common answer, ignoring None and blank ones; None if there is none.

    Numbers are compared by value (``"1,000"`` votes with ``"1000"``), ties go to the
    class seen first, and the winner is returned as first written.

    >>> majority_vote(["7", None, "1,000", "1000.0", "7.00", "1000"])
    '1,000'
    >>> majority_vote(["a", "b", "b", "a"]), majority_vote([None, " "])
    ('a', None)
    """
    counts: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        key = vote_key(answer)
        counts[key] = counts.get(key, 0) + 1
        first_seen.setdefault(key, answer)
    if not counts:
        return None
    # max() keeps the first maximal key, and dicts keep first-insertion order.
    winner = max(counts, key=counts.__getitem__)
    return first_seen[winner]


def maj_at_k(
    answer_lists: Sequence[Sequence[str | None]],
    golds: Sequence[str],
    k: int,
    match: Callable[[str | None, str], bool] = answers_match,
) -> float:
    """Share of problems whose majority answer over the first k samples matches the gold.

    >>> maj_at_k([["3", "4", "4"], ["1", None, None]], ["4", "2"], k=3)
    0.5
    """
    if len(answer_lists) != len(golds):
        raise ValueError(f"got {len(answer_lists)} answer lists for {len(golds)} gold answers")
    if not golds:
        raise ValueError("maj_at_k needs at least one problem")
    if k < 1:
        raise ValueError(f"maj@k needs k >= 1, got k={k}")
    correct = 0
    for answers, gold in zip(answer_lists, golds):
        if len(answers) < k:
            raise ValueError(f"maj@{k} needs at least {k} answers per problem, got {len(answers)}")
        winner = majority_vote(answers[:k])
        correct += winner is not None and match(winner, gold)
    return correct / len(golds)
