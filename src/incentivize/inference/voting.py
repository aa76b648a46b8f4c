"""Counting over N sampled answers: the class an answer votes for, the majority answer, and the
unbiased pass@k estimate. Answer selection (:mod:`incentivize.inference.selection`) and the eval
metrics (:mod:`incentivize.eval.metrics`) both build on these. Pure Python, no torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

from incentivize.rewards.extract import normalize_number

__all__ = ["majority_vote", "pass_at_k", "vote_key"]


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
