"""float32 matrix products through oneDNN on x86 CPUs: the `onednn` kernel of `incentivize.models.speed`.

PyTorch sends a float32 `nn.Linear` on the CPU to MKL's sgemm. MKL picks its kernels by CPU vendor:
on AMD processors it runs AVX2 code even where the CPU has AVX-512. oneDNN, which PyTorch also ships
(and already uses for bfloat16 matmuls), runs AVX-512 there. Measured on a 2-core AMD EPYC with
AVX-512 (`benchmarks/generation.py`, `benchmarks/grpo_vs_trl.py`): about 2x the float32 GEMM
throughput of MKL, at float32 precision (a 2048 x 2048 product: relative error 9e-7 against float64,
MKL 3e-7; both are float32 rounding).

`matmul_nt(a, b)` is ``a @ b.T`` and `add_matmul_nt(out, a, b)` is ``out += a @ b.T``; the linear
layers of `incentivize.models.speed` run their three products through them (y = x W^T, dL/dx = g W,
dL/dW = g^T x). `available()` checks once per process that the op exists and agrees with PyTorch;
`INCENTIVIZE_ONEDNN=0` makes it report False.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings

import torch


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T through oneDNN: a (M, K), b (N, K), either may be a strided view; (M, N)."""
    result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return result


def add_matmul_nt(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: int = 8192) -> None:
    """out += a @ b.T, `rows` rows of `out` at a time: no temporary the size of `out`.

    oneDNN's product cannot accumulate into its output, so each block is computed and then added;
    for a vocabulary-sized weight gradient the whole-size temporary would be the largest single
    allocation of the backward pass.
    """
    for start in range(0, out.shape[0], rows):
        block = slice(start, start + rows)
        out[block] += matmul_nt(a[block], b)


@functools.cache
def available() -> bool:
    """True when oneDNN float32 products can run here and agree with PyTorch's own (checked once)."""
    if os.environ.get("INCENTIVIZE_ONEDNN", "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(15, 24, generator=generator)
        weight = torch.randn(40, 24, generator=generator)
        grad = torch.randn(15, 40, generator=generator)
        # the three products of a linear layer, with the strided operands its backward pass uses
        pairs = [(matmul_nt(x, weight), x @ weight.t()), (matmul_nt(grad, weight.t()), grad @ weight),
                 (matmul_nt(grad.t(), x.t()), grad.t() @ x)]
        accumulated = torch.ones(40, 24)
        add_matmul_nt(accumulated, grad.t(), x.t(), rows=16)
        pairs.append((accumulated, 1 + grad.t() @ x))
        close = all(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4) for ours, theirs in pairs)
    except (RuntimeError, AttributeError) as err:  # the op is private to PyTorch and may change
        warnings.warn(f"oneDNN linear layers unavailable, using PyTorch's ({err})", stacklevel=2)
        return False
    if not close:
        warnings.warn("oneDNN linear layers disagree with PyTorch's here; using PyTorch's", stacklevel=2)
    return close
