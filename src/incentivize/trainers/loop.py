"""What the supervised trainers (SFT, reward models) share: a fresh run directory, epochs of shuffled
batches logged to `metrics.jsonl`, and one optimizer update with gradient clipping."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from pydantic import BaseModel

from incentivize.errors import IncentivizeError

Item = TypeVar("Item")


def new_run_dir(output_dir: str | None, default_name: str) -> Path:
    """`output_dir`, or `runs/<default_name>-<time>`; a directory that already holds a run is refused."""
    run_dir = Path(output_dir) if output_dir else Path("runs") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and not run_dir.is_dir():
        raise IncentivizeError(f"output_dir {run_dir} is a file; choose another --output-dir")
    for name in ("final", "metrics.jsonl"):
        if (run_dir / name).exists():
            raise IncentivizeError(f"{run_dir} already holds a run ({name}); choose another --output-dir so nothing is overwritten")
    return run_dir


def create_run_dir(run_dir: Path, config: BaseModel) -> None:
    """Create `run_dir` with the resolved `config.yaml` (once the inputs have loaded)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False), encoding="utf-8")


def train_epochs(items: Sequence[Item], *, epochs: int, batch_size: int, seed: int,
                 update: Callable[[list[Item]], dict[str, float]], metrics_path: Path,
                 on_step: Callable[[int, int], None] | None = None) -> int:
    """`epochs` passes over `items` in seeded shuffled order, `update(batch)` per batch of `batch_size`;
    each batch's stats go to `metrics_path` as one JSON line. Returns the number of updates."""
    total = math.ceil(len(items) / batch_size) * epochs
    order_rng, step = random.Random(seed), 0
    with metrics_path.open("w", encoding="utf-8") as metrics_file:
        for epoch in range(epochs):
            order = list(range(len(items)))
            order_rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                stats = update([items[i] for i in order[start : start + batch_size]])
                step += 1
                metrics_file.write(json.dumps({"step": step, "epoch": epoch + 1, **stats}) + "\n")
                metrics_file.flush()
                if on_step is not None:
                    on_step(step, total)
    return step


def apply_gradients(optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """Clip the accumulated gradients, step unless their norm is NaN or infinite, free them; the norm."""
    params: list[Any] = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
