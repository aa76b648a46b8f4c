"""Built-in reward functions, with plain and chat-format completions."""

from __future__ import annotations

import pytest

from incentivize.rewards import completion_text, correctness_reward, format_reward


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": text}]


def test_completion_text_handles_both_formats() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text(chat("Answer: 4")) == "Answer: 4"
    assert completion_text([]) == ""
    assert completion_text({"role": "assistant", "content": None}) == ""
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "Answer: "}, {"type": "text", "text": "4"}]}]
    assert completion_text(parts) == "Answer: 4"


def test_correctness_reward() -> None:
    completions = [
        "2 + 2 = 4\n#### 4",
        "Answer: 5",
        chat("So \\boxed{\\frac{1}{2}}"),
        "Answer: 5 is wrong\n#### 1,234",
        "no number at all",
    ]
    answers = ["4", "4", "0.5", "1234", "7"]
    assert correctness_reward([None] * 5, completions, answer=answers) == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_correctness_reward_ignores_extra_columns() -> None:
    assert correctness_reward(["p"], ["Answer: 3"], answer=["3"], difficulty=["easy"]) == [1.0]


def test_correctness_reward_rejects_misaligned_answers() -> None:
    with pytest.raises(ValueError, match="2 answers for 1 completions"):
        correctness_reward(["p"], ["Answer: 3"], answer=["3", "4"])


def test_format_reward() -> None:
    completions = ["Answer: 3", "#### 3", "\\boxed{3}", chat("Final answer: 3"), "It is 3.", "Answer:", "\\boxed{}"]
    assert format_reward([None] * 7, completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
