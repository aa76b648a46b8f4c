"""Lower precision for sampling and learning, with the master weights in float32.

- `RolloutCopy`: a frozen copy of the policy in the rollout dtype (bfloat16 doubles the engine's tokens
  per second on a CPU with AVX512-BF16), refreshed from the trained weights before each step's
  sampling. Its log-probs differ from the trained model's; the learner corrects for it
  (`incentivize.algorithms.rollout_correction`).
- `learner_autocast`: the learner's forward and backward under autocast in bfloat16; the weights,
  gradients and optimizer stay float32.
- `check_precision`: refuses a dtype the device cannot run, and float16 on a model trained in bfloat16
  (their exponent ranges differ: activations that fit bfloat16 overflow float16) unless forced.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from typing import Any

import torch

from incentivize.errors import IncentivizeError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_runs(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `device` has native arithmetic for `dtype` (emulated bfloat16 on a CPU is slower than float32)."""
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def trained_dtype(model: Any) -> torch.dtype | None:
    """The dtype the model's config says it was trained (saved) in, if it says."""
    config = getattr(model, "config", None)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = DTYPES.get(value)
    return value if isinstance(value, torch.dtype) else None


def check_precision(model: Any, name: str, dtype_name: str, *, allow_fp16: bool = False) -> None:
    """Refuse `dtype_name` for `name` (rollout_dtype, learner_dtype) where it cannot run or should not."""
    dtype = DTYPES[dtype_name]
    device = next(model.parameters()).device
    if not device_runs(dtype, device):
        raise IncentivizeError(f"{name}={dtype_name}: this {device.type.upper()} has no native {dtype_name} arithmetic "
                               f"(on a CPU it needs AVX512-BF16 or AMX); set {name}=float32")
    if dtype == torch.float16 and trained_dtype(model) == torch.bfloat16 and not allow_fp16:
        raise IncentivizeError(f"{name}=float16: the model was trained in bfloat16, whose range float16 lacks "
                               f"(activations overflow); use {name}=bfloat16, or set allow_fp16=true to force it")


class RolloutCopy:
    """The policy in another dtype, for the engine: frozen, and refreshed by `sync` from the trained weights.

    Only the trainable parameters are copied at each sync (under LoRA, the adapters); the frozen ones
    were copied once, at construction.
    """

    def __init__(self, policy: torch.nn.Module, dtype: torch.dtype) -> None:
        from incentivize.models.speed import disable_training_paths

        self.model = copy.deepcopy(policy)
        disable_training_paths(self.model)  # plain layers: the oneDNN float32 kernels do not apply in bfloat16
        self.model.to(dtype).requires_grad_(False).eval()
        pairs = zip(self.model.parameters(), policy.parameters(), strict=True)
        self._pairs = [(mine, theirs) for mine, theirs in pairs if theirs.requires_grad]
        self.sync_seconds = 0.0

    def sync(self) -> None:
        """Copy the trainable weights of the policy into the copy (rounded to its dtype)."""
        started = time.perf_counter()
        with torch.no_grad():
            torch._foreach_copy_([mine for mine, _ in self._pairs], [theirs for _, theirs in self._pairs])
        self.sync_seconds = time.perf_counter() - started


def learner_autocast(dtype_name: str, device: torch.device) -> Any:
    """Autocast for the learner's forward passes; a no-op context for float32."""
    if dtype_name == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])
