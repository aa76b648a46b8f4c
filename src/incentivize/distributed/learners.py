"""Data-parallel learners: `num_learners` processes in one torch.distributed group share each step's batch.

This process is rank 0 (its learner is the run's: the one that is checkpointed, evaluated and sampled
from); ranks 1 .. num_learners - 1 are Ray actors, each with its own models and learner built from the
same config. Every step, each process trains on a contiguous share of the batch's groups
(`trainers.shard.Shard.rows`). The reference log-probabilities and critic values of all rows are summed
into every process, so each computes the same advantages, and the loss is normalised by the whole batch
(`algorithms.aggregate.global_normalizer`). The gradients are summed over the group (gloo on a CPU,
nccl on a GPU) before the clipped update, so every process takes the same step: the math of one
process, shared out. A learner that dies stops the run with one line, within `TIMEOUT`, and the last
checkpoint intact.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError, describe
from incentivize.trainers.shard import Shard

TIMEOUT = datetime.timedelta(seconds=120)  # a collective whose peer died fails after this, rather than hangs


class GroupShard(Shard):
    """This process's place in the group: its rows, and sums over the group."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def reduce(self, tensors: Sequence[torch.Tensor]) -> None:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


class LearnerGroup:
    """Rank 0 here, ranks 1 .. `num_learners` - 1 as Ray actors, joined in one process group."""

    def __init__(self, config: RLConfig, learner: Any, linear_kernel: str, say: Callable[[str], None]) -> None:
        from incentivize.distributed.rollout import import_ray, start_ray

        ray = import_ray("num_learners")
        started = time.perf_counter()
        self.ray, self.owns_ray = ray, not ray.is_initialized()
        if self.owns_ray:
            start_ray(ray, config)
        world = config.num_learners
        address = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"
        actor = ray.remote(num_cpus=1, max_restarts=0)(LearnerActor)
        settings = config.model_dump(mode="json")
        self.actors = [actor.remote(settings, linear_kernel) for _ in range(1, world)]
        ray.get([a.ready.remote() for a in self.actors])
        joined = [a.join.remote(address, rank, world) for rank, a in enumerate(self.actors, start=1)]
        dist.init_process_group("gloo", init_method=address, rank=0, world_size=world, timeout=TIMEOUT)
        self._get(joined)
        learner.shard = GroupShard(0, world)
        self.learner, self.synced = learner, False
        say(f"{world} learners in one process group, ready in {time.perf_counter() - started:.1f}s")

    def step(self, data: Any, train_actor: bool, models: Any) -> dict[str, float]:
        """The step on every learner at once; rank 0's stats (the whole batch's, as every rank's)."""
        if not self.synced:  # rank 0 may have restored a checkpoint: the others start from its state
            weights = {n: p.detach() for n, p in models.policy.named_parameters() if p.requires_grad}
            critic = models.critic.state_dict() if models.critic is not None else None
            state = self.ray.put(_compact((weights, critic, self.learner.state_dict())))
            self._get([a.load.remote(state) for a in self.actors])
            self.synced = True
        others = [a.step.remote(data, train_actor) for a in self.actors]
        try:
            stats: dict[str, float] = self.learner.step(data, train_actor)
        except RuntimeError as err:  # a collective whose peer died
            self._get(others)  # reports the dead learner if that is why
            raise IncentivizeError(f"the learners' process group failed ({describe(err)}); the newest checkpoint "
                                   "is intact: --resume") from None
        self._get(others)
        return stats

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        for actor in self.actors:
            self.ray.kill(actor)
        if self.owns_ray:
            self.ray.shutdown()

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return list(self.ray.get(refs))
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError) as err:
            raise IncentivizeError(f"a learner process failed ({describe(err)}); the newest checkpoint is intact: "
                                   "--resume") from None


class LearnerActor:
    """Rank 1 or later: the same models and learner as rank 0, stepping on its share of each batch."""

    def __init__(self, settings: dict[str, Any], linear_kernel: str) -> None:
        from incentivize.trainers.policy import build_models
        from incentivize.trainers.rl import Learner

        torch.set_num_threads(1)  # one CPU per learner
        self.config = RLConfig(**{**settings, "linear_kernel": linear_kernel})
        self.models = build_models(self.config)
        self.learner = Learner(self.config, self.models)

    def ready(self) -> bool:
        return True

    def join(self, address: str, rank: int, world: int) -> None:
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world, timeout=TIMEOUT)
        self.learner.shard = GroupShard(rank, world)

    def load(self, state: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]) -> None:
        """Rank 0's trainable weights, critic and learner state (optimizer, scheduler, counters)."""
        weights, critic, learner = state
        parameters = dict(self.models.policy.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(value)
        if critic is not None and self.models.critic is not None:
            self.models.critic.load_state_dict(critic)
        self.learner.load_state_dict(learner)

    def step(self, data: Any, train_actor: bool) -> dict[str, float]:
        return dict(self.learner.step(data, train_actor))


def _compact(value: Any) -> Any:
    """`value` with every tensor copied into storage of its own. The optimizer's moments are views of one
    flat buffer (`trainers/flat_state.py`), and serialising a view sends its whole storage: hundreds of
    times the model's size for a few hundred parameters."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _compact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_compact(item) for item in value)
    return value


def _free_port() -> int:
    """A TCP port nothing listens on now, for the process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])
