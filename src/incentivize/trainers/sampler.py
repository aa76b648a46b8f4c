"""Which training problems each step sees: a seeded, epoch-shuffled stream with a resumable position."""

from __future__ import annotations

import random


class PromptSampler:
    """Yields indices into `size` examples; every epoch is a fresh permutation drawn from `seed`.

    >>> sampler = PromptSampler(5, seed=0)
    >>> sorted(sampler.take(5)) == list(range(5))  # one epoch sees every example once
    True
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("the training set is empty")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError("the checkpoint was written for a different training set or seed")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
