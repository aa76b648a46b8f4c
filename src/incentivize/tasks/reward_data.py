"""Data files for reward models: PRM800K-style step labels and preference pairs, checked line by line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incentivize.algorithms.reward_losses import NEGATIVE, NEUTRAL, POSITIVE
from incentivize.errors import IncentivizeError
from incentivize.rewards.steps import supervised_prefix
from incentivize.tasks.data import field_text, read_jsonl

RATINGS = {1: POSITIVE, 0: NEUTRAL, -1: NEGATIVE}


@dataclass(frozen=True)
class StepSolution:
    """A problem, its solution's steps and one label per step (-1: not supervised)."""

    problem: str
    steps: list[str]
    labels: list[int]

    @property
    def text(self) -> str:
        return "\n".join(self.steps)


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def load_step_solutions(path: str | Path) -> list[StepSolution]:
    """PRM800K-format rows: `question.problem`, and `label.steps[]` each with `completions[]`
    (`text`, `rating` in 1 / 0 / -1), `chosen_completion` (an index or null) and `human_completion`.

    Each step takes the chosen completion, else the human-written one (counted positive), else the
    first rated completion (the step where a labeller stopped); the solution ends after its first
    step without a rating or after its first negative step.
    """
    path = Path(path)
    out = []
    for number, row in read_jsonl(path):
        problem = _nested(row, ("question", "problem"), path, number)
        steps = _nested(row, ("label", "steps"), path, number)
        if not isinstance(problem, str) or not isinstance(steps, list):
            raise IncentivizeError(f"{path}:{number}: question.problem must be text and label.steps a list")
        texts, labels = [], []
        for index, step in enumerate(steps):
            chosen = _step_completion(step, path, number, index)
            if chosen is None:
                break
            text, label = chosen
            texts.append(text)
            labels.append(label)
            if label == NEGATIVE:
                break
        if texts:
            out.append(StepSolution(problem, texts, supervised_prefix(labels)))
    if not out:
        raise IncentivizeError(f"{path}: no row has a labelled step; expected PRM800K-format rows")
    return out


def _nested(row: dict[str, Any], keys: tuple[str, ...], path: Path, number: int) -> Any:
    value: Any = row
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise IncentivizeError(f"{path}:{number}: row has no field {'.'.join(keys[: depth + 1])!r}")
        value = value[key]
    return value


def _step_completion(step: Any, path: Path, number: int, index: int) -> tuple[str, int] | None:
    where = f"{path}:{number}: label.steps[{index}]"
    if not isinstance(step, dict):
        raise IncentivizeError(f"{where} must be an object")
    completions = step.get("completions") or []
    chosen, human = step.get("chosen_completion"), step.get("human_completion")
    if isinstance(chosen, int):
        if not 0 <= chosen < len(completions):
            raise IncentivizeError(f"{where}: chosen_completion {chosen} but only {len(completions)} completions")
        picked = completions[chosen]
    elif isinstance(human, dict) and isinstance(human.get("text"), str):
        return human["text"], POSITIVE
    elif completions:
        picked = completions[0]
    else:
        return None
    if not isinstance(picked, dict) or not isinstance(picked.get("text"), str):
        raise IncentivizeError(f"{where}: a completion needs a text field")
    rating = picked.get("rating")
    if rating is None:
        return None
    if rating not in RATINGS:
        raise IncentivizeError(f"{where}: rating must be 1, 0 or -1, got {rating!r}")
    return picked["text"], RATINGS[rating]


def load_pairs(path: str | Path, prompt: str = "prompt", chosen: str = "chosen", rejected: str = "rejected") -> list[Pair]:
    """Preference pairs, one JSON object per line with text fields `prompt`, `chosen`, `rejected`."""
    path = Path(path)
    pairs = []
    for number, row in read_jsonl(path):
        texts = [field_text(path, number, row, name, f"the {name} field") for name in (prompt, chosen, rejected)]
        if texts[1] == texts[2]:
            raise IncentivizeError(f"{path}:{number}: chosen and rejected are the same text; a pair must differ")
        pairs.append(Pair(*texts))
    return pairs
