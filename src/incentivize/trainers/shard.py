"""Which rows of a step's batch this learner process trains on, and how its results join the others'.

`Shard()` is the single process: every row is its own and nothing needs joining. A data-parallel group
of learners (`incentivize.distributed.learners`) gives each process a `Shard` whose `reduce` sums over
the group, so that every process ends the step with the gradient of the whole batch. The learner calls
the same methods either way and never needs to know which it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Shard:
    """One process of `world`; `rank` 0 here."""

    rank, world = 0, 1

    def rows(self, size: int, group: int) -> slice:
        """This process's rows of a batch of `size` rows in groups of `group`: a contiguous share of whole
        groups (a group's rows share a prompt, which the learner runs once).

        >>> Shard().rows(8, 4)
        slice(0, 8, None)
        """
        groups = size // group
        per, extra = divmod(groups, self.world)
        first = self.rank * per + min(self.rank, extra)
        return slice(first * group, (first + per + (self.rank < extra)) * group)

    def reduce(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum `tensors` in place over the processes (a no-op for one)."""

    def reduce_numbers(self, numbers: dict[str, float]) -> dict[str, float]:
        """`numbers` summed over the processes."""
        if self.world == 1 or not numbers:
            return numbers
        names = sorted(numbers)
        values = torch.tensor([numbers[name] for name in names], dtype=torch.float64)
        self.reduce([values])
        return dict(zip(names, values.tolist()))
