"""Per-token KL estimators between the policy and a reference (Schulman's k1, k2, k3).

With `lr = logp - ref_logp` on tokens sampled from the policy:
- k1 = lr: unbiased, can be negative; the estimator to put in the reward (RLOO, REINFORCE++, PPO).
- k2 = lr^2 / 2: low variance, biased.
- k3 = exp(-lr) - 1 + lr: unbiased and never negative; DeepSeekMath eq. 4, GRPO's loss term.
`lr` is clamped to [-20, 20] inside k3's exponential so one extreme token cannot overflow (verl
clamps the same way; OpenRLHF clamps the result instead).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from incentivize.algorithms.registry import Registry

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) log-ratio log pi - log pi_ref."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) half the squared log-ratio."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) exp(-lr) - 1 + lr, the non-negative unbiased estimator."""
    log_ratio = (logp - ref_logp).clamp(-20.0, 20.0)
    return torch.exp(-log_ratio) - 1.0 + log_ratio
