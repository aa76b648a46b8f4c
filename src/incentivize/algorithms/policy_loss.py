"""Clipped policy-gradient and value losses, per token.

`ppo_clip_loss` is PPO's clipped surrogate (Schulman et al. 2017) with DAPO's decoupled clip range
(`eps_low`, `eps_high`, arXiv 2503.14476), optional dual clip (a cap on the loss of negative-advantage
tokens whose ratio ran away, verl's `clip_ratio_c`), and a token- or sequence-level ratio (the
sequence ratio exp(sum_t log-ratio) is TRL's RLOO). `approx_kl` in the stats is the mean of
0.5 * (log-ratio)^2 between the behaviour policy and the current one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PolicyLossStats(NamedTuple):
    clip_frac_low: torch.Tensor  # share of valid tokens where the lower clip binds (A < 0)
    clip_frac_high: torch.Tensor  # share of valid tokens where the upper clip binds (A > 0)
    ratio_mean: torch.Tensor
    approx_kl: torch.Tensor


class ValueLossStats(NamedTuple):
    clip_frac: torch.Tensor
    explained_variance: torch.Tensor


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((values * mask).sum() / mask.sum().clamp(min=1)).detach()


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Per-token loss (B, T) = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)."""
    log_ratio = logp - old_logp  # (B, T)
    if ratio_level == "sequence":
        log_ratio = (log_ratio * mask).sum(dim=1, keepdim=True).expand_as(logp)
    elif ratio_level != "token":
        raise ValueError(f"ratio_level must be 'token' or 'sequence', not {ratio_level!r}")
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError("dual_clip must be greater than 1")
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    stats = PolicyLossStats(
        clip_frac_low=_masked_mean(((ratio < 1.0 - eps_low) & (advantages < 0)).float(), mask),
        clip_frac_high=_masked_mean(((ratio > 1.0 + eps_high) & (advantages > 0)).float(), mask),
        ratio_mean=_masked_mean(ratio, mask),
        approx_kl=_masked_mean(0.5 * log_ratio.pow(2), mask),
    )
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip: float = 0.2
) -> tuple[torch.Tensor, ValueLossStats]:
    """Per-token 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c, c)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.maximum((values - returns).pow(2), (clipped - returns).pow(2))
    residual_var = _masked_variance(returns - values, mask)
    stats = ValueLossStats(
        clip_frac=_masked_mean(((values - old_values).abs() > clip).float(), mask),
        explained_variance=(1.0 - residual_var / _masked_variance(returns, mask).clamp(min=1e-8)).detach(),
    )
    return loss, stats


def _masked_variance(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = (values * mask).sum() / mask.sum().clamp(min=1)
    return ((values - mean).pow(2) * mask).sum() / mask.sum().clamp(min=1)
