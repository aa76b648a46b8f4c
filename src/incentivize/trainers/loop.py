"""What the supervised trainers (SFT, reward models) share: epochs of seeded shuffled batches, one clipped
optimizer update per batch, and the optimizer as their resumable state. The run lifecycle around it is
`trainers/run.py`."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from incentivize.config import SupervisedSettings
from incentivize.trainers.run import StepOutput, Trainer


def clipped_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], max_grad_norm: float,
                 loss: float = 0.0) -> tuple[float, bool]:
    """Clip the accumulated gradients of `params` to `max_grad_norm` and step, unless the gradient norm or
    `loss` is NaN or infinite (then the weights stay as they were). Returns (the norm, whether it stepped)."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm))
    applied = math.isfinite(grad_norm) and math.isfinite(loss)
    if applied:
        optimizer.step()
    return grad_norm, applied


def epoch_batch(size: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """The epoch (1-based) and item indices of optimizer step `step` (1-based): every epoch is a fresh
    permutation drawn from `seed`, cut into batches of `batch_size` (the last one may be smaller). A
    function of the step alone, so a resumed run sees the batches an uninterrupted one would.

    >>> [epoch_batch(5, 2, 0, step)[0] for step in range(1, 7)]
    [1, 1, 1, 2, 2, 2]
    >>> sorted(i for step in (1, 2, 3) for i in epoch_batch(5, 2, 0, step)[1])
    [0, 1, 2, 3, 4]
    """
    per_epoch = math.ceil(size / batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    order = list(range(size))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return epoch + 1, order[index * batch_size : (index + 1) * batch_size]


class SupervisedTrainer(Trainer):
    """A trainer that makes one optimizer update per batch of `items` for `config.epochs` epochs.
    Subclasses load `model`, `items` and the parameters in `setup`, then call `make_optimizer`, and
    implement `losses(batch)`: backpropagate the batch, return its total loss and its stats."""

    config: SupervisedSettings
    items: Sequence[Any]
    epochs: int

    def make_optimizer(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        for p in self.params:  # allocated once, before the first step, as after a resume: the same sums
            p.grad = torch.zeros_like(p)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.learning_rate,
                                           weight_decay=self.config.weight_decay)
        self.total_steps = math.ceil(len(self.items) / self.config.batch_size) * self.epochs

    def losses(self, batch: list[Any]) -> tuple[float, dict[str, float]]:
        raise NotImplementedError

    def step(self, step: int) -> StepOutput:
        epoch, indices = epoch_batch(len(self.items), self.config.batch_size, self.config.seed, step)
        # zeroed, not freed: the gradients stay allocated between steps, and layers that add theirs in
        # place (the vocabulary matrices, `models.speed`) do so from the first micro-batch on
        self.optimizer.zero_grad(set_to_none=False)
        total, stats = self.losses([self.items[i] for i in indices])
        grad_norm, applied = clipped_step(self.optimizer, self.params, self.config.max_grad_norm, total)
        lr = float(self.optimizer.param_groups[0]["lr"])
        return StepOutput({"epoch": epoch, **stats, "grad_norm": grad_norm, "lr": lr}, nonfinite=not applied)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
