"""The speed paths of a model that will be trained, turned on by one explicit call.

`load` returns the plain transformers model. For the model a trainer updates,
`enable_training_paths(model, linear=..., grad_in_place=...)` turns:

- every `nn.Linear` into a `TrainingLinear`: the same layer, whose three products (y = x W^T,
  dL/dx = g W, dL/dW = g^T x) run through the kernel chosen, PyTorch's own (`torch`) or oneDNN's
  (`onednn`, about 2x the float32 GEMM throughput of MKL on AMD CPUs: `incentivize.models.onednn`);
- with `grad_in_place`, the vocabulary matrices, and only those (the input embedding and the output
  layer, one matrix when tied), into layers that add their weight gradient into an existing `.grad`
  in place: the output layer (`TrainingLinear`, with either kernel) without a temporary the size of
  the weight, the embedding (`inplace_grads.InPlaceGradEmbedding`) without a dense one. Their dense
  gradient is the largest single allocation of the backward pass (113 MB for SmolLM2-135M), made
  while the activations are alive; other weights are small enough that it does not pay. The
  in-place path runs only when `.grad` already exists (the RL learner's flat gradient buffers,
  `trainers/flat_state.py`); otherwise autograd creates the gradient as usual.

A model whose outputs are compared with the trained one's (the RL reference policy, for the KL term;
rollout workers) gets the same kernel, without `grad_in_place`, so that equal weights give exactly
equal outputs; so does the PPO critic, which is trained too. Models that are only evaluated stay plain.

The choice shows in `repr(model)` (`TrainingLinear(..., kernel=onednn, grad_in_place=True)`) and is
returned for the run's log. Parameter names, state dicts, checkpoints and `deepcopy` are unchanged (the
layers are subclasses); anything not float32 on a CPU (a model moved to a GPU, bf16) runs PyTorch's
products whatever the kernel. What is learned is the same with the paths on or off, to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast, get_args

import torch
from torch.autograd.function import once_differentiable

from incentivize.config import LinearKernelName
from incentivize.errors import IncentivizeError
from incentivize.models import onednn
from incentivize.models.inplace_grads import InPlaceGradEmbedding


__all__ = ["LinearKernelName", "TrainingLinear", "disable_training_paths", "enable_training_paths"]


@dataclass(frozen=True)
class _Kernel:
    """A linear layer's matrix products: `matmul_nt(a, b)` is a @ b.T, `add_matmul_nt(out, a, b)` is out += a @ b.T."""

    matmul_nt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    add_matmul_nt: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _torch_add_matmul_nt(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    out.addmm_(a, b.t())  # the BLAS product accumulates into `out` itself


_KERNELS = {
    "torch": _Kernel(lambda a, b: torch.mm(a, b.t()), _torch_add_matmul_nt),
    "onednn": _Kernel(onednn.matmul_nt, onednn.add_matmul_nt),
}


def _linear_forward(kernel: _Kernel, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) through the layer: the input as a contiguous (M, K) matrix and the output (M, N)."""
    flat = x.reshape(-1, x.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = kernel.matmul_nt(flat, weight)
    if bias is not None:
        out += bias
    return flat, out


class _Linear(torch.autograd.Function):
    """y = x W^T + b through `kernel`; with `grad_in_place` and `weight.grad` there, dL/dW is added into it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: _Kernel,
                grad_in_place: bool) -> torch.Tensor:
        flat, out = _linear_forward(kernel, x, weight, bias)
        ctx.save_for_backward(flat, weight)
        ctx.kernel, ctx.grad_in_place, ctx.input_shape, ctx.has_bias = kernel, grad_in_place, x.shape, bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat, weight = ctx.saved_tensors
        kernel: _Kernel = ctx.kernel
        g = grad.reshape(-1, weight.shape[0])
        if not g.is_contiguous():
            g = g.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = kernel.matmul_nt(g, weight.t()).view(ctx.input_shape)  # g W
        if ctx.needs_input_grad[1]:
            if ctx.grad_in_place and weight.grad is not None:
                kernel.add_matmul_nt(weight.grad, g.t(), flat.t())  # .grad += g^T x; autograd gets None
            else:
                grad_w = kernel.matmul_nt(g.t(), flat.t())  # g^T x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0)
        return grad_x, grad_w, grad_b, None, None


class TrainingLinear(torch.nn.Linear):
    """An `nn.Linear` whose products run through `kernel` ("torch" or "onednn"), and which, with
    `grad_in_place`, adds its weight gradient into an existing `.grad` (see the module docstring)."""

    kernel: str = "torch"
    grad_in_place: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        kernel = self.kernel
        if weight.dtype != torch.float32 or x.dtype != torch.float32 or weight.device.type != "cpu" or x.numel() == 0:
            kernel = "torch"  # oneDNN's products are float32 on the CPU; PyTorch's own path elsewhere
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if kernel == "torch" and not (needs_grad and self.grad_in_place and weight.requires_grad):
            return super().forward(x)  # nothing to change: PyTorch's own layer
        if not needs_grad:  # generation and reference passes: no autograd node to build
            flat, out = _linear_forward(_KERNELS[kernel], x, weight, self.bias)
            return out.view(*x.shape[:-1], weight.shape[0])
        result: torch.Tensor = _Linear.apply(x, weight, self.bias, _KERNELS[kernel], self.grad_in_place)
        return result

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}, grad_in_place={self.grad_in_place}"


def enable_training_paths(model: torch.nn.Module, linear: LinearKernelName = "auto",
                          grad_in_place: bool = False) -> dict[str, str]:
    """Turn the training speed paths of `model` on (see the module docstring); returns what was chosen,
    e.g. ``{"linear": "onednn", "grad_in_place": "on"}``, for the run's log.

    `linear`: "onednn", "torch", or "auto": oneDNN where `onednn.available()` (an x86 CPU, the op's
    self-check passed, `INCENTIVIZE_ONEDNN` not 0) and the model is float32 on the CPU, else PyTorch's.
    `grad_in_place`: for full fine-tuning with gradient buffers that outlive the backward pass (the
    vocabulary matrices are frozen under LoRA, so it changes nothing there). Calling it again sets
    the paths anew; `disable_training_paths` makes the layers plain again.
    """
    if linear not in get_args(LinearKernelName):
        raise IncentivizeError(f"linear kernel {linear!r} is not one of {', '.join(get_args(LinearKernelName))}")
    if linear == "onednn" and not onednn.available():
        raise IncentivizeError(
            "linear kernel 'onednn' is not available here (it needs an x86 CPU with PyTorch's oneDNN, and "
            "INCENTIVIZE_ONEDNN not set to 0); use 'auto' or 'torch'"
        )
    if linear == "auto":
        float32_cpu = all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
        linear = "onednn" if float32_cpu and onednn.available() else "torch"
    vocabulary = _vocabulary_modules(model) if grad_in_place else set()
    for module in model.modules():
        if type(module) in (torch.nn.Linear, TrainingLinear):
            module.__class__ = TrainingLinear
            layer = cast(TrainingLinear, module)
            layer.kernel, layer.grad_in_place = linear, module in vocabulary
        elif type(module) in (torch.nn.Embedding, InPlaceGradEmbedding):
            _make_plain(module)
            if module in vocabulary:
                module.__class__ = InPlaceGradEmbedding
                cast(InPlaceGradEmbedding, module).grad_in_place = True
    return {"linear": linear, "grad_in_place": "on" if vocabulary else "off"}


def disable_training_paths(model: torch.nn.Module) -> None:
    """Make the layers `enable_training_paths` changed plain `nn.Linear` and `nn.Embedding` again."""
    for module in model.modules():
        _make_plain(module)


def _make_plain(module: torch.nn.Module) -> None:
    if type(module) in (TrainingLinear, InPlaceGradEmbedding):
        module.__class__ = torch.nn.Linear if type(module) is TrainingLinear else torch.nn.Embedding
        for name in ("kernel", "grad_in_place"):
            module.__dict__.pop(name, None)


def _vocabulary_modules(model: torch.nn.Module) -> set[torch.nn.Module]:
    """The input embedding and the output layer of a causal LM (both, when they share one matrix)."""
    found: set[torch.nn.Module] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            found.add(module)
    return found


def describe_paths(paths: dict[str, str]) -> str:
    """`enable_training_paths`' answer in words, for a run's log.

    >>> describe_paths({"linear": "onednn", "grad_in_place": "on"})
    'linear layers through onednn, vocabulary gradients added in place'
    """
    in_place = "added in place" if paths.get("grad_in_place") == "on" else "as autograd makes them"
    return f"linear layers through {paths.get('linear', 'torch')}, vocabulary gradients {in_place}"
