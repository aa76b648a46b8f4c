"""Solutions as steps: one non-blank line per step (the convention of PRM800K and of our tasks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from incentivize.algorithms.reward_losses import NEGATIVE, NEUTRAL, POSITIVE

LABEL_NAMES = {NEGATIVE: "negative", NEUTRAL: "neutral", POSITIVE: "positive"}


@dataclass(frozen=True)
class Step:
    """A step's text and its character span [start, end) in the solution."""

    text: str
    start: int
    end: int


def split_steps(solution: str) -> list[Step]:
    """The non-blank lines of `solution`, stripped, with their spans.

    >>> [(s.text, s.start, s.end) for s in split_steps("12 + 3 = 15\\n\\n  Answer: 15 \\n")]
    [('12 + 3 = 15', 0, 11), ('Answer: 15', 15, 25)]
    """
    steps, offset = [], 0
    for line in solution.splitlines(keepends=True):
        stripped = line.strip()
        if stripped:
            start = offset + line.index(stripped)
            steps.append(Step(stripped, start, start + len(stripped)))
        offset += len(line)
    return steps


def supervised_prefix(labels: list[int]) -> list[int]:
    """Labels up to and including the first negative one; later steps get -1 (no supervision),
    since after a mistake the rest of a solution is not judged (Lightman et al.).

    >>> supervised_prefix([2, 1, 0, 2, 0])
    [2, 1, 0, -1, -1]
    """
    out, stopped = [], False
    for label in labels:
        out.append(-1 if stopped else label)
        stopped = stopped or label == NEGATIVE
    return out


def step_end_tokens(decode: Callable[[list[int]], str], token_ids: list[int], text: str) -> list[int]:
    """For each step of `text` (the decoding of `token_ids`), the index of the token that completes
    its last character, found by decoding growing prefixes (exact for any tokenizer, byte-level BPE
    included). Steps that no token completes are left out.

    >>> chars = list("ab\\ncd")
    >>> step_end_tokens(lambda ids: "".join(chars[i] for i in ids), [0, 1, 2, 3, 4], "ab\\ncd")
    [1, 4]
    """
    ends, steps, k = [], split_steps(text), 0
    for step in steps:
        while k < len(token_ids) and len(decode(token_ids[: k + 1])) < step.end:
            k += 1
        if k < len(token_ids):
            ends.append(k)
    return ends
