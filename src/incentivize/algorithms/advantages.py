"""Advantage estimators: one registry, one calling convention.

Every estimator is `estimator(inputs: AdvantageInputs, **params) -> AdvantageOutput`: `inputs` holds
the batch (B = prompts x group_size rows, a prompt's samples contiguous: rows g*G .. g*G+G-1) and
`params` are plain numbers or strings with the defaults below. `compute_advantages(name, inputs,
**params)` looks the name up in `ADVANTAGE_ESTIMATORS`; an unknown name raises an error listing the
choices.

Outcome estimators (one score per sequence, broadcast to its tokens):
- `grpo(scale="group", eps=1e-4)`: (r - group mean) / (group std + eps), Bessel std (DeepSeekMath,
  arXiv 2402.03300, section 4.1.2; eps and std convention of TRL). `scale="batch"` divides by the std
  of all scores in the batch, `"none"` does not divide.
- `dr_grpo()`: group mean subtracted only (Dr. GRPO, arXiv 2503.20783) = `grpo(scale="none")`.
- `rloo()`: r_i minus the mean of the other samples of its group (RLOO, arXiv 2402.14740).
  With `inputs.kl` set (KL in the reward) these three first replace each score by
  `r - beta * sum_t kl_t * mask_t`, the sequence-level KL penalty of TRL's RLOO.
Token-level estimators (score on the last trained token, `-beta * kl_t` on every trained token):
- `reinforce_pp(gamma=1.0, eps=1e-8)`: discounted returns, then normalised over all valid tokens of
  the batch, (G - mean) / (Bessel std + eps) (REINFORCE++, arXiv 2501.03262).
- `reinforce_pp_baseline(gamma=1.0, eps=1e-8)`: group mean subtracted from the scores, then as
  `reinforce_pp` (REINFORCE++-baseline).
- `gae(gamma=1.0, lam=0.95, whiten=True, eps=1e-8)`: generalised advantage estimation (Schulman et
  al., arXiv 1506.02438) with the critic's `values`, V = 0 after the last trained token; returns =
  A + V before the advantages are whitened over the valid tokens (PPO as in TRL/OpenRLHF/verl).
Process supervision:
- `grpo_process(eps=1e-4)`: PRM step scores normalised with the mean and Bessel std of all steps of
  the group's samples; a token's advantage is the sum of the normalised scores of the steps ending at
  or after it (DeepSeekMath section 4.1.3).

Everywhere: a row whose score is NaN (no reward) is left out of every mean, std and leave-one-out
baseline and gets advantage exactly 0 (TRL's handling of unscorable samples); a group whose scores are
all equal gets advantage 0, with any eps, 0 included (the values divided by a zero std are exactly 0);
advantages are 0 on masked tokens.

Deviations and choices the papers leave open:
- Masks need not be contiguous (tool output inside a completion has mask 0). The token-level
  estimators skip masked tokens the way verl's GAE does: the running return (and GAE's running
  advantage and next value) passes through a masked token unchanged and undiscounted, and "the last
  token" is the last token with mask 1.
- Whitening (`reinforce_pp*`, `gae`) divides by (Bessel std + eps), not by sqrt(var + eps).
- `grpo_process` also leaves out the steps of rows whose score is NaN, and ignores steps whose end
  index is negative; step ends past T - 1 cover every token.
- Statistics are per call: "batch" means the tensors passed in. For a batch split across ranks the
  caller gathers the scores first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from incentivize.algorithms.registry import Registry


@dataclass
class AdvantageInputs:
    """B = prompts * group_size rows, group members contiguous (rows g*G .. g*G+G-1). T = completion length."""

    scores: torch.Tensor  # (B,) sequence reward; NaN = no reward (excluded from baselines/statistics, advantage 0)
    mask: torch.Tensor  # (B, T) 1 on completion tokens to train on
    group_size: int
    kl: torch.Tensor | None = None  # (B, T) per-token KL (k1) to place in the reward, times beta; None: not in reward
    beta: float = 0.0
    values: torch.Tensor | None = None  # (B, T) critic values (gae only)
    step_scores: torch.Tensor | None = None  # (B, S) PRM step rewards, NaN past a row's last step (grpo_process)
    step_ends: torch.Tensor | None = None  # (B, S) long: token index where each step ends (grpo_process)


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # (B, T), 0 on masked tokens
    returns: torch.Tensor | None = None  # (B, T) value targets (gae), else None


AdvantageEstimator = Callable[..., AdvantageOutput]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def compute_advantages(name: str, inputs: AdvantageInputs, **params: object) -> AdvantageOutput:
    """Run the estimator registered as `name` on `inputs` with `params`.

    >>> inputs = AdvantageInputs(scores=torch.tensor([1.0, 0.0]), mask=torch.ones(2, 2), group_size=2)
    >>> compute_advantages("dr_grpo", inputs).advantages
    tensor([[ 0.5000,  0.5000],
            [-0.5000, -0.5000]])
    """
    return ADVANTAGE_ESTIMATORS.get(name)(inputs, **params)


# --- shared pieces ------------------------------------------------------------------------------


def _dtype(inputs: AdvantageInputs) -> torch.dtype:
    return torch.promote_types(inputs.scores.dtype, torch.float32)


def _check(inputs: AdvantageInputs) -> None:
    if inputs.scores.dim() != 1 or inputs.mask.dim() != 2 or inputs.mask.shape[0] != inputs.scores.shape[0]:
        raise ValueError(f"scores must be (B,) and mask (B, T); got {tuple(inputs.scores.shape)} and "
                         f"{tuple(inputs.mask.shape)}")
    if inputs.group_size < 1 or inputs.scores.shape[0] % inputs.group_size:
        raise ValueError(f"batch of {inputs.scores.shape[0]} rows is not a whole number of groups of "
                         f"{inputs.group_size}")


def _valid_rows(inputs: AdvantageInputs) -> torch.Tensor:
    return ~torch.isnan(inputs.scores)  # (B,)


def _train_mask(inputs: AdvantageInputs) -> torch.Tensor:
    """(B, T) float mask with the rows that have no score zeroed."""
    return inputs.mask.to(_dtype(inputs)) * _valid_rows(inputs).unsqueeze(1)


def _sequence_scores(inputs: AdvantageInputs) -> torch.Tensor:
    """(B,) scores, minus beta * the sequence's summed KL when the KL goes in the reward."""
    scores = inputs.scores.to(_dtype(inputs))
    if inputs.kl is None:
        return scores
    return scores - inputs.beta * (inputs.kl.to(scores.dtype) * inputs.mask).sum(dim=1)


def _exact_mean(values: torch.Tensor, valid: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over its `valid` entries (0 where there is none), along `dim` (kept) or overall.

    Taken around a valid entry's value, so that equal values have a mean exactly equal to them and
    centre to exactly 0: a plain float sum / n need not round back to the value (in float32,
    7 * 0.7 / 7 != 0.7), and the std guard would then blow the leftover up into an advantage.
    """
    if values.numel() == 0:
        return values.new_zeros(()) if dim is None else values.sum(dim=dim, keepdim=True)
    reduce = (lambda t: t.sum()) if dim is None else (lambda t: t.sum(dim=dim, keepdim=True))
    highest = torch.where(valid, values, -torch.inf)
    shift = highest.amax() if dim is None else highest.amax(dim=dim, keepdim=True)
    count = reduce(valid)
    shift = torch.where(count > 0, shift, 0.0)
    return shift + reduce(torch.where(valid, values - shift, 0.0)) / count.clamp(min=1)


def _group_stats(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group view of (B,) scores: NaN-filled-with-0 values, validity, and the mean over valid members.

    Returns (groups, G) values, (groups, G) bool validity and (groups, 1) mean (0 for an empty group),
    exact for equal scores (`_exact_mean`).
    """
    grouped = scores.view(-1, group_size)  # (groups, G)
    valid = ~torch.isnan(grouped)
    return torch.where(valid, grouped, 0.0), valid, _exact_mean(grouped, valid, dim=1)


def _bessel_std(centered: torch.Tensor, valid: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel std of already-centered values over `valid` entries (0 with fewer than two)."""
    squares = torch.where(valid, centered, 0.0).pow(2)
    if dim is None:
        return (squares.sum() / (valid.sum() - 1).clamp(min=1)).sqrt()
    return (squares.sum(dim=dim, keepdim=True) / (valid.sum(dim=dim, keepdim=True) - 1).clamp(min=1)).sqrt()


def _scale(centered: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
    """centered / (std + eps); 0 where the std is 0, which also holds with eps = 0 (the values are all
    equal there, so `centered` is exactly 0, and 0 / 0 would be NaN)."""
    return torch.where(std > 0, centered / (std + eps), 0.0)


def _to_tokens(per_sequence: torch.Tensor, inputs: AdvantageInputs) -> torch.Tensor:
    """(B,) -> (B, T): broadcast over the trained tokens; rows without a score get 0."""
    per_sequence = torch.where(_valid_rows(inputs), per_sequence, 0.0)
    return per_sequence.unsqueeze(1) * _train_mask(inputs)


def _token_rewards(scores: torch.Tensor, inputs: AdvantageInputs, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) r_t = [t == last trained token] * score - beta * kl_t * mask_t."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(mask > 0, positions, -1).amax(dim=1, keepdim=True)  # (B, 1), -1 for an empty row
    scores = torch.where(torch.isnan(scores), 0.0, scores)
    rewards = (positions == last).to(mask.dtype) * scores.unsqueeze(1)  # (B, T)
    if inputs.kl is not None:
        rewards = rewards - inputs.beta * inputs.kl.to(mask.dtype) * mask
    return rewards


def _whiten(values: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(values - mean) / (Bessel std + eps) over the entries with mask 1; 0 elsewhere."""
    valid = mask > 0
    centered = values - _exact_mean(values, valid)
    return _scale(centered, _bessel_std(centered, valid), eps) * mask


# --- outcome estimators -------------------------------------------------------------------------


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs, scale: str = "group", eps: float = 1e-4) -> AdvantageOutput:
    _check(inputs)
    scores = _sequence_scores(inputs)  # (B,)
    filled, valid, mean = _group_stats(scores, inputs.group_size)  # (groups, G)
    centered = torch.where(valid, filled - mean, 0.0)
    if scale == "group":
        centered = _scale(centered, _bessel_std(centered, valid, dim=1), eps)
    elif scale == "batch":
        present = ~torch.isnan(scores)  # (B,)
        scored = torch.where(present, scores, 0.0)
        batch_mean = scored.sum() / present.sum().clamp(min=1)
        centered = _scale(centered, _bessel_std(scored - batch_mean, present), eps)
    elif scale != "none":
        raise ValueError(f"grpo scale must be 'group', 'batch' or 'none', not {scale!r}")
    return AdvantageOutput(_to_tokens(centered.flatten(), inputs))


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    return grpo(inputs, scale="none")


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    _check(inputs)
    if inputs.group_size < 2:
        raise ValueError(f"rloo needs at least 2 samples per prompt (group_size is {inputs.group_size})")
    filled, valid, mean = _group_stats(_sequence_scores(inputs), inputs.group_size)  # (groups, G)
    count = valid.sum(dim=1, keepdim=True)  # (groups, 1)
    # r_i - mean_{j != i} r_j = n / (n - 1) * (r_i - mean), n = scored members of the group
    scale = count / (count - 1).clamp(min=1)
    # a sample whose group has no other scored member has no baseline: advantage 0
    advantages = torch.where(valid & (count > 1), (filled - mean) * scale, 0.0)
    return AdvantageOutput(_to_tokens(advantages.flatten(), inputs))


# --- token-level estimators ---------------------------------------------------------------------


def _discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) G_t = sum over trained s >= t of gamma^(number of trained steps between) r_s."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    trained = mask > 0
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(trained[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * mask


def _reinforce_pp_from(scores: torch.Tensor, inputs: AdvantageInputs, gamma: float, eps: float) -> AdvantageOutput:
    mask = _train_mask(inputs)  # (B, T)
    returns = _discounted_returns(_token_rewards(scores, inputs, mask), mask, gamma)
    return AdvantageOutput(_whiten(returns, mask, eps))


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs, gamma: float = 1.0, eps: float = 1e-8) -> AdvantageOutput:
    _check(inputs)
    return _reinforce_pp_from(inputs.scores.to(_dtype(inputs)), inputs, gamma, eps)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline(inputs: AdvantageInputs, gamma: float = 1.0, eps: float = 1e-8) -> AdvantageOutput:
    _check(inputs)
    filled, valid, mean = _group_stats(inputs.scores.to(_dtype(inputs)), inputs.group_size)
    centered = torch.where(valid, filled - mean, torch.nan).flatten()  # (B,), NaN rows stay NaN
    return _reinforce_pp_from(centered, inputs, gamma, eps)


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(
    inputs: AdvantageInputs, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True, eps: float = 1e-8
) -> AdvantageOutput:
    _check(inputs)
    if inputs.values is None:
        raise ValueError("gae needs the critic's values (AdvantageInputs.values)")
    mask = _train_mask(inputs)  # (B, T)
    trained = mask > 0
    rewards = _token_rewards(inputs.scores.to(mask.dtype), inputs, mask)  # (B, T)
    values = inputs.values.to(mask.dtype) * mask  # (B, T)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}
    next_value = torch.zeros_like(rewards[:, 0])  # (B,) V_{t+1}; 0 after the last trained token
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(trained[:, t], delta + gamma * lam * running, running)
        next_value = torch.where(trained[:, t], values[:, t], next_value)
        advantages[:, t] = running
    advantages = advantages * mask
    returns = advantages + values
    return AdvantageOutput(_whiten(advantages, mask, eps) if whiten else advantages, returns)


# --- process supervision ------------------------------------------------------------------------


def append_outcome_step(step_scores: torch.Tensor, step_ends: torch.Tensor, outcome: torch.Tensor,
                        last_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The steps (B, S) and their end tokens with one more step per row: `outcome` (B,) at `last_token` (B,),
    the completion's final token. A PRM scores how a solution goes; the outcome step also says where it ends.

    >>> scores, ends = append_outcome_step(torch.tensor([[0.5, float("nan")]]), torch.tensor([[3, -1]]),
    ...                                    torch.tensor([1.0]), torch.tensor([7]))
    >>> scores.tolist(), ends.tolist()
    ([[0.5, nan, 1.0]], [[3, -1, 7]])
    """
    return (torch.cat([step_scores, outcome.to(step_scores.dtype)[:, None]], dim=1),
            torch.cat([step_ends, last_token.to(step_ends.dtype)[:, None]], dim=1))


@ADVANTAGE_ESTIMATORS.register("grpo_process")
def grpo_process(inputs: AdvantageInputs, eps: float = 1e-4) -> AdvantageOutput:
    _check(inputs)
    if inputs.step_scores is None or inputs.step_ends is None:
        raise ValueError("grpo_process needs step_scores and step_ends (AdvantageInputs) from a process reward model")
    if inputs.step_scores.shape != inputs.step_ends.shape or inputs.step_scores.shape[0] != inputs.scores.shape[0]:
        raise ValueError(f"step_scores {tuple(inputs.step_scores.shape)} and step_ends "
                         f"{tuple(inputs.step_ends.shape)} must both be (B, S)")
    mask = _train_mask(inputs)  # (B, T)
    steps = inputs.step_scores.to(mask.dtype)  # (B, S)
    ends = inputs.step_ends.long()  # (B, S)
    valid = ~torch.isnan(steps) & _valid_rows(inputs).unsqueeze(1) & (ends >= 0)
    rows, width = steps.shape
    grouped, grouped_valid = steps.reshape(-1, inputs.group_size * width), valid.reshape(-1, inputs.group_size * width)
    mean = _exact_mean(grouped, grouped_valid, dim=1)  # (groups, 1)
    centered = torch.where(grouped_valid, grouped - mean, 0.0)  # (groups, G * S)
    normalised = _scale(centered, _bessel_std(centered, grouped_valid, dim=1), eps).reshape(rows, width)  # (B, S)
    # put each step's normalised score at its end token, then sum from the right: A_t = sum_{end_j >= t}
    at_end = torch.zeros_like(mask).scatter_add_(1, ends.clamp(0, mask.shape[1] - 1), normalised)  # (B, T)
    advantages = at_end.flip(1).cumsum(1).flip(1)
    return AdvantageOutput(advantages * mask)
