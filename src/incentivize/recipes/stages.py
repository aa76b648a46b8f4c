"""Recipes run stages: each stage is a run of its own in a subdirectory of the recipe's run."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from typing import Any

from incentivize.checkpoint import latest_checkpoint
from incentivize.config import LifecycleSettings
from incentivize.trainers.interrupt import TrainingInterrupted
from incentivize.trainers.run import RunContext, RunResult, StepOutput, Trainer


def run_stage(context: RunContext, name: str, train: Callable[..., RunResult], settings: LifecycleSettings) -> RunResult:
    """Run stage `name` (its directory: `settings.output_dir`, inside the recipe's): a finished one is read back,
    an interrupted one continues from its newest checkpoint, or starts again if it left none."""
    directory = context.run_dir / name
    if (directory / "summary.json").exists():  # finished before the recipe was interrupted
        summary: dict[str, Any] = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
        return RunResult(directory, summary.get("before"), summary.get("after"), summary.get("seconds", 0.0), summary)
    resume = latest_checkpoint(directory / "checkpoints") is not None
    if directory.exists() and not resume:
        context.say(f"{directory} was interrupted before its first checkpoint; starting it again")
        shutil.rmtree(directory)
    try:
        return train(settings, on_event=context.say, on_progress=context.progress, resume=resume)
    except TrainingInterrupted as stop:
        raise TrainingInterrupted(
            f"interrupted in the {name} stage after its step {stop.step}; checkpoint {stop.checkpoint}; continue "
            f"with: incentivize train --resume {context.run_dir}", stop.step, stop.checkpoint,
        ) from None


def shared_settings(config: LifecycleSettings, context: RunContext, name: str) -> dict[str, Any]:
    """The lifecycle keys a stage takes from its recipe, and its directory."""
    return {"seed": config.seed, "save_steps": config.save_steps, "save_total_limit": config.save_total_limit,
            "report_to": config.report_to, "output_dir": str(context.run_dir / name)}


class StagedRecipe(Trainer):
    """A recipe whose steps are its stages: a subclass sets `self.stages` (callables, one per step) in `setup`
    and keeps what later stages and its summary need in `self.state` (saved with each checkpoint); the stages
    log to the trackers themselves, so the recipe keeps only tensorboard."""

    state: dict[str, Any]
    stages: list[Callable[[], None]]
    context: RunContext
    stage_number = 0

    def step(self, step: int) -> StepOutput:
        self.stage_number = step
        self.stages[step - 1]()  # each stage has its own run directory and logs; the recipe's row times it
        return StepOutput({}, nonfinite=None)

    def announce(self, text: str) -> None:
        """Say what the running stage does, numbered among the recipe's stages."""
        self.context.say(f"stage {self.stage_number}/{len(self.stages)}: {text}")

    def state_dict(self) -> dict[str, Any]:
        return {"recipe": copy.deepcopy(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state["recipe"])

    def trackers(self, report_to: list[str]) -> list[str]:
        return [name for name in report_to if name == "tensorboard"]
