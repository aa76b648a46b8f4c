"""Log-probabilities of chosen tokens and the policy entropy, without a full float32 (B, T, V) copy.

The logits of a language model are (B, T, V) with V ~ 50k-150k and often bf16. The naive
`log_softmax(logits.float()).gather(...)` makes a float32 copy of all of them, and autograd keeps
it (and softmax outputs) alive until the backward pass. Here both functions are autograd Functions
that work on `chunk_size` sequences (rows of B) at a time in the forward AND the backward pass: they
save only the input logits (already alive as the model's output), the index, and per-token (B, T)
float32 statistics, and recompute each chunk's softmax in float32 when the gradient is needed.
The math runs in float32 (float64 logits stay float64); the gradient w.r.t. the logits comes back
in the logits' dtype.

Gradients (z = logits row, p = softmax(z), lse = logsumexp(z), H = entropy):
- d log p_i / d z = onehot(i) - p
- d H / d z = -p * (log p + H)
Neither function supports double backward.
"""

from __future__ import annotations

from typing import Any

import torch


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _log_probs_forward(logits: torch.Tensor, index: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log p(index) and (B, T) logsumexp, both in the compute dtype."""
    dtype = _compute_dtype(logits)
    chosen = torch.empty(index.shape, dtype=dtype, device=logits.device)  # (B, T)
    lse = torch.empty(index.shape, dtype=dtype, device=logits.device)  # (B, T)
    for start in range(0, logits.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        block = logits[rows].to(dtype)  # (b, T, V): the only float32 copy, one chunk at a time
        lse[rows] = torch.logsumexp(block, dim=-1)
        chosen[rows] = block.gather(-1, index[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
    return chosen, lse


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, index: torch.Tensor, chunk_size: int) -> torch.Tensor:
        chosen, lse = _log_probs_forward(logits, index, chunk_size)
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk_size = chunk_size
        return chosen

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        logits, index, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_logits = torch.empty_like(logits)  # (B, T, V)
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            upstream = grad_output[rows].to(lse.dtype).unsqueeze(-1)  # (b, T, 1)
            probs = torch.exp(logits[rows].to(lse.dtype) - lse[rows].unsqueeze(-1))  # (b, T, V)
            block = -upstream * probs
            block.scatter_add_(-1, index[rows].unsqueeze(-1), upstream)
            grad_logits[rows] = block.to(logits.dtype)
        return grad_logits, None, None


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """(B, T) float32 log softmax(logits)[b, t, index[b, t]], `chunk_size` sequences at a time.

    float64 logits give a float64 result.

    logits: (B, T, V), any float dtype (bf16 is upcast one chunk at a time). index: (B, T) long.

    >>> logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])
    >>> selective_log_softmax(logits, torch.tensor([[0, 1]]))
    tensor([[-0.6931, -0.1269]])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    if logits.shape[:2] != index.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and index {tuple(index.shape)} disagree on (B, T)")
    result: torch.Tensor = _SelectiveLogSoftmax.apply(logits, index.long(), chunk_size)
    return result


def _entropy_forward(logits: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) entropy and (B, T) logsumexp, both in the compute dtype."""
    entropy = torch.empty(logits.shape[:-1], dtype=_compute_dtype(logits), device=logits.device)  # (B, T)
    lse = torch.empty_like(entropy)  # (B, T)
    for start in range(0, logits.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        block = logits[rows].to(entropy.dtype)  # (b, T, V)
        lse[rows] = torch.logsumexp(block, dim=-1)
        probs = torch.exp(block - lse[rows].unsqueeze(-1))
        # H = lse - sum_v p_v z_v; a -inf logit has p = 0 and must contribute 0, not nan
        entropy[rows] = lse[rows] - (probs * torch.where(probs > 0, block, 0.0)).sum(dim=-1)
    return entropy, lse


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
        entropy, lse = _entropy_forward(logits, chunk_size)
        ctx.save_for_backward(logits, lse, entropy)
        ctx.chunk_size = chunk_size
        return entropy

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        logits, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        grad_logits = torch.empty_like(logits)  # (B, T, V)
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            log_probs = logits[rows].to(lse.dtype) - lse[rows].unsqueeze(-1)  # (b, T, V)
            probs = torch.exp(log_probs)
            inner = torch.where(probs > 0, log_probs + entropy[rows].unsqueeze(-1), 0.0)
            grad_logits[rows] = (-grad_output[rows].to(lse.dtype).unsqueeze(-1) * probs * inner).to(logits.dtype)
        return grad_logits, None


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """(B, T) float32 (float64 for float64 logits) entropy of softmax(logits) in nats, `chunk_size` sequences at a time.

    >>> entropy_from_logits(torch.zeros(1, 1, 4))
    tensor([[1.3863]])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    result: torch.Tensor = _Entropy.apply(logits, chunk_size)
    return result
