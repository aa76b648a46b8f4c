"""What a task is: its examples, how a prompt is rendered, and how an answer is checked."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from incentivize.rewards.extract import extract_answer
from incentivize.rewards.verify import answers_match

ANSWER_INSTRUCTION = "Give the final answer on the last line as `Answer: <number>`."


@dataclass(frozen=True)
class Example:
    """One problem. `answer` is the gold final answer; `columns` go to user reward functions."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool


class Task(ABC):
    """A source of problems with a verifiable answer."""

    name: str = "task"
    system_prompt: str | None = None
    max_new_tokens: int = 256  # a generation budget that fits the task's answers

    @abstractmethod
    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        """The first `limit` examples of `split`, in a deterministic order."""

    @abstractmethod
    def user_message(self, example: Example) -> str:
        """The text of the user turn for `example`."""

    def messages(self, example: Example) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": self.user_message(example)}]

    def step_labels(self, example: Example, completion: str) -> list[int] | None:
        """One label per step of `completion` (`rewards.steps.split_steps`): 0 negative, 1 neutral,
        2 positive; None when the task cannot judge steps (then only outcome labels exist)."""
        return None

    def verify(self, example: Example, completion: str) -> Verdict:
        """Extract the final answer from `completion` and compare it with the gold answer."""
        extracted = extract_answer(completion)
        return Verdict(extracted, extracted is not None and answers_match(extracted, example.answer))


def reward_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """The extra columns reward functions receive, one list per field: the `question`, the gold `answer` and
    each example's own `columns` (None where an example lacks one)."""
    columns: dict[str, list[Any]] = {"question": [e.question for e in examples], "answer": [e.answer for e in examples]}
    for key in sorted({k for e in examples for k in e.columns}):
        columns[key] = [e.columns.get(key) for e in examples]
    return columns


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt, through the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def chat_template_warning(tokenizer: Any, model: str) -> str | None:
    """One line to show when `tokenizer` has no chat template (prompts are then plain text), else None.

    Not an error: a base model has no template, and plain-text prompts are how R1-Zero-style runs start."""
    if getattr(tokenizer, "chat_template", None):
        return None
    return (f"the tokenizer of {model} has no chat template, so prompts are plain text (question, then answer "
            "instruction); if the model is a chat model, give its tokenizer a chat template")
