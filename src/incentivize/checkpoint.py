"""Checkpoints in Hugging Face format plus the trainer state needed to resume exactly.

A checkpoint directory holds the model (`save_pretrained`, safetensors; a LoRA run saves its
adapter), the tokenizer, `trainer_state.pt` (optimizer, scheduler and RNG states: tensors and plain
values only, loadable with `torch.load(weights_only=True)`) and `trainer_state.json` (step, data
position, readable). It is written under a temporary name and renamed when complete, so a torn
checkpoint is never taken for a whole one; only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from incentivize.atomic import atomic_directory


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def save_checkpoint(
    root: Path, step: int, model: Any, tokenizer: Any, trainer_state: dict[str, Any], info: dict[str, Any], keep: int
) -> Path:
    """Write `root/step-{step}` atomically and prune older checkpoints beyond `keep`."""
    target = root / f"step-{step:06d}"
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **info}, indent=2) + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
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
