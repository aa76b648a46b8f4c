"""GRPO step time and peak memory: incentivize against TRL's GRPOTrainer on the identical work.

    make bench-trl                    # sets up .venv-bench (TRL + this project) and runs this file
    .venv-bench/bin/python benchmarks/grpo_vs_trl.py --steps 5 --warmup 1 --betas 0.04,0

The work (the same for both): SmolLM2-135M-Instruct in float32, full fine-tuning; per optimizer
step 4 prompts x 8 completions, one generation round; `max_completion_length=64`; temperature 1.0,
top-p 1.0, top-k off; AdamW at a constant 1e-6, `max_grad_norm=1.0`; loss type "dapo" (token sum
over the whole generation batch / its token count), group-scaled advantages, `epsilon=0.2`, one
iteration; KL k3 in the loss with `beta`; gradient checkpointing off; arithmetic word problems (73-79
prompt tokens with the chat template); reward 1 for an exactly right answer. Micro-batching does not
change the math (the dapo loss divides by the token count of the whole step on both sides): TRL
runs its 32 completions in one forward/backward by default (`--trl-micro-batch`, as in the
reference measurement of 71 s and 14 GiB), incentivize in micro-batches of 2 (`--micro-batch`) with
`recompute_mlp=true` (`--set`; both trade a little time for memory).

Each measurement runs in its own process (`--worker trl|incentivize`), so its peak resident memory
(`ru_maxrss`) is its own; the parent alternates TRL and incentivize for each beta and prints per-step
medians, the phase split, peak memory and the ratios. The first `--warmup` steps are not timed.

FLOP figures: "model GFLOP" counts the standard 2 x parameters per token forward and 6 x per token
trained, every completion with its full prompt (generation: prefill + one token at a time), plus the
attention scores; "GFLOP/s" is that over the median step, against the machine's fp32 matmul peak,
measured at the start (`measure_peak`: the better of torch.mm and oneDNN on a 2048-square product)
unless `--peak` gives it. incentivize computes each prompt once per group, so its achieved rate on
these standard FLOPs can exceed what its kernels run at.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS_PER_STEP, GROUP, MAX_NEW = 4, 8, 64
DEFAULT_OVERRIDES = ["recompute_mlp=true"]  # memory settings of incentivize; none changes the math
TASK_OPTIONS = {"num_ops": 1, "digits": 2, "word_problems": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--betas", default="0.04,0", help="comma-separated KL coefficients")
    parser.add_argument("--only", choices=["trl", "incentivize"], help="run one side only")
    parser.add_argument("--micro-batch", type=int, default=2, help="incentivize: completions per forward/backward")
    parser.add_argument("--trl-micro-batch", type=int, default=32,
                        help="TRL: per_device_train_batch_size (32: the whole step at once, as in the reference measurement)")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="incentivize config overrides (repeatable; default: recompute_mlp=true)")
    parser.add_argument("--peak", type=float, help="fp32 matmul peak of this machine, GFLOP/s (default: measured)")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--worker", choices=["trl", "incentivize"], help=argparse.SUPPRESS)
    parser.add_argument("--beta", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = DEFAULT_OVERRIDES if args.overrides is None else args.overrides
    if args.worker:
        if args.worker == "trl":
            result = run_trl(args.beta, args.warmup + args.steps, args.trl_micro_batch)
        else:
            result = run_incentivize(args.beta, args.warmup + args.steps, args.micro_batch, overrides)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["timed"] = result["steps"][args.warmup :]
        args.out.write_text(json.dumps(result))
        return

    if args.peak is None:
        args.peak = measure_peak()
    sides = [args.only] if args.only else ["trl", "incentivize"]
    results: dict[str, dict[str, Any]] = {}
    for beta in [float(b) for b in args.betas.split(",")]:
        for side in sides:
            print(f"running {side}, beta {beta}: {args.warmup} warm-up + {args.steps} timed steps", flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, __file__, "--worker", side, "--beta", str(beta), "--steps", str(args.steps),
                           "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch),
                           "--trl-micro-batch", str(args.trl_micro_batch), "--out", out.name,
                           *[f"--set={o}" for o in overrides]]
                subprocess.run(command, check=True)
                results[f"{side} beta={beta}"] = json.loads(Path(out.name).read_text())
            report(results, args.peak)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def measure_peak(size: int = 2048, repeats: int = 10) -> float:
    """The machine's float32 matmul peak in GFLOP/s: the better of PyTorch's own (MKL on x86) and oneDNN
    on a `size`-square product. On an AMD CPU with AVX-512 the two differ about 2x (MKL runs AVX2 there)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = {}
    for name, fn in (("torch.mm", lambda: a @ b.t()),
                     ("oneDNN", lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))):
        fn()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        rates[name] = 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9
    print("float32 matmul peak, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()), flush=True)
    return max(rates.values())


def report(results: dict[str, dict[str, Any]], peak: float) -> None:
    phases = ["generate", "score", "reference", "forward", "backward", "optimizer", "other"]
    print("\n| run | median step s | peak GiB | " + " | ".join(phases)
          + " | prompt / completion tokens | model GFLOP | GFLOP/s | of peak |")
    print("|---" * (len(phases) + 7) + "|")
    for name, r in results.items():
        steps = r["timed"]
        median = statistics.median(s["step"] for s in steps)
        split = [statistics.median(s.get(p, 0.0) for s in steps) for p in phases]
        gflop = r["model_gflop_per_step"]
        prompt, completion = (statistics.mean(x[i] for x in r["lengths"]) for i in (0, 1))
        print(f"| {name} | {median:.1f} | {r['peak_rss_gib']:.2f} | " + " | ".join(f"{x:.1f}" for x in split)
              + f" | {prompt:.0f} / {completion:.0f} | {gflop:.0f} | {gflop / median:.1f} | {gflop / median / peak:.0%} |")
    for beta in sorted({n.split("beta=")[1] for n in results}):
        trl, ours = results.get(f"trl beta={beta}"), results.get(f"incentivize beta={beta}")
        if trl and ours:
            speed = statistics.median(s["step"] for s in trl["timed"]) / statistics.median(s["step"] for s in ours["timed"])
            memory = trl["peak_rss_gib"] / ours["peak_rss_gib"]
            print(f"beta={beta}: incentivize is {speed:.2f}x faster per step and uses {memory:.2f}x less peak memory")
    print(flush=True)


# ---------------------------------------------------------------------------------------------- shared


def problems(count: int) -> tuple[Any, list[Any]]:
    """The task and its first `count` training problems."""
    from incentivize.tasks import load_task

    task = load_task("arithmetic", **TASK_OPTIONS)
    return task, task.examples("train", count)


def model_gflop(model: Any, prompt_lengths: list[float], completion_lengths: list[float], beta: float) -> float:
    """Standard model FLOPs of one GRPO step (see the module docstring), in GFLOP."""
    config = model.config
    embedding = config.vocab_size * config.hidden_size
    body = sum(p.numel() for p in model.parameters()) - (0 if config.tie_word_embeddings else embedding) - embedding
    width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    flops_generate = flops_forward = 0.0
    for prompt, completion in zip(prompt_lengths, completion_lengths):
        tokens = prompt + completion
        attention = 4 * config.num_hidden_layers * width * tokens * tokens / 2  # causal QK^T and AV
        # generation: every position once through the body, the LM head at each sampled position
        flops_generate += 2 * body * tokens + 2 * embedding * completion + attention
        flops_forward += 2 * body * tokens + 2 * embedding * completion + attention
    passes = 3 + (1 if beta > 0 else 0)  # policy forward + backward (2x), reference forward
    return (flops_generate + passes * flops_forward) / 1e9


def model_dir() -> str:
    """The cached safetensors copy of SmolLM2-135M-Instruct (converted from the GGUF wheel once)."""
    from incentivize.models import cache_dir, load

    load("smollm2-135m")
    return str(cache_dir() / "models" / "smollm2-135m-instruct")


# ---------------------------------------------------------------------------------------------- incentivize


def run_incentivize(beta: float, steps: int, micro_batch: int, overrides: list[str] | None = None) -> dict[str, Any]:
    from incentivize.config import load_config
    from incentivize.models import load
    from incentivize.trainers.rl import train

    rows: list[dict[str, float]] = []
    lengths: list[tuple[float, float]] = []

    def on_step(step: int, metrics: dict[str, Any]) -> None:
        phases = {name: metrics.get(f"time/{name}", 0.0) for name in
                  ["generate", "score", "reference", "forward", "backward", "optimizer"]}
        phases["other"] = metrics["time/step"] - sum(phases.values())
        rows.append({"step": metrics["time/step"], **phases})
        lengths.append((metrics["prompt_length"], metrics["completion_length"]))
        print(f"  incentivize step {step}: {metrics['time/step']:.1f} s, reward {metrics['reward_mean']:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("grpo", None, [
            "model=smollm2-135m", "task=arithmetic", *[f"task_options.{k}={v}" for k, v in TASK_OPTIONS.items()],
            f"num_generations={GROUP}", f"generation_batch_size={PROMPTS_PER_STEP * GROUP}",
            f"max_completion_length={MAX_NEW}", "temperature=1.0", "top_p=1.0", "top_k=0", "learning_rate=1e-6",
            "lr_scheduler_type=constant", "max_grad_norm=1.0", "loss_type=dapo", "scale_rewards=group", "epsilon=0.2",
            "num_iterations=1", f"beta={beta}", "kl_in=loss", "kl_estimator=k3", f"micro_batch_size={micro_batch}",
            f"max_steps={steps}", "eval_before=false", "eval_limit=1", f"output_dir={tmp}/run",
            *(DEFAULT_OVERRIDES if overrides is None else overrides),
        ])
        train(config, on_step=on_step)
    model, _ = load("smollm2-135m")
    gflop = statistics.median(
        model_gflop(model, [p] * (PROMPTS_PER_STEP * GROUP), [c] * (PROMPTS_PER_STEP * GROUP), beta) for p, c in lengths
    )
    return {"steps": rows, "model_gflop_per_step": gflop, "lengths": lengths}


# ---------------------------------------------------------------------------------------------- TRL


def run_trl(beta: float, steps: int, micro_batch: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from incentivize.rewards import answers_match, extract_answer

    torch.manual_seed(0)
    task, examples = problems(PROMPTS_PER_STEP * steps)
    dataset = Dataset.from_list([{"prompt": task.messages(e), "gold": e.answer} for e in examples])

    def exact_answer(prompts: list, completions: list, gold: list, **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if answers_match(extract_answer(t), g) else 0.0 for t, g in zip(texts, gold)]

    path = model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tmp = tempfile.mkdtemp()
    args = GRPOConfig(
        output_dir=tmp, per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=PROMPTS_PER_STEP * GROUP // micro_batch, num_generations=GROUP,
        max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0, learning_rate=1e-6,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, loss_type="dapo", scale_rewards="group",
        epsilon=0.2, num_iterations=1, beta=beta, gradient_checkpointing=False, max_steps=steps, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=0, shuffle_dataset=False,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_answer], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    clock: dict[str, float] = {}
    lengths: list[tuple[float, float]] = []

    def timed(name: str, fn: Any, pick: Any = None) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phase = pick() if pick else name
                clock[phase] = clock.get(phase, 0.0) + time.perf_counter() - started
        return wrapper

    original_generate_score = trainer._generate_and_score_completions

    def generate_and_score(inputs: Any) -> Any:
        out = original_generate_score(inputs)
        lengths.append((float(out["prompt_mask"].sum(1).float().mean()), float(out["completion_mask"].sum(1).float().mean())))
        return out

    trainer._generate_and_score_completions = timed("generation+scoring", generate_and_score)
    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("score", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(
        "", trainer._get_per_token_logps_and_entropies, lambda: "forward" if torch.is_grad_enabled() else "reference"
    )
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    rows: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            clock.clear()
            clock["begin"] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            total = time.perf_counter() - clock.pop("begin")
            phases = {p: clock.get(p, 0.0) for p in ["generate", "score", "reference", "forward", "backward"]}
            # the generation stage also holds the reference forward; the rest of it is bookkeeping
            phases["optimizer"] = 0.0
            phases["other"] = total - sum(phases.values())
            rows.append({"step": total, **phases})
            print(f"  trl step {len(rows)}: {total:.1f} s", flush=True)

    trainer.add_callback(StepTimer())
    trainer.train()
    gflop = statistics.median(
        model_gflop(model, [p] * (PROMPTS_PER_STEP * GROUP), [c] * (PROMPTS_PER_STEP * GROUP), beta) for p, c in lengths
    )
    return {"steps": rows, "model_gflop_per_step": gflop, "lengths": lengths}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
