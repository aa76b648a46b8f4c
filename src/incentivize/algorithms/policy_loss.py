"""Clipped policy-gradient and value losses, per token; each returns `(loss (B, T), stats)`.

`ppo_clip_loss` is PPO's clipped surrogate (Schulman et al., arXiv 1707.06347), negated:
    loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t),  rho_t = pi_theta / pi_old
with DAPO's decoupled clip range (`eps_low`, `eps_high`; arXiv 2503.14476, eps_high 0.28 there),
optional dual clip (Ye et al., arXiv 1912.09729; verl `clip_ratio_c`): for A_t < 0 the loss is capped at
-c * A_t, so a token whose ratio ran away cannot dominate the update; and a token- or sequence-level
ratio: `ratio_level="sequence"` uses rho_i = exp(sum_t (logp - old_logp) * mask) for every token of
sequence i (TRL's RLOO).

`gspo_loss` is GSPO (Zheng et al., arXiv 2507.18071) in its token form (verl's `gspo`, TRL's
`sequence_token`): every token of sequence i carries the length-normalised sequence ratio
s_i = exp(mean_t (logp - old_logp)), clipped at [1 - eps_low, 1 + eps_high] (the paper: 3e-4, 4e-4), and its
gradient flows through its own token's log-prob only, s_it = sg(s_i) * pi_theta(y_t) / sg(pi_theta(y_t)).
With one advantage per sequence and `seq_mean_token_mean` aggregation this is the sequence objective
(1/G) sum_i min(s_i A_i, clip(s_i) A_i) in value and gradient; the token form also takes per-token
advantages. The log of s_i is clamped at 10 (as verl does).

`cispo_loss` is CISPO (MiniMax-M1, arXiv 2506.13585): loss_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) *
A_t * logp_t. Every token keeps its gradient, scaled by the clipped importance weight (PPO's clip zeroes the
gradient of a clipped token instead). `eps_low`, `eps_high` are distances from 1, as in verl and slime (TRL's
`epsilon_high` is an absolute cap: its 5.0 is eps_high = 4 here). The loss value is not a surrogate that can
be compared with PPO's; `clip_frac_high` counts the capped tokens with A > 0 (TRL's `cispo_clip_ratio`).

`POLICY_LOSSES` names the three for the config's `policy_loss`: `ppo`, `gspo`, `cispo`; each is
`loss(logp, old_logp, advantages, mask, *, eps_low, eps_high, dual_clip, ratio_level) -> (loss, stats)`.

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

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from incentivize.algorithms.registry import Registry

_LOG_RATIO_CLAMP = 20.0
_GSPO_LOG_RATIO_MAX = 10.0


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


PolicyLoss = Callable[..., tuple[torch.Tensor, "PolicyLossStats"]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


@POLICY_LOSSES.register("ppo")
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
    **_: Any,
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

    return loss, _stats(ratio, token_log_ratio, advantages, mask, eps_low, eps_high)


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    **_: Any,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Per-token GSPO loss (B, T) in the token form, 0 on masked tokens, and its stats (`ratio_mean`: mean s_i).

    ALGORITHMS.md section 12: sequence [3e-4, 9e-4, 3e-4] with A = +1 is clipped (s = 1.0005 > 1 + 4e-4).

    >>> loss, stats = gspo_loss(torch.tensor([[3e-4, 9e-4, 3e-4]]), torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3))
    >>> round(float(loss[0, 0]), 6), stats.clip_frac_high
    (-1.0004, tensor(1.))
    """
    mask = mask.to(logp.dtype)
    trained = mask > 0
    token_log_ratio = torch.where(trained, logp - old_logp, 0.0)  # (B, T)
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
    sequence_log_ratio = (token_log_ratio.sum(dim=1, keepdim=True) / lengths).clamp(max=_GSPO_LOG_RATIO_MAX)  # (B, 1)
    # value s_i on every token; the gradient through the token's own log-prob only
    own = torch.where(trained, logp, 0.0)
    ratio = torch.exp(sequence_log_ratio.detach() + own - own.detach())  # (B, T)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.where(trained, -torch.minimum(ratio * advantages, clipped_ratio * advantages), 0.0)
    return loss, _stats(ratio, token_log_ratio, advantages, mask, eps_low, eps_high)


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 4.0,
    **_: Any,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Per-token CISPO loss (B, T), -sg(clip(rho, 1 - eps_low, 1 + eps_high)) * A * logp, 0 on masked tokens.

    ALGORITHMS.md section 13: ratios [0.5, 1, 1.5, 6] capped at 5 give weights [0.5, 1, 1.5, 5].

    >>> ratios, logp = torch.tensor([[0.5, 1.0, 1.5, 6.0]]), torch.tensor([[-2.0, -1.0, -0.5, -0.1]])
    >>> loss, stats = cispo_loss(logp, logp - ratios.log(), torch.ones(1, 4), torch.ones(1, 4))
    >>> loss, stats.clip_frac_high
    (tensor([[1.0000, 1.0000, 0.7500, 0.5000]]), tensor(0.2500))
    """
    mask = mask.to(logp.dtype)
    trained = mask > 0
    token_log_ratio = torch.where(trained, logp - old_logp, 0.0)  # (B, T)
    ratio = torch.exp(token_log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high).detach()
    loss = torch.where(trained, -weight * advantages * logp, 0.0)
    return loss, _stats(ratio, token_log_ratio, advantages, mask, eps_low, eps_high)


def _stats(ratio: torch.Tensor, token_log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
           eps_low: float, eps_high: float) -> PolicyLossStats:
    """The clip fractions of `ratio` (the one the loss clipped), its mean, and k3 on the per-token ratios."""
    with torch.no_grad():
        ratio = ratio.detach()
        log_ratio = token_log_ratio.detach().clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return PolicyLossStats(
            clip_frac_low=_masked_mean(((ratio < 1.0 - eps_low) & (advantages < 0)).to(mask.dtype), mask),
            clip_frac_high=_masked_mean(((ratio > 1.0 + eps_high) & (advantages > 0)).to(mask.dtype), mask),
            ratio_mean=_masked_mean(ratio, mask),
            approx_kl=_masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask),
        )


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
