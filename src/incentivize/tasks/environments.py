"""Environments for multi-turn episodes (`incentivize.rollout.episodes`), built on a task's verifier.

- `SelfCorrection`: SCoRe's two attempts (Kumar et al. 2024). Each turn's reward is the verifier's verdict on
  that attempt (1 right, 0 wrong); after a turn the message is the instruction to find and correct an error,
  with no word on whether there is one.
"""

from __future__ import annotations

from incentivize.rollout.episodes import Messages, Turn
from incentivize.tasks.base import Example, Task

# SCoRe's instruction (Appendix A), its answer-format sentence replaced by one that fits any task
CORRECTION_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. Please "
    "correct the error, if any, and rewrite the solution. End with the final answer in the form the question "
    "asked for.")


def correction_conversation(task: Task, example: Example, first_attempt: str,
                            instruction: str = CORRECTION_INSTRUCTION) -> Messages:
    """The second attempt's conversation: the task's prompt, the first attempt, the instruction."""
    return [*task.messages(example), {"role": "assistant", "content": first_attempt},
            {"role": "user", "content": instruction}]


class SelfCorrection:
    """One episode of attempts at `example`, each checked by the task; after each the correction instruction."""

    def __init__(self, task: Task, instruction: str = CORRECTION_INSTRUCTION) -> None:
        self.task, self.instruction = task, instruction
        self.example: Example | None = None

    def reset(self, example: Example) -> Messages:
        self.example = example
        return self.task.messages(example)

    def step(self, completion: str) -> Turn:
        assert self.example is not None, "reset() first"
        return Turn(float(self.task.verify(self.example, completion).correct), self.instruction)
