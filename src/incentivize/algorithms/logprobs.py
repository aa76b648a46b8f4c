"""Log-probabilities of chosen tokens and the policy entropy, without a full float32 log-softmax.

Both work on a few rows of the (B, T, V) logits at a time, so the float32 copy of the vocabulary
dimension exists for `chunk_size` rows only; gradients flow through `selective_log_softmax`.
"""

from __future__ import annotations

import torch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """(B, T) float32 log softmax(logits)[..., index], computed `chunk_size` rows at a time."""
    parts = []
    for start in range(0, logits.shape[0], chunk_size):
        rows = logits[start : start + chunk_size].float()  # (b, T, V)
        chosen = rows.gather(-1, index[start : start + chunk_size, :, None]).squeeze(-1)  # (b, T)
        parts.append(chosen - torch.logsumexp(rows, dim=-1))
    return torch.cat(parts) if parts else logits.new_zeros(index.shape, dtype=torch.float32)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """(B, T) entropy of softmax(logits), `chunk_size` rows at a time."""
    parts = []
    for start in range(0, logits.shape[0], chunk_size):
        rows = logits[start : start + chunk_size].float()
        logp = torch.log_softmax(rows, dim=-1)
        parts.append(-(logp.exp() * logp).sum(dim=-1))
    return torch.cat(parts) if parts else logits.new_zeros(logits.shape[:2], dtype=torch.float32)
