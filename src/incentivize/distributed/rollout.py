"""Rollout workers: Ray actors that sample and score a step's groups, each with its own copy of the policy.

`RolloutPool` starts `num_rollout_workers` actors (on a local Ray started for the run, or on the cluster
at `ray_address`), sends them the policy's weights through Ray's object store whenever they changed,
and splits each round's prompts between them in contiguous slices. A worker is a `LocalRollouts` (the
rollout engine on its policy copy, then the run's rewards, time limits and sandbox included) in a
process of its own with one CPU thread. Every prompt is sampled with its own seed, so the groups, their
tokens and their rewards are the same whatever the number of workers.

A worker that dies (killed, out of memory) is restarted by Ray; the pool sends the restarted one the
current weights and samples the round again (the same seeds give the same groups). A worker that dies
again within `max_restarts`, or a round that still fails, stops the run with one line.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, cast

import torch

from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError, describe
from incentivize.rollout import SamplingParams
from incentivize.trainers.collect import LocalRollouts, StepData

RETRIES = 2  # times a round is sampled again after a worker died


class RolloutPool:
    """`num_rollout_workers` Ray actors behind the interface of `LocalRollouts.sample`."""

    def __init__(self, config: RLConfig, linear_kernel: str, say: Callable[[str], None]) -> None:
        ray = import_ray("num_rollout_workers")
        started = time.perf_counter()
        self.ray, self.owns_ray = ray, not ray.is_initialized()
        if self.owns_ray:
            start_ray(ray, config)
        worker = ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=0)(RolloutWorker)
        settings = config.model_dump(mode="json")
        self.workers = [worker.remote(settings, linear_kernel) for _ in range(config.num_rollout_workers)]
        self._call(lambda w: w.ready.remote())
        self.weights: Any = None  # the object-store copy of the weights the workers hold
        self.sync_seconds = 0.0
        say(f"{len(self.workers)} rollout workers ready in {time.perf_counter() - started:.1f}s "
            f"({'a local Ray' if self.owns_ray else 'Ray at ' + str(config.ray_address)})")

    def sync(self, policy: torch.nn.Module) -> None:
        """Send the workers the trainable weights of `policy` (the rest never changes: the workers loaded it)."""
        started = time.perf_counter()
        # numpy arrays travel through the object store without a copy per reader
        self.weights = self.ray.put({name: p.detach().cpu().numpy() for name, p in policy.named_parameters()
                                     if p.requires_grad})
        self._call(lambda w: w.set_weights.remote(self.weights))
        self.sync_seconds = time.perf_counter() - started

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData:
        """Each worker samples a contiguous slice of the prompts; the parts, in order, as one `StepData`."""
        slices = _split(len(indices), len(self.workers))
        started = time.perf_counter()
        parts = self._call(lambda w, s: w.sample.remote(indices[s], seeds[s], params), slices)
        data = StepData.concat(parts)
        scoring = max(p.score_seconds for p in parts)
        data.generate_seconds, data.score_seconds = time.perf_counter() - started - scoring, scoring
        return data

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        if self.owns_ray:
            self.ray.shutdown()

    def _call(self, method: Callable[..., Any], slices: list[slice] | None = None) -> list[Any]:
        """Call `method` on the workers (with their slice) and wait; after a worker died, once it is
        restarted, give it the current weights and call again."""
        errors = self._errors()
        for attempt in range(RETRIES + 1):
            pairs = list(zip(self.workers, slices)) if slices is not None else [(w,) for w in self.workers]
            try:
                return list(self.ray.get([method(*pair) for pair in pairs]))
            except errors as err:
                if attempt == RETRIES:
                    raise IncentivizeError(
                        f"a rollout worker died {RETRIES + 1} times in a row ({describe(err)}); the run stopped at "
                        "the last checkpoint: lower the workers' memory use or their number, then --resume"
                    ) from None
                self._wait_for_restarts(errors)
                if self.weights is not None:  # a restarted worker starts from the initial weights
                    self.ray.get([w.set_weights.remote(self.weights) for w in self.workers])
        raise AssertionError("unreachable")

    def _wait_for_restarts(self, errors: tuple[type[BaseException], ...], timeout_s: float = 300.0) -> None:
        """Until every worker answers again (Ray restarts a dead one: a new process that loads the model)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ray.get([w.ready.remote() for w in self.workers])
                return
            except errors as err:
                if time.monotonic() > deadline:
                    raise IncentivizeError(f"a rollout worker died and did not come back within {timeout_s:.0f}s "
                                           f"({describe(err)}); the newest checkpoint is intact: --resume") from None
                time.sleep(0.5)

    def _errors(self) -> tuple[type[BaseException], ...]:
        exceptions = self.ray.exceptions
        return (exceptions.RayActorError, exceptions.ActorUnavailableError, exceptions.WorkerCrashedError,
                exceptions.ObjectLostError)


class RolloutWorker:
    """One Ray actor: the policy (as the learner built it), the task's training problems and the rewards."""

    def __init__(self, settings: dict[str, Any], linear_kernel: str) -> None:
        from incentivize.models import load
        from incentivize.models.lora import with_lora
        from incentivize.models.precision import DTYPES
        from incentivize.models.speed import LinearKernelName, enable_training_paths
        from incentivize.tasks import load_task
        from incentivize.trainers.collect import build_scorer

        torch.set_num_threads(1)  # one CPU per worker: threads would only contend
        config = RLConfig(**settings)
        policy, tokenizer = load(config.model)
        if config.use_peft:
            policy = with_lora(policy, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                               target_modules=config.lora_target_modules)
        if config.rollout_dtype == "float32":
            enable_training_paths(policy, linear=cast(LinearKernelName, linear_kernel))  # the learner's kernel: its log-probs, to the bit
        else:  # the learner's RolloutCopy, in a process of its own
            policy.to(DTYPES[config.rollout_dtype])
        policy.eval().requires_grad_(False)
        task = load_task(config.task, **config.task_options)
        self.local = LocalRollouts(policy, tokenizer, task, task.examples("train", None), build_scorer(config, task))
        self.parameters = dict(policy.named_parameters())

    def ready(self) -> bool:
        return True

    def set_weights(self, weights: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.parameters[name].copy_(torch.from_numpy(value))

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData:
        return self.local.sample(indices, seeds, params)


def _split(count: int, parts: int) -> list[slice]:
    """`count` items in `parts` contiguous slices as equal as they come (empty ones left out).

    >>> _split(5, 2), _split(1, 3)
    ([slice(0, 3, None), slice(3, 5, None)], [slice(0, 1, None)])
    """
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        if stop > start:
            bounds.append(slice(start, stop))
        start = stop
    return bounds


def import_ray(key: str) -> Any:
    try:
        import ray
    except ImportError:
        raise IncentivizeError(f"{key} needs Ray: pip install 'incentivize[distributed]' (or leave {key} at its "
                               "default)") from None
    return ray


def start_ray(ray: Any, config: RLConfig) -> None:
    """A local Ray for this run (a CPU for each worker and each learner but this process's), or a connection
    to the cluster at `ray_address`."""
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if config.ray_address and config.ray_address != "auto":
        _reachable(config.ray_address)
    try:
        if config.ray_address:
            ray.init(address=config.ray_address, **options)
        else:
            ray.init(num_cpus=config.num_rollout_workers + config.num_learners - 1, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"ray_address {config.ray_address}" if config.ray_address else "a local Ray"
        raise IncentivizeError(f"could not start the rollout workers on {where}: {describe(err)}") from None


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray keeps retrying an address that does not answer for minutes: find out within seconds first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise IncentivizeError(f"ray_address {address}: no Ray cluster answers there ({describe(err)}); start one "
                               "(ray start --head), fix the address, or leave ray_address unset for a local Ray") from None
