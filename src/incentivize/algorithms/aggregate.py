"""From per-token losses to one scalar, with the normaliser as an explicit argument.

The normaliser is computed once from the whole batch (`global_normalizer`) and passed to every
micro-batch, so the sum of the micro-batch losses is the full-batch loss: gradient accumulation
cannot rescale it (the loss-scaling bug class reported against TRL).

- `token_mean` (DAPO, TRL `dapo`/`bnpo`): sum of token losses / valid tokens in the batch.
- `seq_mean_token_mean` (GRPO paper, TRL `grpo`): mean over sequences of each sequence's token mean.
- `seq_mean_token_sum_norm` (Dr. GRPO, TRL `dr_grpo`): sum of token losses / (sequences x max
  completion length), a constant that only rescales the learning rate.
Sequences with no valid token (e.g. no reward) are not counted.
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
    return (per_token * mask).sum() / normalizer


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float) -> torch.Tensor:
    per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_sequence.sum() / normalizer


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float) -> torch.Tensor:
    return (per_token * mask).sum() / normalizer


def global_normalizer(aggregation: str, full_mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """The normaliser `aggregation` needs, from the mask of the whole batch (B, T)."""
    sequences = (full_mask.sum(dim=1) > 0).sum().clamp(min=1).float()
    if aggregation == "token_mean":
        return full_mask.sum().clamp(min=1).float()
    if aggregation == "seq_mean_token_mean":
        return sequences
    if aggregation == "seq_mean_token_sum_norm":
        return sequences * max_completion_length
    AGGREGATIONS.get(aggregation)  # raises the error that lists the choices
    raise AssertionError(aggregation)


def loss_type_to_aggregation(loss_type: str) -> str:
    """TRL's `loss_type` names, or an aggregation name itself."""
    if loss_type in LOSS_TYPES:
        return LOSS_TYPES[loss_type]
    if loss_type in AGGREGATIONS:
        return loss_type
    raise IncentivizeError(
        f"unknown loss_type {loss_type!r} (choices: {', '.join(sorted([*LOSS_TYPES, *AGGREGATIONS.names()]))})"
    )
