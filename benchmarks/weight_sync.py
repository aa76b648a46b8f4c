"""How fast the rollout workers get the policy's new weights: Ray's object store or a gloo broadcast.

    .venv/bin/python benchmarks/weight_sync.py --model smollm2-135m [--workers 2] [--repeats 5]

Starts a local Ray, loads the model in the driver and in `--workers` actors (one CPU thread each), then
times, `--repeats` times each and alternating, how long it takes until every worker holds the driver's
current weights (all parameters, fp32):

- object store: `ray.put` of `{name: array}` once, every worker copies the arrays into its parameters
  (what `incentivize.distributed.rollout.RolloutPool.sync` does);
- broadcast: driver (rank 0) and workers (ranks 1..N) in one torch.distributed gloo group; the driver
  flattens its parameters into one buffer, `dist.broadcast` sends it, each worker copies it back into
  its parameters.

The driver's weights are perturbed before every repeat; after each timed transfer (outside the timing)
every worker returns a hash of its first and last parameters, checked against the driver's.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import statistics
import subprocess
import time
from typing import Any

import ray
import torch
import torch.distributed as dist

from incentivize.models import load


def fingerprint(parameters: list[torch.Tensor]) -> str:
    """A hash of the bytes of the first and last parameters: equal only if the copy was exact."""
    digest = hashlib.blake2b(digest_size=16)
    for p in (parameters[0], parameters[-1]):
        digest.update(p.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Worker:
    """One Ray actor with its own copy of the model."""

    def __init__(self, spec: str) -> None:
        torch.set_num_threads(1)
        model, _ = load(spec)
        model.eval().requires_grad_(False)
        self.named = dict(model.named_parameters())
        self.parameters = list(self.named.values())
        self.buffer: torch.Tensor | None = None

    def ready(self) -> bool:
        return True

    def set_weights(self, weights: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.named[name].copy_(torch.from_numpy(value))

    def init_group(self, address: str, rank: int, world_size: int) -> None:
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
        self.buffer = torch.empty(sum(p.numel() for p in self.parameters))  # allocated once

    def receive_broadcast(self) -> None:
        assert self.buffer is not None
        dist.broadcast(self.buffer, src=0)
        with torch.no_grad():
            offset = 0
            for p in self.parameters:
                p.copy_(self.buffer[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def fingerprint(self) -> str:
        return fingerprint(self.parameters)

    def close_group(self) -> None:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or tiny-random")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
    ray_seconds = time.perf_counter() - started

    model, _ = load(args.model)
    model.requires_grad_(False)
    parameters = [p for _, p in model.named_parameters()]
    megabytes = sum(p.numel() * p.element_size() for p in parameters) / 1e6

    started = time.perf_counter()
    actor = ray.remote(num_cpus=1)(Worker)
    workers = [actor.remote(args.model) for _ in range(args.workers)]
    ray.get([w.ready.remote() for w in workers])
    load_seconds = time.perf_counter() - started

    address, world_size = f"tcp://127.0.0.1:{free_port()}", args.workers + 1
    pending = [w.init_group.remote(address, rank, world_size) for rank, w in enumerate(workers, start=1)]
    dist.init_process_group("gloo", init_method=address, rank=0, world_size=world_size)
    ray.get(pending)

    def object_store() -> None:
        ref = ray.put({name: p.numpy() for name, p in model.named_parameters()})
        ray.get([w.set_weights.remote(ref) for w in workers])
        del ref

    def broadcast() -> None:
        buffer = torch.cat([p.reshape(-1) for p in parameters])
        pending = [w.receive_broadcast.remote() for w in workers]
        dist.broadcast(buffer, src=0)
        ray.get(pending)

    methods = {"object store (ray.put)": object_store, "gloo broadcast (flat buffer)": broadcast}
    times: dict[str, list[float]] = {name: [] for name in methods}
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        for name, method in methods.items():
            for p in parameters:  # a small "optimizer step", so every transfer carries new values
                p.add_(torch.randn(p.shape, generator=generator), alpha=1e-3)
            started = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - started)
            expected = fingerprint(parameters)
            got = ray.get([w.fingerprint.remote() for w in workers])
            assert all(g == expected for g in got), f"{name}: a worker does not hold the driver's weights"

    print(f"\nmodel {args.model}, {args.workers} workers, {args.repeats} repeats each; CPU {cpu_model()}; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    print(f"ray.init {ray_seconds:.2f}s; workers load the model {load_seconds:.2f}s\n")
    print("| method | median s | min s | max s | MB per worker |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} "
              f"| {megabytes:.1f} |")

    ray.get([w.close_group.remote() for w in workers])
    dist.destroy_process_group()
    ray.shutdown()


if __name__ == "__main__":
    main()
