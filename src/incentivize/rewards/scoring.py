"""Score completions: the task's verifier, optional format and user rewards, DAPO length shaping.

The trainers call a `Scorer` on each batch of sampled completions and learn from its `Scores`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from incentivize.errors import IncentivizeError
from incentivize.rewards import call_reward_function, format_reward, reward_name
from incentivize.rewards.user import DEFAULT_TIMEOUT_S
from incentivize.tasks import Example, Task, reward_columns


@dataclass
class Scores:
    """Per completion: the total reward (NaN = no reward, excluded from learning) and components."""

    rewards: torch.Tensor  # (B,) float32
    correct: torch.Tensor  # (B,) bool, the task verifier's verdict
    components: dict[str, list[float | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # one text per sample a user reward failed on
    timeouts: int = 0  # of those, the samples whose reward call ran out of time
    step_rewards: list[list[float]] | None = None  # per completion, a PRM's P(correct) of each step (process supervision)
    extracted: list[str | None] | None = None  # per completion, the answer the task's verifier read (None: none)

    def select(self, rows: Sequence[int]) -> Scores:
        """These completions' scores, in this order (the failure counts stay the batch's)."""
        index = torch.tensor(list(rows), dtype=torch.long)
        return Scores(
            self.rewards[index], self.correct[index], {k: [v[r] for r in rows] for k, v in self.components.items()},
            self.errors, self.timeouts, None if self.step_rewards is None else [self.step_rewards[r] for r in rows],
            None if self.extracted is None else [self.extracted[r] for r in rows],
        )

    @staticmethod
    def concat(parts: Sequence[Scores]) -> Scores:
        """The completions of all parts; failure counts summed."""
        first = parts[0]
        return Scores(
            torch.cat([p.rewards for p in parts]), torch.cat([p.correct for p in parts]),
            {k: [v for p in parts for v in p.components[k]] for k in first.components},
            [e for p in parts for e in p.errors], sum(p.timeouts for p in parts),
            None if first.step_rewards is None else [s for p in parts for s in p.step_rewards or []],
            None if first.extracted is None else [a for p in parts for a in p.extracted or []],
        )


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to `max_length - buffer`, then linearly down to -factor.

    >>> overlong_penalty(torch.tensor([10, 56, 60, 64]), max_length=64, buffer=8).tolist()
    [0.0, 0.0, -0.5, -1.0]
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    excess = (lengths.float() - (max_length - buffer)).clamp(min=0.0)
    return 0.0 - factor * (excess / buffer).clamp(max=1.0)  # 0.0 - x: no negative zeros


class Scorer:
    """Weighted sum of rewards: `correctness` (1 if the task verifies the answer) and the rest.

    A user reward function that fails on a sample (raises, returns no number, or exceeds
    `timeout_s`) gives that sample no reward (NaN) with `on_error="skip"`, and stops the run
    with an `IncentivizeError` naming the function and the error with `on_error="raise"`.
    """

    def __init__(
        self,
        task: Task,
        reward_functions: Sequence[Callable[..., Any]] = (),
        weights: Sequence[float] | None = None,
        format_weight: float = 0.0,
        max_length: int = 0,
        overlong_buffer: int = 0,
        overlong_factor: float = 1.0,
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        on_error: Literal["skip", "raise"] = "skip",
        process: bool = False,
    ) -> None:
        self.task = task
        self.reward_functions = list(reward_functions)
        self.weights = list(weights) if weights is not None else [1.0] * (1 + len(self.reward_functions))
        self.format_weight = format_weight
        self.max_length, self.overlong_buffer, self.overlong_factor = max_length, overlong_buffer, overlong_factor
        self.timeout_s, self.on_error = timeout_s, on_error
        # process supervision reads step rewards from the first reward model that gives them (a PRM)
        self.step_source = next((fn for fn in self.reward_functions if hasattr(fn, "step_rewards")), None)
        if process and self.step_source is None:
            raise IncentivizeError("process supervision needs step rewards: add a process reward model, --reward prm:DIR")
        self.process = process

    def __call__(self, examples: Sequence[Example], prompts: Sequence[str], completions: Sequence[str],
                 lengths: torch.Tensor) -> Scores:
        verdicts = [self.task.verify(e, c) for e, c in zip(examples, completions)]
        correct = torch.tensor([v.correct for v in verdicts], dtype=torch.bool)
        total = self.weights[0] * correct.float()
        scores = Scores(total, correct, {"correctness": correct.float().tolist()},
                        extracted=[v.extracted for v in verdicts])
        if self.format_weight:
            formats = format_reward(list(prompts), list(completions))
            scores.components["format"] = list(formats)
            total = total + self.format_weight * torch.tensor(formats)
        columns = reward_columns(examples)
        for fn, weight in zip(self.reward_functions, self.weights[1:]):
            # a reward model or judge is our own code: no time limit (a large one on a slow CPU is not a hang)
            timeout = None if getattr(fn, "trusted", False) else self.timeout_s
            call = call_reward_function(fn, list(prompts), list(completions), columns, timeout_s=timeout)
            failures = [e for e in call.errors if e is not None]
            if failures and self.on_error == "raise":
                raise IncentivizeError(
                    f"reward function {reward_name(fn)} failed on {len(failures)} of {len(completions)} samples "
                    f"(first: {failures[0]}); on_reward_error=raise stops the run, on_reward_error=skip gives "
                    "such samples no reward"
                )
            scores.components[reward_name(fn)] = call.values
            failed = torch.tensor([e is not None for e in call.errors])
            values = torch.tensor([0.0 if v is None else v for v in call.values])  # None: does not apply
            total = torch.where(failed, torch.nan, total + weight * values)
            scores.errors += failures
            scores.timeouts += call.timeouts
        if self.overlong_buffer:
            penalty = overlong_penalty(lengths, self.max_length, self.overlong_buffer, self.overlong_factor)
            scores.components["overlong"] = penalty.tolist()
            total = total + penalty
        if self.process and self.step_source is not None:
            scores.step_rewards = self.step_source.step_rewards(list(prompts), list(completions))
        scores.rewards = total.float()
        return scores
