"""Clipped policy-gradient and value losses, per token; each returns `(loss (B, T), stats)`.

`ppo_clip_loss` is PPO's clipped surrogate (Schulman et al., arXiv 1707.06347), negated:
    loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t),  rho_t = pi_theta / pi_old
with DAPO's decoupled clip range (`eps_low`, `eps_high`; arXiv 2503.14476, eps_high 0.28 there),
optional dual clip (Ye et al., arXiv 1912.09729; verl `clip_ratio_c`): for A_t < 0 the loss is capped at
-c * A_t, so a token whose ratio ran away cannot dominate the update; and a token- or sequence-level
ratio: `ratio_level="sequence"` uses rho_i = exp(sum_t (logp - old_logp) * mask) for every token of
sequence i (TRL's RLOO).

`value_loss` is the clipped value regression of TRL/OpenRLHF/verl:
    0.5 * max((V - R)^2, (V_clip - R)^2),  V_clip = V_old + clip(V - V_old, -c, c).

Choices and deviations:
- The log-ratio is clamped to [-20, 20] before the exponential (verl does the same) so that
  an extreme token or a long sequence (sequence ratio) cannot overflow to inf and turn the gradient
  into NaN. Beyond the clamp the gradient through the ratio is 0.
- Masked tokens get loss 0 and do not enter the (sequence) ratio; their log-ratio is replaced by 0
  before the exponential, so garbage log-probs on padding cannot produce NaN.
- `approx_kl` is the k3 estimator of KL(pi_old || pi_theta) on the sampled tokens,
  rho - 1 - log rho: unbiased (the tokens come from pi_old) and never negative. It always uses the
  per-token ratio, also when the loss uses the sequence ratio.
- Stats are masked means over the valid tokens, detached: clip fractions count the tokens where
  the clipped term is the one `min` picks (the clip binds), i.e. A < 0 and rho < 1 - eps_low (low)
  or A > 0 and rho > 1 + eps_high (high). The value loss's `clip_frac` likewise counts the tokens
  where the clipped squared error is the larger one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

_LOG_RATIO_CLAMP = 20.0


class PolicyLossStats(NamedTuple):
    """Detached scalars, masked means over valid tokens."""

    clip_frac_low: torch.Tensor  # share of tokens with A < 0 where rho < 1 - eps_low (clip binds)
    clip_frac_high: torch.Tensor  # share of tokens with A > 0 where rho > 1 + eps_high (clip binds)
    ratio_mean: torch.Tensor  # mean rho (the sequence ratio when ratio_level="sequence")
    approx_kl: torch.Tensor  # mean of rho - 1 - log rho (k3 of KL(pi_old || pi_theta)), per-token rho


class ValueLossStats(NamedTuple):
    """Detached scalars over valid tokens."""

    clip_frac: torch.Tensor  # share of tokens where the clipped error is the larger one
    explained_variance: torch.Tensor  # 1 - Var(R - V) / Var(R)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((values * mask).sum() / mask.sum().clamp(min=1)).detach()


def _masked_variance(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = (values * mask).sum() / mask.sum().clamp(min=1)
    return ((values - mean).pow(2) * mask).sum() / mask.sum().clamp(min=1)


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
    """Per-token clipped surrogate loss (B, T), 0 on masked tokens, and its stats.

    logp: (B, T) log pi_theta of the sampled tokens (with grad); old_logp: (B, T) log pi_old;
    advantages, mask: (B, T).

    >>> loss, stats = ppo_clip_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1),
    ...                             torch.ones(1, 1), torch.ones(1, 1))
    >>> loss, stats.clip_frac_high
    (tensor([[-1.2000]]), tensor(1.))
    """
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level must be 'token' or 'sequence', not {ratio_level!r}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be greater than 1 (verl uses 3.0), not {dual_clip}")
    mask = mask.to(logp.dtype)
    trained = mask > 0
    token_log_ratio = torch.where(trained, logp - old_logp, 0.0)  # (B, T)
    if ratio_level == "sequence":
        log_ratio = token_log_ratio.sum(dim=1, keepdim=True).expand_as(logp)  # (B, T), one value per row
    else:
        log_ratio = token_log_ratio
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))  # (B, T)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)  # (B, T)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    loss = torch.where(trained, loss, 0.0)

    with torch.no_grad():
        token_ratio = torch.exp(token_log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
        stats = PolicyLossStats(
            clip_frac_low=_masked_mean(((ratio < 1.0 - eps_low) & (advantages < 0)).to(mask.dtype), mask),
            clip_frac_high=_masked_mean(((ratio > 1.0 + eps_high) & (advantages > 0)).to(mask.dtype), mask),
            ratio_mean=_masked_mean(ratio, mask),
            approx_kl=_masked_mean(token_ratio - 1.0 - token_log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP), mask),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, ValueLossStats]:
    """Per-token clipped value loss (B, T), 0 on masked tokens, and its stats.

    values: (B, T) current critic output (with grad); old_values: (B, T) the critic at rollout time;
    returns: (B, T) targets. `old_values` and `returns` are targets: pass them detached.
    """
    mask = mask.to(values.dtype)
    trained = mask > 0
    clipped = old_values + (values - old_values).clamp(-clip, clip)  # (B, T)
    unclipped_error = (values - returns).pow(2)
    clipped_error = (clipped - returns).pow(2)
    loss = torch.where(trained, 0.5 * torch.maximum(unclipped_error, clipped_error), 0.0)  # (B, T)

    with torch.no_grad():
        residual_variance = _masked_variance(returns - values, mask)
        return_variance = _masked_variance(returns, mask)
        stats = ValueLossStats(
            clip_frac=_masked_mean((clipped_error > unclipped_error).to(mask.dtype), mask),
            explained_variance=1.0 - residual_variance / return_variance.clamp(min=1e-8),
        )
    return loss, stats
