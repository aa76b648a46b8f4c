"""Advantage estimators: one registry, one calling convention.

Every estimator is `estimator(inputs: AdvantageInputs, **params) -> AdvantageOutput`, where the
inputs carry the batch (B = prompts x group_size rows, a prompt's samples contiguous) and `params`
are plain numbers or strings. `compute_advantages(name, inputs, **params)` looks the name up.

Outcome estimators (one score per sequence, broadcast to its tokens):
- `grpo`: (r - group mean) / (group std + eps), Bessel std (DeepSeekMath 2402.03300 section 4.1.2;
  TRL's eps 1e-4). `scale="batch"` divides by the std of all rewards in the batch, `"none"` not at all.
- `dr_grpo`: group mean subtracted only (Dr. GRPO, 2503.20783).
- `rloo`: r_i minus the mean of the other samples of its group (RLOO, 2402.14740; Kool et al. 2019).
  When `inputs.kl` is given (KL in the reward), these three first replace each score by
  `r - beta * sum_t kl_t`, the sequence-level KL penalty of TRL's RLOO.
Token-level estimators (the score sits on the last completion token, `-beta * kl_t` on every token):
- `reinforce_pp`: discounted returns, normalised over all valid tokens of the batch (REINFORCE++,
  2501.03262).
- `reinforce_pp_baseline`: the group mean is subtracted from the scores first, then as reinforce_pp.
- `gae`: generalised advantage estimation with the critic's `values`; returns = A + V before the
  advantages are whitened over the batch (PPO).
Process supervision:
- `grpo_process`: PRM step scores normalised over all steps of a group's samples; the advantage of a
  token is the sum of the normalised scores of the steps that end at or after it (DeepSeekMath 4.1.3).

Rows whose score is NaN (no reward could be computed) take no part in any statistic and get a zero
advantage. Masks are assumed to be contiguous from the first completion token, as the rollout
engine produces them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from incentivize.algorithms.registry import Registry


@dataclass
class AdvantageInputs:
    """B = prompts * group_size rows, group members contiguous; T = completion length."""

    scores: torch.Tensor  # (B,) sequence reward; NaN = no reward
    mask: torch.Tensor  # (B, T) 1 on completion tokens to train on
    group_size: int
    kl: torch.Tensor | None = None  # (B, T) per-token KL to place in the reward; None: KL not in reward
    beta: float = 0.0
    values: torch.Tensor | None = None  # (B, T) critic values (gae)
    step_scores: torch.Tensor | None = None  # (B, S) PRM step rewards, NaN past a row's last step
    step_ends: torch.Tensor | None = None  # (B, S) long, token index where each step ends


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # (B, T), 0 on masked tokens
    returns: torch.Tensor | None = None  # (B, T) value targets (gae)


AdvantageEstimator = Callable[..., AdvantageOutput]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def compute_advantages(name: str, inputs: AdvantageInputs, **params: object) -> AdvantageOutput:
    return ADVANTAGE_ESTIMATORS.get(name)(inputs, **params)


def _valid_rows(inputs: AdvantageInputs) -> torch.Tensor:
    return ~torch.isnan(inputs.scores)  # (B,)


def _sequence_scores(inputs: AdvantageInputs) -> torch.Tensor:
    """Scores with the sequence-level KL penalty when KL goes in the reward."""
    if inputs.kl is None:
        return inputs.scores.float()
    return inputs.scores.float() - inputs.beta * (inputs.kl * inputs.mask).sum(dim=1)


def _grouped(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(groups, G) scores with NaN as 0, the validity mask, and the valid count per group."""
    grouped = scores.view(-1, group_size)
    valid = ~torch.isnan(grouped)
    return torch.where(valid, grouped, 0.0), valid, valid.sum(dim=1, keepdim=True)


def _group_centered(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores minus their group's mean (0 where invalid), with validity and counts."""
    filled, valid, count = _grouped(scores, group_size)
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    return torch.where(valid, filled - mean, 0.0), valid, count


def _broadcast(per_sequence: torch.Tensor, inputs: AdvantageInputs) -> torch.Tensor:
    per_sequence = torch.where(_valid_rows(inputs), per_sequence, 0.0)
    return per_sequence[:, None] * inputs.mask  # (B, T)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs, scale: str = "group", eps: float = 1e-4) -> AdvantageOutput:
    centered, valid, count = _group_centered(_sequence_scores(inputs), inputs.group_size)  # (groups, G)
    if scale == "group":
        std = (centered.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        centered = centered / (std + eps)
    elif scale == "batch":
        scores = _sequence_scores(inputs)
        present = scores[~torch.isnan(scores)]
        std = present.std() if present.numel() > 1 else torch.zeros(())
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', not {scale!r}")
    return AdvantageOutput(_broadcast(centered.flatten(), inputs))


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    return grpo(inputs, scale="none")


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    if inputs.group_size < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    filled, valid, count = _grouped(_sequence_scores(inputs), inputs.group_size)
    others = count - 1
    baseline = (filled.sum(dim=1, keepdim=True) - filled) / others.clamp(min=1)
    advantages = torch.where(valid & (others > 0), filled - baseline, 0.0)
    return AdvantageOutput(_broadcast(advantages.flatten(), inputs))


def _token_rewards(scores: torch.Tensor, inputs: AdvantageInputs, mask: torch.Tensor) -> torch.Tensor:
    """(B, T): the score on each row's last valid token, minus beta * kl on every token."""
    rewards = torch.zeros_like(mask, dtype=torch.float32)
    lengths = mask.sum(dim=1).long()
    rows = (lengths > 0).nonzero().flatten()
    rewards[rows, lengths[rows] - 1] = scores[rows].float()
    if inputs.kl is not None:
        rewards = rewards - inputs.beta * inputs.kl * mask
    return rewards


def _discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def _whiten(values: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(values - mean) / (std + eps) over the valid tokens, Bessel std; 0 elsewhere."""
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    variance = ((values - mean).pow(2) * mask).sum() / (count - 1).clamp(min=1)
    return (values - mean) / (variance.sqrt() + eps) * mask


def _reinforce_pp_from(scores: torch.Tensor, inputs: AdvantageInputs, gamma: float, eps: float) -> AdvantageOutput:
    mask = inputs.mask.float() * _valid_rows(inputs)[:, None]
    scores = torch.where(_valid_rows(inputs), scores, 0.0)
    returns = _discounted_returns(_token_rewards(scores, inputs, mask), mask, gamma)
    return AdvantageOutput(_whiten(returns, mask, eps))


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs, gamma: float = 1.0, eps: float = 1e-8) -> AdvantageOutput:
    return _reinforce_pp_from(inputs.scores.float(), inputs, gamma, eps)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline(inputs: AdvantageInputs, gamma: float = 1.0, eps: float = 1e-8) -> AdvantageOutput:
    centered, _, _ = _group_centered(inputs.scores.float(), inputs.group_size)
    return _reinforce_pp_from(centered.flatten(), inputs, gamma, eps)


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(
    inputs: AdvantageInputs, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True, eps: float = 1e-8
) -> AdvantageOutput:
    if inputs.values is None:
        raise ValueError("gae needs the critic's values")
    mask = inputs.mask.float() * _valid_rows(inputs)[:, None]
    rewards = _token_rewards(torch.where(_valid_rows(inputs), inputs.scores.float(), 0.0), inputs, mask)
    values = inputs.values.float() * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])  # V after the last valid token is 0
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return AdvantageOutput(_whiten(advantages, mask, eps) if whiten else advantages, returns)


@ADVANTAGE_ESTIMATORS.register("grpo_process")
def grpo_process(inputs: AdvantageInputs, eps: float = 1e-4) -> AdvantageOutput:
    if inputs.step_scores is None or inputs.step_ends is None:
        raise ValueError("grpo_process needs step_scores and step_ends (from a process reward model)")
    groups, size = inputs.scores.shape[0] // inputs.group_size, inputs.group_size
    steps = inputs.step_scores.float().view(groups, -1)  # (groups, G * S)
    valid = ~torch.isnan(steps)
    count = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, steps, 0.0)
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    std = ((torch.where(valid, steps - mean, 0.0)).pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    normalised = torch.where(valid, (steps - mean) / (std + eps), 0.0).view(groups * size, -1)  # (B, S)
    positions = torch.arange(inputs.mask.shape[1], device=inputs.mask.device)
    covers = positions[None, None, :] <= inputs.step_ends[:, :, None]  # (B, S, T)
    advantages = (normalised[:, :, None] * covers).sum(dim=1)  # (B, T)
    return AdvantageOutput(advantages * inputs.mask * _valid_rows(inputs)[:, None])
