"""From a per-token loss (B, T) to one scalar, with the normaliser as an explicit argument.

Every aggregation is `aggregation(per_token, mask, normalizer) -> scalar` and divides a SUM over the
rows it is given by `normalizer`. The normaliser is computed once from the mask of the whole global
batch (`global_normalizer`: all micro-batches, and all ranks if the caller all-reduces the mask's
counts) and passed unchanged to every micro-batch. The micro-batch losses then add up to the
full-batch loss, and so do their gradients: gradient accumulation cannot rescale the loss, the bug
class reported against TRL (verl's `agg_loss` takes the same approach).

- `token_mean` (TRL `dapo`, `bnpo`): sum_{i,t} l_it m_it / N, N = valid tokens.
- `seq_mean_token_mean` (TRL `grpo`): sum_i [sum_t l_it m_it / max(1, len_i)] / N, N = sequences.
- `seq_mean_token_sum_norm` (TRL `dr_grpo`): sum_{i,t} l_it m_it / N, N = sequences x L_max.

Papers: `seq_mean_token_mean` is GRPO's 1/G sum_i 1/|o_i| sum_t (DeepSeekMath, arXiv 2402.03300,
eq. 3); `token_mean` is DAPO's token-level loss (arXiv 2503.14476, eq. 8); `seq_mean_token_sum_norm`
is Dr. GRPO's constant normaliser (arXiv 2503.20783), which only rescales the learning rate.

Choices: "sequences" counts every row of the batch, including rows whose mask is all zero (a
sample without a reward, or a truncated one masked out), as TRL does; this keeps Dr. GRPO's normaliser
a true constant. TRL's `bnpo` normalises by the local batch's tokens; here it is an alias of
`token_mean` over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from incentivize.algorithms.registry import Registry
from incentivize.errors import IncentivizeError

Aggregation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | float], torch.Tensor]
AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")
LOSS_TYPES = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "bnpo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm"}


@AGGREGATIONS.register("token_mean")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float) -> torch.Tensor:
    """sum(l * mask) / normalizer; normalizer = valid tokens in the global batch.

    >>> token_mean(torch.tensor([[1.0, 3.0], [5.0, 9.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 3.0)
    tensor(3.)
    """
    return (per_token * mask).sum() / normalizer


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float) -> torch.Tensor:
    """sum_i [sum_t l * mask / max(1, |o_i|)] / normalizer; normalizer = sequences in the global batch."""
    per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
    return per_sequence.sum() / normalizer


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float) -> torch.Tensor:
    """sum(l * mask) / normalizer; normalizer = sequences in the global batch x max completion length."""
    return (per_token * mask).sum() / normalizer


def global_normalizer(aggregation: str, full_mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """The normaliser `aggregation` needs, from the (B, T) mask of the whole (global) batch.

    Returns a float32 scalar tensor on the mask's device (no host sync); at least 1.

    >>> mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    >>> [global_normalizer(name, mask, 16).item() for name in AGGREGATIONS]
    [2.0, 32.0, 3.0]
    """
    sequences = float(max(1, full_mask.shape[0]))
    if aggregation == "token_mean":
        return full_mask.float().sum().clamp(min=1.0)
    if aggregation == "seq_mean_token_mean":
        return torch.tensor(sequences, device=full_mask.device)
    if aggregation == "seq_mean_token_sum_norm":
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be at least 1, not {max_completion_length}")
        return torch.tensor(sequences * max_completion_length, device=full_mask.device)
    AGGREGATIONS.get(aggregation)  # raises the error that lists the choices
    raise NotImplementedError(f"no normaliser for the registered aggregation {aggregation!r}")


def loss_type_to_aggregation(name: str) -> str:
    """An aggregation name from TRL's `loss_type` names (`grpo`, `dapo`, `bnpo`, `dr_grpo`) or itself.

    >>> loss_type_to_aggregation("dr_grpo")
    'seq_mean_token_sum_norm'
    """
    if name in LOSS_TYPES:
        return LOSS_TYPES[name]
    if name in AGGREGATIONS:
        return name
    choices = ", ".join(sorted([*LOSS_TYPES, *AGGREGATIONS.names()]))
    raise IncentivizeError(f"unknown loss_type {name!r} (choices: {choices})")
