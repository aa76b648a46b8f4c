"""Embeddings that add their gradient into an existing `.grad` in place.

The embedding's backward pass in PyTorch builds a dense gradient the size of the vocabulary matrix
(113 MB for SmolLM2-135M) and then adds it to `.grad`. For a weight flagged `accumulate_in_place`
whose `.grad` already exists (the RL learner's flat gradient buffers, `trainers/flat_state.py`),
`InPlaceGradEmbedding` adds the gradient rows straight into `.grad` with `index_add_`. Anything else
takes `nn.Embedding`'s own path. The output layer's side of a tied vocabulary matrix is in
`incentivize.models.onednn`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable


class _Embedding(torch.autograd.Function):
    """An embedding lookup whose backward adds into the existing `weight.grad` in place."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids, weight)
        ctx.padding_idx = padding_idx
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        ids, weight = ctx.saved_tensors
        ids, rows = ids.reshape(-1), grad.reshape(-1, weight.shape[1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        weight.grad.index_add_(0, ids, rows)
        return None, None, None


class InPlaceGradEmbedding(torch.nn.Embedding):
    """An `nn.Embedding` that, for a weight flagged `accumulate_in_place` whose gradient exists, adds its
    gradient rows into `.grad` instead of building a dense vocabulary-sized gradient first."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (weight.grad is None or not getattr(weight, "accumulate_in_place", False) or not torch.is_grad_enabled()
                or self.max_norm is not None or self.scale_grad_by_freq or self.sparse):
            return super().forward(ids)
        result: torch.Tensor = _Embedding.apply(ids, weight, self.padding_idx)
        return result


def install(model: torch.nn.Module) -> None:
    """Make every plain `nn.Embedding` of `model` an `InPlaceGradEmbedding` (a subclass: names and state
    dicts stay as they were)."""
    for module in model.modules():
        if type(module) is torch.nn.Embedding:
            module.__class__ = InPlaceGradEmbedding


def uninstall(model: torch.nn.Module) -> None:
    for module in model.modules():
        if type(module) is InPlaceGradEmbedding:
            module.__class__ = torch.nn.Embedding  # type: ignore[assignment]
