"""Importance weights that correct for the rollout policy differing from the trained one.

The engine may sample from a copy of the policy in another precision (bfloat16 rollouts, a
float32 learner), or from another engine altogether (vLLM, a rollout worker). The sampled tokens then
come from pi_rollout, while the loss assumes they came from pi_old, the trained weights in training
precision. Each token is weighted by rho_t = pi_old(y_t) / pi_rollout(y_t), computed without gradient
(Yao, Liu et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025;
TRL `vllm_importance_sampling_*`, verl `rollout_correction`, slime `--use-tis`):

    token_truncate     w_t = min(rho_t, C)                       (TIS; the blog uses C = 2)
    token_mask         w_t = rho_t * 1[C_low <= rho_t <= C]      (MIS, IcePop: the token is dropped)
    sequence_truncate  w_i = min(rho_i, C),  rho_i = prod_t rho_t (one weight for every token of row i)
    sequence_mask      w_i = rho_i * 1[C_low <= rho_i <= C]       (TRL's default mode, with C = 3)

`C_low` defaults to 1/C for the mask modes; the truncate modes have no lower bound unless one is
given (TRL's `clip_min`). The weight multiplies the policy term of the loss only, not the KL term (as
TRL does).

Choices:
- A masked token or sequence keeps its place in the loss's normaliser: its weight is 0, its mask
  unchanged (TRL's convention; verl's rejection sampling edits the mask instead, which changes the
  normaliser of the other tokens).
- Log-ratios are clamped to [-20, 20] before the exponential (as verl does), so one token the sampler
  found nearly impossible cannot overflow to inf.
- `kl` is the k3 estimate of KL(pi_rollout || pi_old), rho - 1 - log rho averaged over the sampled
  tokens: unbiased, because the tokens were drawn from pi_rollout, and never negative.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from incentivize.errors import IncentivizeError

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
_LOG_RATIO_CLAMP = 20.0


class MismatchStats(NamedTuple):
    """Detached scalars over the valid tokens (the share over tokens, also in the sequence modes)."""

    mean_abs_log_ratio: torch.Tensor  # mean |log pi_old - log pi_rollout| per token
    corrected_share: torch.Tensor  # share of tokens whose weight was truncated to C (or raised to C_low) or masked
    kl: torch.Tensor  # k3 estimate of KL(pi_rollout || pi_old) per token
    weight_mean: torch.Tensor  # mean weight per token


def check_mode(mode: str, cap: float, cap_low: float | None = None) -> None:
    """Refuse an unknown mode or caps that cannot bound a ratio, with the fix in the message."""
    if mode not in MODES:
        raise IncentivizeError(f"unknown rollout_correction {mode!r} (choices: none, {', '.join(MODES)})")
    if not cap >= 1.0:
        raise IncentivizeError(f"rollout_correction_cap must be at least 1 (the blog uses 2, TRL 3), not {cap}")
    if cap_low is not None and not 0.0 <= cap_low <= 1.0:
        raise IncentivizeError(f"rollout_correction_cap_low must lie in [0, 1] (default 1/cap), not {cap_low}")


def rollout_weights(
    train_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    *,
    cap: float = 2.0,
    cap_low: float | None = None,
) -> tuple[torch.Tensor, MismatchStats]:
    """(B, T) detached weights pi_old / pi_rollout after `mode`'s cap, 0 on masked tokens, and the mismatch stats.

    train_logp: (B, T) log pi_old of the sampled tokens in training precision; rollout_logp: (B, T) the
    sampler's log-probs of the same tokens; mask: (B, T), 1 on the completion tokens that are trained.

    >>> weights, stats = rollout_weights(torch.tensor([[0.9, -0.2, 0.1]]), torch.zeros(1, 3), torch.ones(1, 3))
    >>> weights
    tensor([[2.0000, 0.8187, 1.1052]])
    >>> rollout_weights(torch.tensor([[0.9, -0.2, 0.1]]), torch.zeros(1, 3), torch.ones(1, 3), "sequence_mask")[0]
    tensor([[0., 0., 0.]])
    """
    check_mode(mode, cap, cap_low)
    with torch.no_grad():
        mask = mask.to(torch.float32)
        valid = mask > 0
        log_ratio = torch.where(valid, (train_logp.float() - rollout_logp.float()), 0.0)  # (B, T)
        log_ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        token_ratio = torch.exp(log_ratio)  # (B, T)
        if mode.startswith("sequence"):
            sequence_log = log_ratio.sum(dim=1, keepdim=True).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
            ratio = torch.exp(sequence_log).expand_as(log_ratio)  # (B, T), one value per row
        else:
            ratio = token_ratio
        low = cap_low if cap_low is not None else (1.0 / cap if mode.endswith("mask") else None)
        if mode.endswith("truncate"):
            weights = ratio.clamp(min=low, max=cap)
            corrected = (ratio > cap) | ((ratio < low) if low is not None else torch.zeros_like(valid))
        else:
            assert low is not None
            outside = (ratio > cap) | (ratio < low)
            weights = torch.where(outside, 0.0, ratio)
            corrected = outside
        weights = weights * mask
        tokens = mask.sum().clamp(min=1.0)
        stats = MismatchStats(
            mean_abs_log_ratio=(log_ratio.abs() * mask).sum() / tokens,
            corrected_share=(corrected.float() * mask).sum() / tokens,
            kl=((token_ratio - 1.0 - log_ratio) * mask).sum() / tokens,
            weight_mean=weights.sum() / tokens,
        )
    return weights, stats
