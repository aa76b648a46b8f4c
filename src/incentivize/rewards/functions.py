"""Built-in reward functions, in TRL's calling convention.

A reward function takes ``(prompts, completions, **columns)``, where each dataset column
arrives as a list aligned with ``completions``, and returns one float (or None: "not
applicable") per completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from incentivize.rewards.extract import extract_answer, has_final_answer_marker
from incentivize.rewards.verify import answers_match

__all__ = ["completion_text", "correctness_reward", "format_reward"]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string as is, a chat (list of messages) as its last message.

    >>> completion_text("42")
    '42'
    >>> completion_text([{"role": "assistant", "content": "Answer: 7"}])
    'Answer: 7'
    """
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, Sequence):
        return completion_text(completion[-1]) if completion else ""
    if isinstance(completion, Mapping):
        content = completion.get("content", "")
        if isinstance(content, list):  # multimodal parts: keep the text ones
            return "".join(
                part.get("text", "") for part in content if isinstance(part, Mapping)
            )
        return "" if content is None else str(content)
    return str(completion)


def correctness_reward(
    prompts: list, completions: list, *, answer: list[str], **_: Any
) -> list[float]:
    """1.0 where the completion's final answer equals the gold ``answer``, else 0.0.

    >>> correctness_reward([None, None], ["so #### 1,234", "Answer: 5"], answer=["1234", "6"])
    [1.0, 0.0]
    """
    if len(answer) != len(completions):
        raise ValueError(f"got {len(answer)} answers for {len(completions)} completions")
    return [
        1.0 if answers_match(extract_answer(completion_text(c)), str(gold)) else 0.0
        for c, gold in zip(completions, answer)
    ]


def format_reward(prompts: list, completions: list, **_: Any) -> list[float]:
    """1.0 where the completion states a non-empty final answer explicitly, else 0.0.

    The markers are ``Answer: N``, ``#### N`` and ``\\boxed{N}``; a bare number does not count.

    >>> format_reward([None, None, None], ["Answer: 3", "it is 3", "\\\\boxed{}"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if has_final_answer_marker(completion_text(c)) else 0.0 for c in completions]
