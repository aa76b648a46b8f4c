"""Checkpoints in Hugging Face format plus the trainer state needed to resume exactly.

A checkpoint directory holds the model (`save_pretrained`, safetensors; a LoRA run saves its
adapter), the tokenizer, further modules such as a critic under `modules/`, `trainer_state.pt` (optimizer, scheduler and RNG states: tensors and plain
values only, loadable with `torch.load(weights_only=True)`) and `trainer_state.json` (step, data
position, readable). It is written under a temporary name and renamed when complete, so a torn
checkpoint is never taken for a whole one (and is deleted on resume); only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from incentivize.atomic import atomic_directory

MODULES = "modules"  # further modules (a critic), one safetensors file each


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first (a torn one never got its final name)."""
    return sorted((p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").exists()),
                  key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def remove_partial_checkpoints(root: Path) -> list[Path]:
    """Delete the temporary directories of checkpoints whose writing was interrupted; return them."""
    partial = [p for p in root.glob(".step-*") if p.is_dir()]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def load_checkpoint(
    path: Path, model: Any = None, modules: Mapping[str, torch.nn.Module] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the weights of `path` into `model` (full model or LoRA adapter) and `modules`; return (trainer state, info)."""
    from safetensors.torch import load_file

    for name, module in (modules or {}).items():
        module.load_state_dict(load_file(path / MODULES / f"{name}.safetensors"))
    if model is not None and (path / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    elif model is not None:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("*.safetensors")):
            state.update(load_file(shard))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
            raise ValueError(f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=True)
    info = json.loads((path / "trainer_state.json").read_text())
    return trainer_state, info


def save_checkpoint(
    root: Path, step: int, model: Any, tokenizer: Any, trainer_state: dict[str, Any], info: dict[str, Any], keep: int,
    modules: Mapping[str, torch.nn.Module] | None = None,
) -> Path:
    """Write `root/step-{step}` atomically and prune older checkpoints beyond `keep`. `model` (with its
    `tokenizer`) may be None for a trainer whose state is all in `trainer_state`."""
    target = root / f"step-{step:06d}"
    with atomic_directory(target) as tmp:
        if model is not None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if modules:
            from safetensors.torch import save_file

            (tmp / MODULES).mkdir()
            for name, module in modules.items():
                save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / MODULES / f"{name}.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **info}, indent=2) + "\n")
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_model(target: Path, model: Any, tokenizer: Any) -> Path:
    """A plain Hugging Face model directory (LoRA adapters merged) that `from_pretrained` loads."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
