"""LaTRO (Chen et al. 2024, "Language Models are Hidden Reasoners", arXiv 2411.04282): the rationale z between a
question x and its gold answer y* is a latent variable, trained by a variational lower bound of log pi(y* | x)

    J = E_{z ~ pi(.|x)} [ log pi(y* | x + z) ]  -  beta * KL[ pi(z|x) || pi_0(z|x) ].

Its gradient over K rationales per question (Proposition 2) is the sum of two terms:

- an RLOO policy gradient on the rationale tokens, with the self-reward
  r(z_k) = log pi(y* | x + z_k) - beta * log(pi(z_k|x) / pi_0(z_k|x)) and the baseline the mean of the other
  K - 1 rewards (`incentivize.algorithms.advantages.rloo` with the KL in the reward: k1, summed over the
  rationale's tokens);
- the likelihood of the gold answer given each sampled rationale, sum_k grad log pi(y* | x + z_k), which
  teaches the answer given the rationale (weight 1 in the paper's formula, 0 in its released code's default).

Here (tensors in, tensors out):
- `self_rewards`: log pi(y* | x + z) from per-token log-probabilities of the appended gold answer, summed over
  its tokens (the paper's sequence log-likelihood, the default) or their mean (length-normalised, so a longer
  gold answer does not weigh more);
- `penalize_truncated`: a rationale that hit the length limit before the answer marker gets `factor` times the
  mean reward of the batch's finished ones (the released code's penalty: 2 times the mean of negative rewards);
- `answer_nll`: the answer term of the loss per sequence, -sum of the gold answer's log-probabilities.
"""

from __future__ import annotations

from typing import Literal

import torch

SelfReward = Literal["sum", "mean"]


def self_rewards(answer_logps: torch.Tensor, answer_mask: torch.Tensor, reduce: SelfReward = "sum") -> torch.Tensor:
    """(B,) log pi(y* | x + z) of each row from (B, T) per-token log-probs and the mask of the gold answer's tokens:
    their sum, or with `reduce="mean"` their mean. A row without answer tokens has no reward (NaN).

    >>> logps = torch.tensor([[-9.0, -1.0, -2.0], [-9.0, -0.5, 0.0]])
    >>> mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    >>> self_rewards(logps, mask).tolist(), self_rewards(logps, mask, "mean").tolist()
    ([-3.0, -0.5], [-1.5, -0.5])
    """
    mask = answer_mask.to(answer_logps.dtype)
    total = (answer_logps * mask).sum(dim=1)
    count = mask.sum(dim=1)
    reward = total / count.clamp(min=1) if reduce == "mean" else total
    return torch.where(count > 0, reward, torch.nan)


def penalize_truncated(rewards: torch.Tensor, truncated: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """(B,) `rewards`, where `truncated` rows get `factor` times the mean reward of the finished rows (NaN-free
    ones) of the batch; with no finished row, the mean of them all. Self-rewards are log-likelihoods (< 0), so a
    factor above 1 makes a truncated rationale worse than the average finished one.

    >>> penalize_truncated(torch.tensor([-1.0, -3.0, -0.5]), torch.tensor([False, False, True])).tolist()
    [-1.0, -3.0, -4.0]
    """
    finished = ~truncated & ~torch.isnan(rewards)
    pool = rewards[finished] if bool(finished.any()) else rewards[~torch.isnan(rewards)]
    if pool.numel() == 0:
        return rewards
    return torch.where(truncated, factor * pool.mean(), rewards)


def answer_nll(logps: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """(B,) -log pi(y* | x + z) per row: minus the sum of the gold answer's token log-probs (differentiable).

    >>> answer_nll(torch.tensor([[-9.0, -1.0, -2.0]]), torch.tensor([[0, 1, 1]])).tolist()
    [3.0]
    """
    return -(logps * answer_mask.to(logps.dtype)).sum(dim=1)
