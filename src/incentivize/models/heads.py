"""A value head on a causal LM backbone: the PPO critic."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ValueModel(nn.Module):
    """Scalar value per position: `backbone` (the transformer without its LM head) + a linear head.

    `forward` returns (B, L) values for every input position; the value of completion token t is
    read at the position whose logits sample token t (the state before the token).
    """

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # start at V = 0 so early advantages are the raw returns
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, model: Any) -> ValueModel:
        """A critic whose backbone is a copy of `model`'s transformer (the usual initialisation)."""
        import copy

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = copy.deepcopy(base.model)
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        return cls(backbone, base.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)  # (B, L)
