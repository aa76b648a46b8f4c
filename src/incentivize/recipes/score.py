"""SCoRe: training a model to correct itself with RL on its own two attempts (Kumar et al. 2024).

Two stages, each a run of the one RL loop on `self_correction` episodes (`incentivize.tasks.environments`) and a
run of its own in a subdirectory (`stage1/`, `stage2/`; `--resume` skips a finished one):

1. stage I: the episode's reward is the second attempt's verdict; the first attempt gets no policy gradient and
   its tokens are held near the starting model by a KL at `first_turn_beta` (the paper's beta_2 = 10 beta_1),
   so that the second attempt learns to correct without the first drifting (which, without stage I, makes
   the second attempt copy the first);
2. stage II, from stage I's model: both attempts trained, reward r1 + r2 + shaping_alpha * (r2 - r1) on the
   episode, KL `beta` on both.

Deviations: the policy gradient is GRPO's group-normalised one (the paper uses REINFORCE); each stage's KL is to
the model the stage starts from (the paper keeps the base model as the reference in both).

Held-out self-correction metrics (`incentivize.eval.self_correct`: accuracy@t1, @t2, delta, i->c, c->i,
unchanged) of the base model and after each stage go to `comparison.md` and `summary.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from incentivize.atomic import write_text
from incentivize.config import PRESETS, RLConfig, ScoreConfig
from incentivize.recipes.stages import StagedRecipe, run_stage, shared_settings
from incentivize.tasks import load_task
from incentivize.trainers.rl import train
from incentivize.trainers.run import RunContext, RunResult, run

METRICS = ["accuracy@t1", "accuracy@t2", "delta", "delta_i_to_c", "delta_c_to_i", "unchanged"]


def run_score(config: ScoreConfig, *, on_event: Callable[[str], None] | None = None,
              on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """SCoRe end to end; `result.summary["models"]` holds each model's held-out self-correction metrics."""
    return run(Score(config), config, name=f"score-{config.task}", resume=resume, on_event=on_event,
               on_progress=on_progress)


class Score(StagedRecipe):
    """One step per stage: stage I (unless `stage1_steps` is 0), then stage II."""

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        self.state: dict[str, Any] = {"model": config.model, "models": {}}

    def setup(self, context: RunContext) -> None:
        self.context = context
        load_task(self.config.task, **self.config.task_options)  # fails early on a bad task
        self.stages = [self._stage1, self._stage2] if self.config.stage1_steps else [self._stage2]
        self.total_steps = len(self.stages)


    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        if label != "after":
            return None
        return {f"{name}/{k}": v for name, metrics in self.state["models"].items() for k, v in metrics.items()}


    def summary(self) -> dict[str, Any]:
        return {"models": self.state["models"]}

    def _stage1(self) -> None:
        config = self.config
        self.context.say(f"stage I: {config.stage1_steps} steps, reward on the second attempt, the first held by "
                         f"a KL of {config.first_turn_beta}")
        self._stage("stage1", config.stage1_steps, episode_reward="last", train_first_turn=False,
                    first_turn_beta=config.first_turn_beta)

    def _stage2(self) -> None:
        config = self.config
        self.context.say(f"stage II: {config.stage2_steps} steps, both attempts trained, reward r1 + r2 + "
                         f"{config.shaping_alpha:g} (r2 - r1)")
        self._stage("stage2", config.stage2_steps, episode_reward="shaped", shaping_alpha=config.shaping_alpha)

    def _stage(self, name: str, steps: int, **episode: Any) -> None:
        config = self.config
        result = run_stage(self.context, name, train, RLConfig(
            algorithm="grpo", **{**PRESETS["grpo"], "beta": config.beta}, model=self.state["model"], task=config.task,
            task_options=config.task_options, max_steps=steps, learning_rate=config.learning_rate,
            num_generations=config.num_generations, generation_batch_size=config.generation_batch_size,
            max_completion_length=config.max_completion_length, temperature=config.temperature,
            eval_limit=config.eval_limit, environment="self_correction", max_turns=2, **episode,
            **shared_settings(config, self.context, name),
        ))
        self.state["model"] = str(result.run_dir / "final")
        if "base" not in self.state["models"]:
            self.state["models"]["base"] = _self_correction(result.before)
        self.state["models"][name] = _self_correction(result.after)
        self._write_comparison()

    def _write_comparison(self) -> None:
        labels = {"base": f"base {self.config.model}", "stage1": "after stage I", "stage2": "after stage II"}
        lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for name, metrics in self.state["models"].items():
            lines.append(f"| {labels[name]} | " + " | ".join(f"{metrics.get(m, float('nan')):.3f}" for m in METRICS)
                         + " |")
        write_text(self.context.run_dir / "comparison.md", "\n".join(lines) + "\n")


def _self_correction(metrics: dict[str, Any] | None) -> dict[str, float]:
    prefix = "self_correct/"
    return {k.removeprefix(prefix): v for k, v in (metrics or {}).items() if k.startswith(prefix)}
