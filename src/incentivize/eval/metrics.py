"""Sampling metrics over a set of problems: mean pass@k and majority-vote accuracy (maj@k).

The per-problem primitives, :func:`~incentivize.inference.voting.pass_at_k` and
:func:`~incentivize.inference.voting.majority_vote`, live in :mod:`incentivize.inference.voting`.
Pure Python, no torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from incentivize.inference.voting import majority_vote, pass_at_k
from incentivize.rewards.verify import answers_match

__all__ = ["maj_at_k", "mean_pass_at_k"]


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (samples n, correct c).

    >>> mean_pass_at_k([(4, 2), (4, 0)], 1)
    0.25
    """
    if not counts:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


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


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve of `scores` separating True from False labels: the chance that a random
    positive scores above a random negative, ties counting half. None when either class is absent.

    >>> auroc([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.75
    >>> auroc([0.5, 0.5], [True, False])
    0.5
    """
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))
