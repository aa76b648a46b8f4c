"""Training verifiers (Cobbe et al. 2021, arXiv 2110.14168), end to end:

1. fine-tune the generator on the task's reference solutions for `sft_epochs` epochs (2 in the
   paper: later epochs raise test@1 but narrow the samples a verifier chooses among);
2. sample `samples_per_problem` solutions per training problem at T 0.7 and label them by the
   final answer;
3. train an outcome verifier on them, initialised from the generator, token-level targets, jointly
   with the LM loss (`lm_loss_weight` 1: the paper found the joint objective strictly better);
4. sample `eval_samples` completions per held-out problem and pick one by the verifier, against a
   single sample and a majority vote, with the accuracy-against-N sweep.

Each stage is a step of the recipe's run; the first two are runs of their own in `output_dir`
(`generator/`, `verifier/`), the last writes `eval/` (results.json, sweep.json, sweep.svg,
samples.jsonl); then `summary.json`. `--resume` skips the finished stages and resumes an interrupted
one from its newest checkpoint (its `save_steps` is the recipe's), or starts it again when it has none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from incentivize.config import RewardModelConfig, SFTConfig, VerifierRecipeConfig
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.inference.selection import Selector
from incentivize.models import load
from incentivize.rewards.reward_model import load_verifier
from incentivize.tasks import load_task
from incentivize.trainers.reward_model import train_reward_model
from incentivize.recipes.stages import StagedRecipe, run_stage, shared_settings
from incentivize.trainers.run import RunContext, RunResult, run
from incentivize.trainers.sft import train_sft


def run_verifier_recipe(config: VerifierRecipeConfig, *, on_event: Callable[[str], None] | None = None,
                        on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """Cobbe et al.'s recipe end to end; `result.summary` holds the reranked held-out metrics and the sweep."""
    return run(VerifierRecipe(config), config, name=f"verifier-{config.task}", resume=resume, on_event=on_event,
               on_progress=on_progress)


class VerifierRecipe(StagedRecipe):
    """Three steps, one per stage: fine-tune the generator, train the verifier, rerank held-out samples."""

    def __init__(self, config: VerifierRecipeConfig) -> None:
        self.config = config
        self.state: dict[str, Any] = {"generator": config.model, "verifier": None, "verifier_validation": None,
                                      "metrics": None, "sweep": None}

    def setup(self, context: RunContext) -> None:
        self.context = context
        self.task = load_task(self.config.task, **self.config.task_options)  # fails early on a bad task
        self.stages = [self._fine_tune, self._train_verifier, self._rerank]
        if self.config.sft_epochs == 0:
            self.stages = self.stages[1:]
        self.total_steps = len(self.stages)


    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        """After the last stage: the reranked held-out accuracies it measured (in `eval/`)."""
        return self.state["metrics"] if label == "after" else None


    def summary(self) -> dict[str, Any]:
        return {"metrics": self.state["metrics"], "verifier_validation": self.state["verifier_validation"],
                "sweep": self.state["sweep"]}

    def _fine_tune(self) -> None:
        config = self.config
        self.context.say(f"stage 1/3: fine-tuning {config.model} on reference solutions for {config.sft_epochs} epochs")
        sft = run_stage(self.context, "generator", train_sft, SFTConfig(
            model=config.model, task=config.task, task_options=config.task_options, num_examples=config.sft_examples,
            epochs=config.sft_epochs, learning_rate=config.sft_learning_rate, eval_limit=config.eval_limit,
            **shared_settings(config, self.context, "generator"),
        ))
        self.state["generator"] = str(sft.run_dir / "final")
        before, after = (sft.before or {}).get("greedy_accuracy"), (sft.after or {}).get("greedy_accuracy")
        self.context.say(f"generator greedy accuracy {before} -> {after}")

    def _train_verifier(self) -> None:
        config = self.config
        self.context.say(f"stage 2/3: verifier from {config.samples_per_problem} samples x {config.num_problems} problems")
        verifier = run_stage(self.context, "verifier", train_reward_model, RewardModelConfig(
            kind="orm", model=self.state["generator"], task=config.task, task_options=config.task_options,
            num_problems=config.num_problems, samples_per_problem=config.samples_per_problem,
            temperature=config.temperature, max_completion_length=config.max_completion_length,
            epochs=config.verifier_epochs, learning_rate=config.verifier_learning_rate,
            lm_loss_weight=config.lm_loss_weight, target=config.target,
            **shared_settings(config, self.context, "verifier"),
        ))
        self.state["verifier"] = str(verifier.run_dir / "final")
        self.state["verifier_validation"] = verifier.after

    def _rerank(self) -> None:
        config = self.config
        self.context.say(f"stage 3/3: {config.eval_samples} samples on each of {config.eval_limit} held-out problems, "
                         "reranked")
        model, tokenizer = load(self.state["generator"])
        selectors = [Selector("best", "orm"), Selector("weighted", "orm"), Selector("top", "orm", k=3)]
        settings = EvalSettings(samples=config.eval_samples, temperature=config.temperature,
                                max_new_tokens=config.max_completion_length, seed=config.seed)
        examples = self.task.examples("test", config.eval_limit)
        report = evaluate(model, tokenizer, self.task, examples, settings,
                          verifiers={"orm": load_verifier(self.state["verifier"])}, selectors=selectors)
        report.write(self.context.run_dir / "eval", {"generator": self.state["generator"],
                                                     "verifier": self.state["verifier"], **settings.model_dump()})
        self.state["metrics"], self.state["sweep"] = report.metrics, report.sweep
