"""Recompute each decoder layer's MLP in the backward pass instead of keeping its activations.

A SwiGLU MLP keeps four intermediate-width tensors per token for the backward pass (the gate and up
projections, the activated gate, their product), about two thirds of a decoder layer's saved
activations. `recompute_mlp(model)` makes every `*.mlp` module keep only its input and run its
forward again when the gradient is needed (`torch.utils.checkpoint`, non-reentrant): the gradients
are the same, the extra cost is the MLP's forward once more per training step. The MLP has no
cache or other side effect, so recomputing it is safe, unlike a whole decoder layer that writes a
KV cache. Without gradients (generation, reference and evaluation passes) the module runs as usual.

The change is a subclass swap, like `incentivize.models.speed`: parameter names, state dicts,
checkpoints and `deepcopy` stay as they were.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


_RECOMPUTED: dict[type, type] = {}


def _recomputed(cls: type) -> type:
    """`cls` with a forward that recomputes itself in the backward pass (one subclass per class)."""
    if cls in _RECOMPUTED:
        return _RECOMPUTED[cls]

    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plain = functools.partial(getattr(cls, "forward"), self)  # noqa: B009 - cls is any module class
        if torch.is_grad_enabled():
            return checkpoint(plain, *args, use_reentrant=False, **kwargs)
        return plain(*args, **kwargs)

    _RECOMPUTED[cls] = type(f"Recomputed{cls.__name__}", (cls,), {"forward": forward, "_recomputes": True})
    return _RECOMPUTED[cls]


def recompute_mlp(model: torch.nn.Module) -> int:
    """Make every module named `mlp` of `model` recompute its forward in the backward pass; returns how many."""
    changed = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "mlp" and not getattr(module, "_recomputes", False):
            module.__class__ = _recomputed(type(module))
            changed += 1
    return changed
