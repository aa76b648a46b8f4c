"""float32 linear layers through oneDNN on x86 CPUs, forward and backward.

PyTorch sends a float32 `nn.Linear` on the CPU to MKL's sgemm. MKL picks its kernels by CPU vendor:
on AMD processors it runs AVX2 code even where the CPU has AVX-512. oneDNN, which PyTorch also ships
(and already uses for bfloat16 matmuls), runs AVX-512 there. Measured on a 2-core AMD EPYC with
AVX-512 (`benchmarks/generation.py`, `benchmarks/grpo_vs_trl.py`): about 2x the float32 GEMM
throughput of MKL, at float32 precision (a 2048 x 2048 product: relative error 9e-7 against float64,
MKL 3e-7; both are float32 rounding).

`install(model)` turns every float32 `nn.Linear` of `model` into an `OneDNNLinear` (a subclass that
changes only `forward`), after checking once per process that the oneDNN op exists and agrees with
`torch.nn.functional.linear`. The three products of a linear layer go through oneDNN:
y = x W^T, dL/dx = g W and dL/dW = g^T x. Weights, state dicts, checkpoints and `deepcopy` are
unchanged; anything that is not float32 on a CPU (a model moved to a GPU, bf16) takes the usual
path. `INCENTIVIZE_ONEDNN=0` turns it off.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from typing import Any

import torch
from torch.autograd.function import once_differentiable


def _matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T through oneDNN: a (M, K), b (N, K), either may be a strided view."""
    result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return result


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = _matmul_nt(flat, weight)  # (M, N)
        if bias is not None:
            out += bias
        ctx.save_for_backward(flat, weight)
        ctx.input_shape, ctx.has_bias = x.shape, bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        if not g.is_contiguous():
            g = g.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_nt(g, weight.t()).view(ctx.input_shape)  # g W
        if ctx.needs_input_grad[1]:
            if weight.grad is not None and getattr(weight, "accumulate_in_place", False):
                _accumulate_weight_grad(weight.grad, g, flat)
            else:
                grad_w = _matmul_nt(g.t(), flat.t())  # g^T x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0)
        return grad_x, grad_w, grad_b


def _accumulate_weight_grad(grad: torch.Tensor, g: torch.Tensor, flat: torch.Tensor, rows: int = 8192) -> None:
    """grad += g^T x, `rows` output rows at a time: no temporary the size of the weight.

    Used for weights flagged `accumulate_in_place` whose gradient already exists (the trainer's flat
    gradient buffers): for a vocabulary-sized output layer the temporary would be the largest single
    allocation of the backward pass, made while all the activations are still alive.
    """
    for start in range(0, grad.shape[0], rows):
        block = slice(start, start + rows)
        grad[block] += _matmul_nt(g[:, block].t(), flat.t())


class OneDNNLinear(torch.nn.Linear):
    """An `nn.Linear` whose float32 CPU products run through oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype != torch.float32 or x.dtype != torch.float32 or weight.device.type != "cpu" or x.numel() == 0:
            return super().forward(x)
        result: torch.Tensor = _Linear.apply(x, weight, self.bias)
        return result


@functools.cache
def available() -> bool:
    """True when oneDNN float32 linears can run here and agree with PyTorch's own (checked once)."""
    if os.environ.get("INCENTIVIZE_ONEDNN", "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(5, 3, 24, generator=generator, requires_grad=True)
        weight = torch.randn(40, 24, generator=generator, requires_grad=True)
        ours = _Linear.apply(x, weight, None)
        ours_grads = torch.autograd.grad(ours.square().sum(), (x, weight))
        theirs = torch.nn.functional.linear(x, weight)
        theirs_grads = torch.autograd.grad(theirs.square().sum(), (x, weight))
        close = torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-3) for a, b in zip(ours_grads, theirs_grads)
        )
    except (RuntimeError, AttributeError) as err:  # the op is private to PyTorch and may change
        warnings.warn(f"oneDNN linear layers unavailable, using PyTorch's ({err})", stacklevel=2)
        return False
    if not close:
        warnings.warn("oneDNN linear layers disagree with PyTorch's here; using PyTorch's", stacklevel=2)
    return close


def install(model: torch.nn.Module) -> int:
    """Route the float32 CPU `nn.Linear` layers of `model` through oneDNN; returns how many were changed."""
    if not available():
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            changed += 1
    return changed


def uninstall(model: torch.nn.Module) -> None:
    """Give the layers of `model` back their plain `nn.Linear` forward."""
    for module in model.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = torch.nn.Linear  # type: ignore[assignment]
