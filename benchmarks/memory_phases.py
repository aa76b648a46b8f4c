"""Where a GRPO step's memory goes: peak resident memory within each phase of the step.

    .venv/bin/python benchmarks/memory_phases.py [--beta 0.04] [--micro-batch 4] [--steps 2] [--trim]

Runs incentivize on the TRL-comparison batch (`grpo_vs_trl.py`: 4 prompts x 8 completions x 64
tokens, fp32 full fine-tuning) while a thread samples the process's resident set size every 5 ms
and files each sample under the phase running at that moment (generation, reference forward,
policy forward, backward, optimizer step). `--trim` returns freed heap memory to the system after
every backward pass (glibc `malloc_trim`), to tell allocator retention from live tensors.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import threading
import time
from pathlib import Path
from typing import Any

import torch


def resident_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trim", action="store_true")
    args = parser.parse_args()

    import grpo_vs_trl
    import incentivize.trainers.rl as rl

    phase = ["setup"]
    peaks: dict[str, float] = {}

    def sample() -> None:
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), resident_gib())
            time.sleep(0.005)

    def during(label: str, fn: Any, after: str | None = None) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            phase[0] = label(a, k) if callable(label) else label
            try:
                return fn(*a, **k)
            finally:
                if after is not None:
                    phase[0] = after
        return wrapped

    libc = ctypes.CDLL("libc.so.6") if args.trim else None
    backward = torch.Tensor.backward

    def backward_then_trim(self: torch.Tensor, *a: Any, **k: Any) -> None:
        phase[0] = "backward"
        backward(self, *a, **k)
        phase[0] = "between micro-batches"
        if libc is not None:
            libc.malloc_trim(0)

    rl.generate = during("generate", rl.generate, after="scoring")
    rl.token_logprobs = during(lambda a, k: "policy forward" if k.get("grad", True) else "reference forward",
                               rl.token_logprobs)
    torch.Tensor.backward = backward_then_trim  # type: ignore[method-assign]
    torch.optim.AdamW.step = during("optimizer step", torch.optim.AdamW.step, after="after optimizer step")
    threading.Thread(target=sample, daemon=True).start()

    grpo_vs_trl.run_incentivize(args.beta, args.steps, args.micro_batch)
    print(f"\nbeta {args.beta}, micro-batch {args.micro_batch}, {args.steps} steps, trim {args.trim}")
    print("| phase | peak resident GiB |\n|---|---|")
    for name, gib in peaks.items():
        print(f"| {name} | {gib:.2f} |")
    print(f"ru_maxrss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
