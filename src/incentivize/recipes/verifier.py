"""Training verifiers (Cobbe et al. 2021, arXiv 2110.14168), end to end:

1. fine-tune the generator on the task's reference solutions for `sft_epochs` epochs (2 in the
   paper: later epochs raise test@1 but narrow the samples a verifier chooses among);
2. sample `samples_per_problem` solutions per training problem at T 0.7 and label them by the
   final answer;
3. train an outcome verifier on them, initialised from the generator, token-level targets, jointly
   with the LM loss (`lm_loss_weight` 1: the paper found the joint objective strictly better);
4. with `process_verifier` (and a task that labels steps), train a process verifier (PRM, Lightman et
   al. 2023) on the same solutions, from the same generator, for the same epochs;
5. sample `eval_samples` completions per held-out problem and pick one by each verifier, against a
   single sample and a majority vote, with the accuracy-against-N sweep and each verifier's AUROC on
   those samples (right against wrong).

Each stage is a step of the recipe's run; the training stages are runs of their own in `output_dir`
(`generator/`, `verifier/`, `process-verifier/`), the last writes `eval/` (results.json, sweep.json,
sweep.svg, samples.jsonl); then `summary.json`. `--resume` skips the finished stages and resumes an interrupted
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
    """One step per stage: fine-tune the generator, train the outcome and process verifiers, rerank held-out samples."""

    def __init__(self, config: VerifierRecipeConfig) -> None:
        self.config = config
        self.state: dict[str, Any] = {"generator": config.model, "verifier": None, "verifier_validation": None,
                                      "process_verifier": None, "process_verifier_validation": None,
                                      "metrics": None, "sweep": None}

    def setup(self, context: RunContext) -> None:
        self.context = context
        self.task = load_task(self.config.task, **self.config.task_options)  # fails early on a bad task
        first = self.task.examples("train", 1)
        labels_steps = bool(first) and self.task.step_labels(first[0], "") is not None
        if self.config.process_verifier and not labels_steps:
            context.say(f"task {self.config.task!r} does not label solution steps: no process verifier")
        self.stages = [self._fine_tune, self._train_verifier, self._train_process_verifier, self._rerank]
        if self.config.sft_epochs == 0:
            self.stages.remove(self._fine_tune)
        if not (self.config.process_verifier and labels_steps):
            self.stages.remove(self._train_process_verifier)
        self.total_steps = len(self.stages)


    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        """After the last stage: the reranked held-out accuracies it measured (in `eval/`)."""
        return self.state["metrics"] if label == "after" else None


    def summary(self) -> dict[str, Any]:
        return {"metrics": self.state["metrics"], "verifier_validation": self.state["verifier_validation"],
                "process_verifier_validation": self.state["process_verifier_validation"], "sweep": self.state["sweep"]}

    def _fine_tune(self) -> None:
        config = self.config
        self.announce(f"fine-tuning {config.model} on reference solutions for {config.sft_epochs} epochs")
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
        self.announce(f"outcome verifier from {config.samples_per_problem} samples x {config.num_problems} problems")
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

    def _train_process_verifier(self) -> None:
        config = self.config
        solutions = Path(self.state["verifier"]).parent / "solutions.jsonl"
        self.announce(f"process verifier on the same solutions ({solutions})")
        verifier = run_stage(self.context, "process-verifier", train_reward_model, RewardModelConfig(
            kind="prm", model=self.state["generator"], task=config.task, task_options=config.task_options,
            data=str(solutions), epochs=config.verifier_epochs, learning_rate=config.verifier_learning_rate,
            lm_loss_weight=config.lm_loss_weight, **shared_settings(config, self.context, "process-verifier"),
        ))
        self.state["process_verifier"] = str(verifier.run_dir / "final")
        self.state["process_verifier_validation"] = verifier.after

    def _rerank(self) -> None:
        config = self.config
        self.announce(f"{config.eval_samples} samples on each of {config.eval_limit} held-out problems, "
                         "reranked")
        model, tokenizer = load(self.state["generator"])
        verifiers = {"orm": load_verifier(self.state["verifier"])}
        if self.state["process_verifier"] is not None:
            verifiers["prm"] = load_verifier(self.state["process_verifier"])
        selectors = [Selector(method, name, k=3 if method == "top" else 0)
                     for name in verifiers for method in ("best", "weighted", "top")]
        settings = EvalSettings(samples=config.eval_samples, temperature=config.temperature,
                                max_new_tokens=config.max_completion_length, seed=config.seed)
        examples = self.task.examples("test", config.eval_limit)
        report = evaluate(model, tokenizer, self.task, examples, settings,
                          verifiers=verifiers, selectors=selectors)
        report.write(self.context.run_dir / "eval", {"generator": self.state["generator"],
                                                     "verifier": self.state["verifier"],
                                                     "process_verifier": self.state["process_verifier"],
                                                     **settings.model_dump()})
        self.state["metrics"], self.state["sweep"] = report.metrics, report.sweep
