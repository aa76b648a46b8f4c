"""RLAIF against SFT on one student ("A Critical Evaluation of AI Feedback for Aligning LLMs", Sharma et al. 2024).

The paper found that SFT on a strong teacher's answers often matches or beats RLAIF, which pays only with a
capable base model and a critic stronger than the SFT teacher. The recipe measures it on the task:

1. the teacher answers `sft_examples` training problems greedily (`sft_teacher: oracle`: the task's reference
   solutions, no teacher run), written to `teacher-answers.jsonl` with the teacher's accuracy on them;
2. (a) the student is fine-tuned on those answers (`sft/`);
3. (b) from (a), DPO on pairs of its own samples that the AI critic labels (`rlaif/`; `labeller: judge`);
4. (c) from (a), the same DPO with the task's verifier as an oracle critic (`oracle-critic/`).

Held-out greedy accuracy of the base student, (a), (b) and (c) goes to `comparison.md` and `summary.json`; (a) is
measured by the DPO stage before its first update, with the same settings as (b) and (c) after theirs. Each stage
is a step of the recipe's run and a run of its own; `--resume` skips the finished ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from incentivize.atomic import write_text
from incentivize.config import JudgeSettings, PreferenceConfig, RlaifVsSftConfig, SFTConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.models import load
from incentivize.recipes.stages import StagedRecipe, run_stage, shared_settings
from incentivize.tasks import load_task
from incentivize.trainers.preference import NoPairs, train_preference
from incentivize.trainers.run import RunContext, RunResult, run
from incentivize.trainers.sft import train_sft

ORACLE = "oracle"


def run_rlaif_vs_sft(config: RlaifVsSftConfig, *, on_event: Callable[[str], None] | None = None,
                     on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """The comparison end to end; `result.summary["arms"]` holds each arm's held-out greedy accuracy."""
    return run(RlaifVsSft(config), config, name=f"rlaif-vs-sft-{config.task}", resume=resume, on_event=on_event,
               on_progress=on_progress)


class RlaifVsSft(StagedRecipe):
    """One step per stage: the teacher's answers, SFT, DPO with the AI critic, DPO with the oracle critic."""

    def __init__(self, config: RlaifVsSftConfig) -> None:
        self.config = config
        self.state: dict[str, Any] = {"teacher_answers": None, "teacher_accuracy": None, "sft": None, "arms": {}}

    def setup(self, context: RunContext) -> None:
        self.context, config = context, self.config
        self.task = load_task(config.task, **config.task_options)  # fails early on a bad task
        self.stages = [self._teacher, self._sft, self._rlaif, self._oracle_critic]
        if config.sft_teacher == ORACLE:
            self.stages.remove(self._teacher)
        if config.critic == ORACLE:
            self.stages.remove(self._rlaif)  # (b) would be (c)
        self.total_steps = len(self.stages)


    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        if label != "after":
            return None
        return {f"greedy_accuracy/{arm}": value for arm, value in self.state["arms"].items() if value is not None}


    def summary(self) -> dict[str, Any]:
        return {"arms": self.state["arms"], "teacher_accuracy": self.state["teacher_accuracy"],
                **({"no_pairs": self.state["no_pairs"]} if "no_pairs" in self.state else {})}

    # ------------------------------------------------------------------ stages

    def _teacher(self) -> None:
        config = self.config
        path = self.context.run_dir / "teacher-answers.jsonl"
        self.context.say(f"the teacher {config.sft_teacher} answers {config.sft_examples} training problems (greedy)")
        teacher, tokenizer = load(config.sft_teacher)
        examples = self.task.examples("train", config.sft_examples)
        settings = EvalSettings(samples=0, max_new_tokens=config.max_completion_length, seed=config.seed)
        report = evaluate(teacher, tokenizer, self.task, examples, settings)
        rows = [{"prompt": self.task.messages(e), "completion": r.completion}
                for e, r in zip(examples, report.records) if r.completion.strip()]
        if not rows:
            raise IncentivizeError(f"sft_teacher: {config.sft_teacher} gave an empty answer to every one of the "
                                   f"{len(examples)} problems; choose a teacher that answers the task, or oracle")
        write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.state["teacher_answers"], self.state["teacher_accuracy"] = str(path), report.metrics["greedy_accuracy"]
        self.context.say(f"the teacher is right on {report.metrics['greedy_accuracy']:.0%} of them; {len(rows)} "
                         f"answers written to {path}")

    def _sft(self) -> None:
        config = self.config
        source = "reference solutions" if config.sft_teacher == ORACLE else f"{config.sft_teacher}'s answers"
        self.context.say(f"(a) fine-tuning {config.model} on {source} for {config.sft_epochs} epochs")
        sft = run_stage(self.context, "sft", train_sft, SFTConfig(
            model=config.model, task=config.task, task_options=config.task_options, data=self.state["teacher_answers"],
            num_examples=config.sft_examples, epochs=config.sft_epochs, learning_rate=config.sft_learning_rate,
            eval_limit=config.eval_limit, **shared_settings(config, self.context, "sft"),
        ))
        self.state["sft"] = str(sft.run_dir / "final")
        self.state["arms"]["base"] = (sft.before or {}).get("greedy_accuracy")

    def _rlaif(self) -> None:
        try:
            self._dpo("rlaif", "judge", f"(b) DPO from (a) on its own samples, the AI critic {self.config.critic} "
                      "labelling")
        except NoPairs as err:  # a critic too unsure to label any pair is a result, not the end of the comparison
            self.context.say(f"(b) has no result: {err}")
            self.state["arms"]["rlaif"] = None
            self.state["no_pairs"] = str(err)
            self._write_comparison()

    def _oracle_critic(self) -> None:
        self._dpo("oracle-critic", "verifier", "(c) DPO from (a) on its own samples, the task's verifier labelling")

    def _dpo(self, name: str, labeller: Literal["judge", "verifier"], what: str) -> None:
        config = self.config
        self.context.say(what)
        judge = {**config.model_dump(include=set(JudgeSettings.model_fields)),
                 "judge": config.critic if labeller == "judge" else None}
        result = run_stage(self.context, name, train_preference, PreferenceConfig(
            algorithm="dpo", model=self.state["sft"], task=config.task, task_options=config.task_options,
            pairs="self", labeller=labeller, judge_confidence=config.judge_confidence, rounds=config.rounds,
            problems_per_round=config.problems_per_round, samples_per_problem=config.samples_per_problem,
            learning_rate=config.dpo_learning_rate, beta=config.beta, max_completion_length=config.max_completion_length,
            eval_limit=config.eval_limit, **judge, **shared_settings(config, self.context, name),
        ))
        if self.state["arms"].get("sft") is None:  # (a) is measured by the first DPO stage, before its update
            self.state["arms"]["sft"] = (result.before or {}).get("greedy_accuracy")
        self.state["arms"][name] = (result.after or {}).get("greedy_accuracy")
        self._write_comparison()

    def _write_comparison(self) -> None:
        config, arms = self.config, self.state["arms"]
        labels = {"base": f"base student {config.model}",
                  "sft": f"(a) SFT on {'reference solutions' if config.sft_teacher == ORACLE else config.sft_teacher}",
                  "rlaif": f"(b) (a) + DPO, AI critic {config.critic}",
                  "oracle-critic": "(c) (a) + DPO, the verifier as critic"}
        lines = ["| arm | held-out greedy accuracy |", "|---|---|"]
        lines += [f"| {labels[arm]} | {arms[arm]:.3f} |" for arm in labels if arms.get(arm) is not None]
        if "rlaif" in arms and arms["rlaif"] is None:
            lines.append(f"| {labels['rlaif']} | no pairs: {self.state.get('no_pairs')} |")
        if self.state["teacher_accuracy"] is not None:
            lines.append(f"\nThe teacher {config.sft_teacher} was right on {self.state['teacher_accuracy']:.1%} of "
                         f"the {config.sft_examples} training problems it answered.")
        write_text(self.context.run_dir / "comparison.md", "\n".join(lines) + "\n")
