"""Per-token KL estimators between the policy and a reference (Schulman, "Approximating KL
Divergence", 2020; k1/k2/k3 as in OpenRLHF `compute_approx_kl` and verl `kl_penalty`).

Every estimator is `estimator(logp, ref_logp) -> (B, T)`, differentiable w.r.t. `logp`, with
`lr = logp - ref_logp` evaluated on tokens sampled from the policy:

- k1 = lr: unbiased for KL(pi || pi_ref), can be negative. The one to put in the reward (RLOO,
  REINFORCE++, PPO).
- k2 = lr^2 / 2: low variance, biased; its gradient is close to k1's when used as a loss.
- k3 = exp(-lr) - 1 + lr = pi_ref/pi - log(pi_ref/pi) - 1: unbiased and never negative. DeepSeekMath
  (arXiv 2402.03300) eq. 4, the KL term of GRPO's loss.

`unbiased_k3(logp, old_logp, ref_logp)` is k3 times the importance ratio r = pi_theta / pi_old, with
r's gradient kept (DeepSeek-V3.2, arXiv 2512.02556; TRL, slime `--use-unbiased-kl`). On tokens drawn from
pi_old, E[r k3] = KL(pi_theta || pi_ref) exactly, and its gradient is the reverse-KL gradient; the
gradient of plain k3 is, on-policy, the gradient of the forward KL(pi_ref || pi_theta) instead
(ALGORITHMS.md section 16). r must not be detached, even when it is 1 (the first update of a batch).

Deviation: k3 clamps `lr` to [-20, 20] before the exponential (as verl does; OpenRLHF clamps the
result to [-10, 10] instead), so one extreme token cannot overflow float32. Beyond the clamp the
value is k3 at the boundary and the gradient is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from incentivize.algorithms.registry import Registry

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")

_LOG_RATIO_CLAMP = 20.0


@KL_ESTIMATORS.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) log-ratio log pi - log pi_ref.

    >>> k1(torch.tensor([[-1.0]]), torch.tensor([[-1.5]]))
    tensor([[0.5000]])
    """
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) half the squared log-ratio."""
    return 0.5 * (logp - ref_logp).pow(2)


@KL_ESTIMATORS.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) exp(-lr) - 1 + lr, with lr clamped to [-20, 20]; never negative."""
    log_ratio = (logp - ref_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    return torch.exp(-log_ratio) - 1.0 + log_ratio


def unbiased_k3(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(B, T) r * k3 with r = exp(logp - old_logp) differentiable (log-ratio clamped to [-20, 20]).

    ALGORITHMS.md section 16: lp = -1.0, lp_old = -1.2, lp_ref = -1.5 give r = 1.221403, k3 = 0.106531.

    >>> unbiased_k3(torch.tensor([[-1.0]]), torch.tensor([[-1.2]]), torch.tensor([[-1.5]]))
    tensor([[0.1301]])
    """
    ratio = torch.exp((logp - old_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    return ratio * k3(logp, ref_logp)
