"""Environments for multi-turn episodes (`incentivize.rollout.episodes`), built on a task's verifier.

- `SelfCorrection`: SCoRe's two attempts (Kumar et al. 2024). Each turn's reward is the verifier's verdict on
  that attempt (1 right, 0 wrong); after a turn the message is the instruction to find and correct an error,
  with no word on whether there is one.
- `PythonTool`: the model may write a ```python block; the code sandbox (`incentivize.rewards.sandbox`) runs
  it and what it printed (or its error) comes back as the next message, with reward 0. A turn without a
  python block is the final answer: the verifier's verdict is its reward and the episode ends.
"""

from __future__ import annotations

import torch

from incentivize.rewards.code import python_block
from incentivize.rewards.sandbox import SandboxLimits, run_tests
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


TOOL_INSTRUCTION = ("You can run Python: write a ```python code block and you will be shown what it prints. "
                    "When you know the answer, give it without a code block.")


class PythonTool:
    """One episode at `example` with a Python interpreter: a python block runs in the sandbox (within `limits`)
    and its output, cut to `output_chars`, is the next message; an answer without one is verified and ends it."""

    def __init__(self, task: Task, limits: SandboxLimits | None = None, instruction: str = TOOL_INSTRUCTION,
                 output_chars: int = 1000) -> None:
        self.task, self.limits, self.instruction, self.output_chars = task, limits, instruction, output_chars
        self.example: Example | None = None

    def reset(self, example: Example) -> Messages:
        self.example = example
        messages = self.task.messages(example)
        last = messages[-1]
        return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{self.instruction}"}]

    def step(self, completion: str) -> Turn:
        assert self.example is not None, "reset() first"
        program = python_block(completion)
        if program is None:
            return Turn(float(self.task.verify(self.example, completion).correct), None)
        result = run_tests(program, limits=self.limits)
        output = result.stdout if result.passed else "\n".join(p for p in (result.stdout, result.reason) if p)
        if len(output) > self.output_chars:
            output = output[: self.output_chars] + "\n[output cut]"
        return Turn(0.0, f"Output:\n{output.strip() or '(nothing printed)'}")


def make_environment(name: str, task: Task) -> SelfCorrection | PythonTool:
    """A fresh environment for one episode: `self_correction` or `python_tool`."""
    if name == "self_correction":
        return SelfCorrection(task)
    if name == "python_tool":
        return PythonTool(task)
    raise ValueError(f"environment must be self_correction or python_tool, got {name!r}")


def episode_rewards(turn_rewards: torch.Tensor, how: str, alpha: float = 10.0) -> torch.Tensor:
    """(B,) an episode's reward from its turns' (B, T) rewards, NaN after its last turn or where its
    environment failed (the episode then has no reward, NaN): the last turn's, their sum (also for `per_turn`,
    whose turns the learner credits one by one), or SCoRe's stage II reward for two attempts,
    r1 + r2 + alpha * (r2 - r1).

    >>> r = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, float("nan")]])
    >>> episode_rewards(r, "last").tolist(), episode_rewards(r, "sum").tolist()
    ([1.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    >>> episode_rewards(r[:2], "shaped", alpha=10.0).tolist()
    [11.0, -9.0]
    """
    taken = ~torch.isnan(turn_rewards)
    turns = taken.sum(dim=1)
    last = turn_rewards.gather(1, (turns - 1).clamp(min=0)[:, None]).squeeze(1)
    if how == "last":
        reward = last
    elif how in ("sum", "per_turn"):  # per_turn: the sum is the episode's; its turns are credited one by one
        reward = torch.where(taken, turn_rewards, 0.0).sum(dim=1)
    elif how == "shaped":
        first, second = turn_rewards[:, 0], turn_rewards[:, 1]
        reward = first + second + alpha * (second - first)
    else:
        raise ValueError(f"episode reward must be last, sum, per_turn or shaped, got {how!r}")
    return torch.where(turns > 0, reward, torch.nan)
