"""Train a reward model: an outcome verifier (ORM), a process reward model (PRM) or a pairwise RM.

- ORM (Cobbe et al. 2021): sample `samples_per_problem` solutions per training problem from the
  generator, label each by the task's answer check, and regress a scalar head towards the label at
  every completion token (`target: token`, the paper's default) or at the last one (`final`);
  optionally jointly with the LM loss on the same solutions (`lm_loss_weight`).
- PRM (Lightman et al. 2023): solutions split into steps (one per line), each labelled negative,
  neutral or positive, supervision stopping after the first negative step; a 3-way head is trained
  at each step's last token. Labels come from the task (`Task.step_labels`: the arithmetic task
  checks every calculation against the problem) or from a PRM800K-format file (`data`).
- RM: Bradley-Terry on preference pairs (`data`: JSONL with prompt, chosen, rejected).

The problems are split into training and validation parts by a hash of their text, so the samples
of one problem never sit on both sides; the validation metrics are written to `summary.json`. The
model is saved as a transformers token-classification checkpoint (`rewards.reward_model`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from incentivize.algorithms.reward_losses import bradley_terry_loss, outcome_loss, step_loss
from incentivize.config import RewardModelConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import sample_completions
from incentivize.models import load
from incentivize.models.speed import describe_paths, enable_training_paths
from incentivize.rewards.reward_model import Verifier, save_verifier, score_head, score_head_model
from incentivize.rewards.steps import supervised_prefix
from incentivize.rollout import SamplingParams
from incentivize.tasks import load_task, render_prompt
from incentivize.tasks.data import read_jsonl
from incentivize.tasks.encoding import Encoded, encode, pad
from incentivize.tasks.reward_data import load_pairs, load_step_solutions
from incentivize.trainers.loop import SupervisedTrainer
from incentivize.rewards.judge import Judge, load_judge
from incentivize.trainers.run import RunContext, RunResult, counter, run


@dataclass
class Solution:
    """A prompt (rendered text), a completion, its outcome label and its step labels (-1: none)."""

    problem: str
    prompt: str
    completion: str
    correct: bool
    steps: list[int]


def train_reward_model(config: RewardModelConfig, *, on_event: Callable[[str], None] | None = None,
                       on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """Collect the data, train, validate and save `config`'s reward model under `output_dir/final`; the
    validation metrics before and after training are the run's `before` and `after`.

    `on_event(text)` gets milestones; `on_progress(stage, done, total)` gets sampling and training
    progress; `resume` continues `output_dir` from its newest checkpoint, on the solutions it sampled."""
    return run(RewardModelTrainer(config), config, name=config.kind, resume=resume, on_event=on_event,
               on_progress=on_progress)


class RewardModelTrainer(SupervisedTrainer):
    config: RewardModelConfig

    def __init__(self, config: RewardModelConfig) -> None:
        self.config = config
        self.epochs = config.epochs

    def setup(self, context: RunContext) -> None:
        config, say = self.config, context.say
        lm, self.tokenizer = load(config.model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        sampled = context.run_dir / "solutions.jsonl"
        if context.resuming and config.kind != "rm" and config.data is None and sampled.exists():
            say(f"reading the solutions sampled before the interruption from {sampled}")
            self.solutions = _solutions_from_rows(str(sampled), read_jsonl(str(sampled)))
        else:
            # the judge first: a judge that cannot be loaded stops the run before any sampling
            judge = load_judge(config.judge or "", **config.judge_options()) if config.labeller == "judge" else None
            self.solutions = _collect(config, lm, self.tokenizer, say, context.progress)
            if judge is not None:
                self.solutions = _judge_labels(judge, self.solutions, say)
        self.items, self.validation = _split(self.solutions, config.validation_share)
        if not self.items:
            raise IncentivizeError("no training data left after the validation split; lower validation_share")
        say(f"{len(self.items)} training and {len(self.validation)} validation "
            f"{'pairs' if config.kind == 'rm' else 'solutions'}")
        _describe_labels(config, self.items, say)
        self.model = score_head_model(lm, config.kind)
        say(f"speed paths: {describe_paths(enable_training_paths(self.model, linear=config.linear_kernel))}")
        self.lm_head = _lm_head(lm, self.model) if config.lm_loss_weight > 0 else None
        params = list(self.model.parameters())
        if self.lm_head is not None and not any(self.lm_head is p for p in params):
            params.append(self.lm_head)
        self.make_optimizer(params)
        self.meta = {"kind": config.kind, "aggregation": config.aggregation, "neutral": config.neutral,
                     "target": config.target, "max_length": config.max_length, "base_model": config.model}

    def start(self, run_dir: Path) -> None:
        if self.config.kind != "rm":
            write_solutions(run_dir / "solutions.jsonl", self.solutions)

    def losses(self, batch: list[Any]) -> tuple[float, dict[str, float]]:
        self.model.train()
        stats = backward_batch(self.config, self.model, self.lm_head, self.tokenizer, batch)
        return stats["loss"] + self.config.lm_loss_weight * stats.get("lm_loss", 0.0), stats

    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        if not self.validation:
            return None
        self.model.eval()
        return _validate(self.config, Verifier(self.model, self.tokenizer, self.meta, str(directory)), self.validation)

    def state_dict(self) -> dict[str, Any]:
        untied = self.lm_head is not None and not any(self.lm_head is p for p in self.model.parameters())
        return super().state_dict() | ({"lm_head": self.lm_head.detach()} if untied and self.lm_head is not None else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "lm_head" in state and self.lm_head is not None:
            with torch.no_grad():
                self.lm_head.copy_(state["lm_head"])

    def checkpoint_model(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def save_final(self, directory: Path) -> None:
        save_verifier(directory, self.model, self.tokenizer, self.meta)

    def summary(self) -> dict[str, Any]:
        return {"train_items": len(self.items), "validation_items": len(self.validation)}


# ---------------------------------------------------------------------------------------------- data


def _collect(config: RewardModelConfig, lm: Any, tokenizer: Any, say: Callable[[str], None],
             progress: Callable[[str, int, int], None]) -> list[Any]:
    if config.kind == "rm":
        if config.data is None:
            raise IncentivizeError("train rm needs preference pairs: --set data=pairs.jsonl (fields prompt, chosen, rejected)")
        return [(pair, _prompt_text(tokenizer, pair.prompt)) for pair in load_pairs(config.data)]
    if config.data is not None:
        rows = read_jsonl(config.data)
        if all(name in rows[0][1] for name in SOLUTION_FIELDS):  # an earlier orm/prm run's solutions.jsonl
            solutions = _solutions_from_rows(config.data, rows)
            if config.kind == "prm" and not any(s.steps for s in solutions):
                raise IncentivizeError(f"{config.data}: its solutions have no step labels (the task could not label steps)")
            return solutions
        if config.kind == "orm":
            raise IncentivizeError(f"{config.data}: train orm reads a solutions.jsonl written by an earlier orm/prm run")
        return [Solution(s.problem, _prompt_text(tokenizer, s.problem), s.text, s.labels[-1] != 0, s.labels)
                for s in load_step_solutions(config.data)]
    return _sample_solutions(config, lm, tokenizer, say, progress)


SOLUTION_FIELDS = ("problem", "prompt", "completion", "correct", "steps")


def write_solutions(path: Path, solutions: list[Solution]) -> None:
    """The labelled training solutions, one JSON object per line, so later runs can reuse them."""
    with path.open("w", encoding="utf-8") as handle:
        for s in solutions:
            handle.write(json.dumps({name: getattr(s, name) for name in SOLUTION_FIELDS}, ensure_ascii=False) + "\n")


def _solutions_from_rows(path: str, rows: list[tuple[int, dict[str, Any]]]) -> list[Solution]:
    out = []
    for number, row in rows:
        missing = [name for name in SOLUTION_FIELDS if name not in row]
        if missing:
            raise IncentivizeError(f"{path}:{number}: row has no field {missing[0]!r}; expected {', '.join(SOLUTION_FIELDS)}")
        if not isinstance(row["steps"], list) or not all(label in (-1, 0, 1, 2) for label in row["steps"]):
            raise IncentivizeError(f"{path}:{number}: steps must be a list of labels -1, 0, 1 or 2")
        out.append(Solution(str(row["problem"]), str(row["prompt"]), str(row["completion"]), bool(row["correct"]),
                            list(row["steps"])))
    return out


def _prompt_text(tokenizer: Any, question: str) -> str:
    return str(tokenizer.decode(render_prompt(tokenizer, [{"role": "user", "content": question}])))


def _sample_solutions(config: RewardModelConfig, lm: Any, tokenizer: Any, say: Callable[[str], None],
                      progress: Callable[[str, int, int], None]) -> list[Solution]:
    task = load_task(config.task, **config.task_options)
    examples = task.examples("train", config.num_problems)
    if config.kind == "prm" and task.step_labels(examples[0], "") is None:
        raise IncentivizeError(
            f"task {config.task!r} cannot label solution steps; give PRM800K-format labels with --set data=FILE.jsonl"
        )
    generator, generator_tokenizer = (lm, tokenizer) if config.generator is None else load(config.generator)
    total = len(examples) * config.samples_per_problem
    say(f"sampling {config.samples_per_problem} solutions for each of {len(examples)} problems "
        f"({'generator ' + config.generator if config.generator else 'the model itself'}, T {config.temperature})")
    params = SamplingParams(n=config.samples_per_problem, temperature=config.temperature,
                            max_new_tokens=config.max_completion_length, seed=config.seed)
    records = sample_completions(generator.eval(), generator_tokenizer, task, examples, params,
                                 config.generation_batch_size, counter(progress, "sample", total))
    by_id = {e.id: e for e in examples}
    out = []
    for record in records:
        example = by_id[record.example_id]
        labels = task.step_labels(example, record.completion)  # kept for a later prm run on the same solutions
        out.append(Solution(example.question, record.prompt, record.completion, record.correct,
                            supervised_prefix(labels) if labels is not None else []))
    return out


def _judge_labels(judge: Judge, solutions: list[Solution], say: Callable[[str], None]) -> list[Solution]:
    """The solutions labelled right or wrong by the AI judge (its grade >= 0.5) instead of the task's verifier."""
    say(f"the judge {judge.name} grades {len(solutions)} solutions")
    grades = judge.grade([s.problem for s in solutions], [s.completion for s in solutions])
    labelled = [Solution(s.problem, s.prompt, s.completion, grade >= 0.5, []) for s, grade in zip(solutions, grades)]
    agree = sum(j.correct == s.correct for j, s in zip(labelled, solutions)) / len(solutions)
    say(f"the judge calls {sum(s.correct for s in labelled) / len(labelled):.0%} of them correct, the task's verifier "
        f"{sum(s.correct for s in solutions) / len(solutions):.0%}; they agree on {agree:.0%}")
    return labelled


def _split(items: list[Any], share: float) -> tuple[list[Any], list[Any]]:
    """Training and validation items, split by a hash of the problem text."""
    def problem(item: Any) -> str:
        return item.problem if isinstance(item, Solution) else item[0].prompt

    def held_out(text: str) -> bool:
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share

    return [i for i in items if not held_out(problem(i))], [i for i in items if held_out(problem(i))]


def _describe_labels(config: RewardModelConfig, items: list[Any], say: Callable[[str], None]) -> None:
    if config.kind == "rm":
        return
    correct = sum(s.correct for s in items) / len(items)
    text = f"{correct:.0%} of training solutions are correct"
    if config.kind == "prm":
        labels = [label for s in items for label in s.steps if label >= 0]
        counts = [labels.count(c) for c in (2, 1, 0)]
        text += f"; {len(labels)} supervised steps: {counts[0]} positive, {counts[1]} neutral, {counts[2]} negative"
    say(text)


# ---------------------------------------------------------------------------------------------- update


def _lm_head(lm: Any, model: Any) -> torch.Tensor:
    """The output embedding for the joint LM loss: the classifier's own input embedding when the LM
    ties them (SmolLM2 does), else a trainable copy of the LM's head (not saved)."""
    if getattr(lm.config, "tie_word_embeddings", False):
        return model.base_model.get_input_embeddings().weight  # type: ignore[no-any-return]
    return torch.nn.Parameter(lm.get_output_embeddings().weight.detach().clone())


def backward_batch(config: RewardModelConfig, model: Any, lm_head: torch.Tensor | None, tokenizer: Any,
                   batch: list[Any]) -> dict[str, float]:
    """Backpropagate the batch's losses (the reward model's, and the weighted LM loss), `micro_batch_size`
    items at a time; each loss averaged over the batch."""
    totals: dict[str, float] = {}
    for start in range(0, len(batch), config.micro_batch_size):
        micro = batch[start : start + config.micro_batch_size]
        losses = _losses(config, model, lm_head, tokenizer, micro)
        loss = torch.stack([weight * value for weight, value in losses.values()]).sum()
        (loss * len(micro) / len(batch)).backward()
        for name, (_, value) in losses.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach()) * len(micro) / len(batch)
    return totals


def _losses(config: RewardModelConfig, model: Any, lm_head: torch.Tensor | None, tokenizer: Any,
            micro: list[Any]) -> dict[str, tuple[float, torch.Tensor]]:
    """name -> (weight, loss) of one micro-batch."""
    pad_id = tokenizer.pad_token_id
    if config.kind == "rm":
        encoded = [encode(tokenizer, prompt, pair.chosen, config.max_length) for pair, prompt in micro]
        encoded += [encode(tokenizer, prompt, pair.rejected, config.max_length) for pair, prompt in micro]
        hidden, ids = _hidden(model, encoded, pad_id)
        last = score_head(model)(hidden[torch.arange(len(encoded)), [e.last for e in encoded]])[:, 0]
        return {"loss": (1.0, bradley_terry_loss(last[: len(micro)], last[len(micro) :]))}
    encoded = [encode(tokenizer, s.prompt, s.completion, config.max_length) for s in micro]
    hidden, ids = _hidden(model, encoded, pad_id)
    logits = score_head(model)(hidden)
    if config.kind == "orm":
        targets = torch.zeros(ids.shape)
        for row, e in enumerate(encoded):
            first = e.completion_start if config.target == "token" else e.last
            targets[row, min(first, e.last) : e.last + 1] = 1.0
        outcomes = torch.tensor([float(s.correct) for s in micro])
        losses = {"loss": (1.0, outcome_loss(logits[..., 0], outcomes, targets, config.outcome_loss))}
    else:
        rows, positions, labels = [], [], []
        for row, (e, s) in enumerate(zip(encoded, micro)):
            for position, label in zip(e.step_positions, s.steps):
                rows.append(row)
                positions.append(position)
                labels.append(label)
        losses = {"loss": (1.0, step_loss(logits[rows, positions], torch.tensor(labels, dtype=torch.long)))}
    if lm_head is not None:
        losses["lm_loss"] = (config.lm_loss_weight, _lm_loss(hidden, ids, encoded, lm_head))
    return losses


def _hidden(model: Any, encoded: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad(encoded, pad_id, next(model.parameters()).device)
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, ids


def _lm_loss(hidden: torch.Tensor, ids: torch.Tensor, encoded: list[Encoded], lm_head: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the completion tokens (the prompt is not a target)."""
    rows, positions = [], []
    for row, e in enumerate(encoded):
        for position in range(max(e.completion_start, 1), len(e.ids)):
            rows.append(row)
            positions.append(position)
    if not rows:
        return hidden.sum() * 0.0
    logits = F.linear(hidden[rows, [p - 1 for p in positions]], lm_head)
    return F.cross_entropy(logits.float(), ids[rows, positions])


# ---------------------------------------------------------------------------------------------- validation


def _validate(config: RewardModelConfig, verifier: Verifier, items: list[Any]) -> dict[str, Any]:
    """rm: pairwise accuracy; orm/prm: score separation of correct vs incorrect solutions, accuracy of
    `score > 0.5`, and best-of-N by the score against a random pick on the validation problems."""
    if config.kind == "rm":
        chosen = verifier.score([p for _, p in items], [pair.chosen for pair, _ in items])
        rejected = verifier.score([p for _, p in items], [pair.rejected for pair, _ in items])
        return {"pairwise_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(items)}
    scores = verifier.score([s.prompt for s in items], [s.completion for s in items])
    correct = [s.correct for s in items]
    metrics: dict[str, Any] = {
        "solutions": len(items),
        "correct_share": sum(correct) / len(items),
        "accuracy": sum((score > 0.5) == c for score, c in zip(scores, correct)) / len(items),
        "mean_score_correct": _mean([s for s, c in zip(scores, correct) if c]),
        "mean_score_incorrect": _mean([s for s, c in zip(scores, correct) if not c]),
    }
    groups: dict[str, list[tuple[float, bool]]] = {}
    for item, score in zip(items, scores):
        groups.setdefault(item.problem, []).append((score, item.correct))
    metrics["problems"] = len(groups)
    metrics["best_of_n"] = _mean([float(max(g, key=lambda x: x[0])[1]) for g in groups.values()])
    metrics["random_pick"] = _mean([sum(c for _, c in g) / len(g) for g in groups.values()])
    if config.kind == "prm":  # steps labelled positive or negative (neutral ones have no right answer)
        step_probabilities = verifier.step_scores([s.prompt for s in items], [s.completion for s in items])
        judged = [(p, label) for s, probabilities in zip(items, step_probabilities)
                  for p, label in zip(probabilities, s.steps) if label in (0, 2)]
        metrics["step_accuracy"] = _mean([float((p > 0.5) == (label == 2)) for p, label in judged])
    return metrics


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
