"""Training verifiers (Cobbe et al. 2021, arXiv 2110.14168), end to end:

1. fine-tune the generator on the task's reference solutions for `sft_epochs` epochs (2 in the
   paper: later epochs raise test@1 but narrow the samples a verifier chooses among);
2. sample `samples_per_problem` solutions per training problem at T 0.7 and label them by the
   final answer;
3. train an outcome verifier on them, initialised from the generator, token-level targets, jointly
   with the LM loss (`lm_loss_weight` 1: the paper found the joint objective strictly better);
4. sample `eval_samples` completions per held-out problem and pick one by the verifier, against a
   single sample and a majority vote, with the accuracy-against-N sweep.

Stages write into `output_dir`: `generator/`, `verifier/`, `eval/` (results.json, sweep.json,
sweep.svg, samples.jsonl) and `summary.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incentivize.config import RewardModelConfig, SFTConfig, VerifierRecipeConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.inference.selection import Selector
from incentivize.models import load
from incentivize.rewards.reward_model import load_verifier
from incentivize.tasks import load_task
from incentivize.trainers.reward_model import train_reward_model
from incentivize.trainers.sft import train_sft


@dataclass
class VerifierRecipeResult:
    run_dir: Path
    metrics: dict[str, Any]
    sweep: dict[str, dict[int, float]] | None
    seconds: float


def run_verifier_recipe(config: VerifierRecipeConfig, *, on_event: Callable[[str], None] | None = None,
                        on_progress: Callable[[str, int, int], None] | None = None) -> VerifierRecipeResult:
    say = on_event or (lambda text: None)
    progress = on_progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    run_dir = Path(config.output_dir) if config.output_dir else Path("runs") / f"verifier-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "summary.json").exists():
        raise IncentivizeError(f"{run_dir} already holds a finished recipe; choose another --output-dir")
    task = load_task(config.task, **config.task_options)  # fails early on a bad task
    generator = config.model
    if config.sft_epochs > 0:
        say(f"stage 1/3: fine-tuning {config.model} on reference solutions for {config.sft_epochs} epochs")
        sft = train_sft(
            SFTConfig(model=config.model, task=config.task, task_options=config.task_options, seed=config.seed,
                      num_examples=config.sft_examples, epochs=config.sft_epochs, learning_rate=config.sft_learning_rate,
                      eval_limit=config.eval_limit, output_dir=str(run_dir / "generator")),
            on_event=say, on_progress=progress,
        )
        generator = str(sft.run_dir / "final")
        say(f"generator greedy accuracy {sft.before['greedy_accuracy']:.3f} -> {sft.after['greedy_accuracy']:.3f}")
    say(f"stage 2/3: verifier from {config.samples_per_problem} samples x {config.num_problems} problems")
    verifier_run = train_reward_model(
        RewardModelConfig(kind="orm", model=generator, task=config.task, task_options=config.task_options,
                          seed=config.seed, num_problems=config.num_problems, samples_per_problem=config.samples_per_problem,
                          temperature=config.temperature, max_completion_length=config.max_completion_length,
                          epochs=config.verifier_epochs, learning_rate=config.verifier_learning_rate,
                          lm_loss_weight=config.lm_loss_weight, target=config.target, output_dir=str(run_dir / "verifier")),
        on_event=say, on_progress=progress,
    )
    say(f"stage 3/3: {config.eval_samples} samples on each of {config.eval_limit} held-out problems, reranked")
    model, tokenizer = load(generator)
    verifiers = {"orm": load_verifier(verifier_run.run_dir / "final")}
    selectors = [Selector("best", "orm"), Selector("weighted", "orm"), Selector("top", "orm", k=3)]
    settings = EvalSettings(samples=config.eval_samples, temperature=config.temperature,
                            max_new_tokens=config.max_completion_length, seed=config.seed)
    examples = task.examples("test", config.eval_limit)
    report = evaluate(model, tokenizer, task, examples, settings, verifiers=verifiers, selectors=selectors)
    report.write(run_dir / "eval", {"generator": generator, "verifier": str(verifier_run.run_dir / "final"),
                                    **settings.model_dump()})
    seconds = time.perf_counter() - started
    summary = {"metrics": report.metrics, "verifier_validation": verifier_run.metrics, "seconds": seconds}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return VerifierRecipeResult(run_dir, report.metrics, report.sweep, seconds)
