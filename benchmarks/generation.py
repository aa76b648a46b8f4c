"""Rollout engine against `model.generate` on the same batch: generated tokens per second.

    .venv/bin/python benchmarks/generation.py [--prompts 4] [--n 8] [--max-new-tokens 64] [--repeats 3]

The batch is the GRPO step of the TRL comparison (`grpo_vs_trl.py`): 4 arithmetic word problems x 8
samples, at most 64 new tokens, temperature 1.0, top-p 1.0, top-k off, SmolLM2-135M-Instruct in
float32. `model.generate` gets the 32 left-padded rows (each prompt repeated 8 times, as TRL does),
once with PyTorch's own linear layers (as TRL runs it) and once with incentivize's oneDNN linears;
the engine gets the 4 prompts and n = 8. Tokens counted are the generated ones up to and including
EOS, never padding. The two alternate, `--repeats` times each after one untimed warm-up each, and
the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from incentivize.models import load
from incentivize.models.speed import disable_training_paths, enable_training_paths
from incentivize.rollout import SamplingParams, generate
from incentivize.tasks import load_task, render_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model, tokenizer = load(args.model, dtype=getattr(torch, args.dtype))
    model.to(args.device).eval()
    task = load_task("arithmetic", word_problems=True)
    prompts = [render_prompt(tokenizer, task.messages(e)) for e in task.examples("train", args.prompts)]
    print(f"{args.model} {args.dtype} on {args.device}: {args.prompts} prompts x {args.n} samples, "
          f"up to {args.max_new_tokens} new tokens, prompts of {[len(p) for p in prompts]} tokens")

    # model.generate as TRL runs it (PyTorch's own linear layers), the same with incentivize's oneDNN
    # linears (`incentivize.models.speed`, what the RL trainer turns on for its policy), and the engine with them
    sides = [("model.generate", hf_generate, False), ("model.generate + oneDNN linears", hf_generate, True),
             ("incentivize engine", engine_generate, True)]
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name, _, _ in sides}
    for repeat in range(args.repeats + 1):
        for name, fn, fast in sides:
            if fast:
                enable_training_paths(model, linear="onednn")
            else:
                disable_training_paths(model)
            synchronize(args.device)
            started = time.perf_counter()
            tokens = fn(model, tokenizer, prompts, args.n, args.max_new_tokens, seed=repeat)
            synchronize(args.device)
            seconds = time.perf_counter() - started
            if repeat > 0:  # the first round warms up both
                runs[name].append((tokens, seconds))
                print(f"  {name}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s", flush=True)
    rates = {name: statistics.median(t / s for t, s in results) for name, results in runs.items()}
    print("\n| generator | median tokens/s | median seconds | median tokens |\n|---|---|---|---|")
    for name, results in runs.items():
        print(f"| {name} | {rates[name]:.0f} | {statistics.median(s for _, s in results):.2f} | "
              f"{statistics.median(t for t, _ in results):.0f} |")
    engine = rates["incentivize engine"]
    print(f"\nengine / model.generate: {engine / rates['model.generate']:.2f}x tokens per second "
          f"(against model.generate with the same oneDNN linears: {engine / rates['model.generate + oneDNN linears']:.2f}x)")


def hf_generate(model: Any, tokenizer: Any, prompts: list[list[int]], n: int, max_new: int, seed: int) -> int:
    rows = [p for p in prompts for _ in range(n)]
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    completions = out[:, width:]
    is_eos = completions == tokenizer.eos_token_id
    # tokens up to and including the first EOS; the rest is padding
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return int((~after_eos).sum())


def engine_generate(model: Any, tokenizer: Any, prompts: list[list[int]], n: int, max_new: int, seed: int) -> int:
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new, seed=seed)
    rollouts = generate(model, prompts, params, eos_token_ids=[tokenizer.eos_token_id],
                        pad_token_id=tokenizer.pad_token_id)
    return int(rollouts.completion_mask.sum())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
