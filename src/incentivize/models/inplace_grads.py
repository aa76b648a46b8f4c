"""Embeddings that add their gradient into an existing `.grad` in place.

The embedding's backward pass in PyTorch builds a dense gradient the size of the vocabulary matrix
(113 MB for SmolLM2-135M) and then adds it to `.grad`. An `InPlaceGradEmbedding` whose
`grad_in_place` is on, and whose weight's `.grad` already exists (the RL learner's flat gradient
buffers, `trainers/flat_state.py`), adds the gradient rows straight into `.grad` with `index_add_`.
Anything else takes `nn.Embedding`'s own path. `incentivize.models.speed.enable_training_paths`
installs it; the output layer's side of a tied vocabulary matrix is `speed.TrainingLinear`.
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
    """An `nn.Embedding` that, with `grad_in_place` on and the weight's gradient already there, adds its
    gradient rows into `.grad` instead of building a dense vocabulary-sized gradient first."""

    grad_in_place: bool = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (not self.grad_in_place or weight.grad is None or not torch.is_grad_enabled()
                or self.max_norm is not None or self.scale_grad_by_freq or self.sparse):
            return super().forward(ids)
        result: torch.Tensor = _Embedding.apply(ids, weight, self.padding_idx)
        return result

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grad_in_place={self.grad_in_place}"
