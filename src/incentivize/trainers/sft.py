"""Supervised fine-tuning on a task's reference solutions, or on the prompt-completion rows of `data`
(TRL's format; e.g. a teacher's answers): next-token cross-entropy on the solution
tokens, averaged over all of a batch's solution tokens; the prompt (rendered with the chat template)
is context, not a target. Held-out greedy accuracy is measured before and after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from incentivize.checkpoint import save_model
from incentivize.config import SFTConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.models import load
from incentivize.models.speed import describe_paths, enable_training_paths
from incentivize.tasks import load_task
from incentivize.tasks.encoding import Encoded, encode_solution, pad
from incentivize.tasks.preference_data import load_completions
from incentivize.trainers.loop import SupervisedTrainer
from incentivize.trainers.run import RunContext, RunResult, run


def train_sft(config: SFTConfig, *, on_event: Callable[[str], None] | None = None,
              on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """Fine-tune `config.model` on the reference solutions of `config.task`; the model goes to `output_dir/final`.
    `on_progress("train", done, total)` counts optimizer steps; `resume` continues `output_dir` from its newest
    checkpoint."""
    return run(SFTTrainer(config), config, name=f"sft-{config.task}", resume=resume, on_event=on_event,
               on_progress=on_progress)


class SFTTrainer(SupervisedTrainer):
    config: SFTConfig

    def __init__(self, config: SFTConfig) -> None:
        self.config = config
        self.epochs = config.epochs

    def setup(self, context: RunContext) -> None:
        config, self.say = self.config, context.say
        self.task = load_task(config.task, **config.task_options)
        if config.data is not None:  # prompt-completion rows, e.g. a teacher's answers
            rows = load_completions(config.data)[: config.num_examples]
        else:
            rows = [(self.task.messages(e), e.solution) for e in self.task.examples("train", config.num_examples)
                    if e.solution]
            if not rows:
                raise IncentivizeError(f"task {config.task!r} has no reference solutions to fine-tune on")
        self.model, self.tokenizer = load(config.model)
        paths = enable_training_paths(self.model, linear=config.linear_kernel, grad_in_place=True)
        self.say(f"speed paths: {describe_paths(paths)}")
        self.items = [encode_solution(self.tokenizer, prompt, answer, config.max_length) for prompt, answer in rows]
        self.held_out = self.task.examples("test", config.eval_limit)
        self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        self.say(f"{len(self.items)} solutions, {config.epochs} epochs ({self.total_steps} steps); "
                 f"{len(self.held_out)} held-out problems")

    def losses(self, batch: list[Encoded]) -> tuple[float, dict[str, float]]:
        self.model.train()
        loss = _backward(self.model, batch, self.config.micro_batch_size, self.tokenizer.pad_token_id or 0)
        return loss, {"loss": loss}

    def evaluate(self, label: str, directory: Path) -> dict[str, Any]:
        self.say(f"evaluating {label} on {len(self.held_out)} held-out problems")
        self.model.eval()
        settings = EvalSettings(samples=0, max_new_tokens=self.task.max_new_tokens, seed=self.config.seed)
        report = evaluate(self.model, self.tokenizer, self.task, self.held_out, settings)
        report.write(directory, {"model": self.config.model, "step": label, **settings.model_dump()})
        return report.metrics

    def checkpoint_model(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def save_final(self, directory: Path) -> None:
        save_model(directory, self.model, self.tokenizer)


def _backward(model: Any, batch: list[Encoded], micro_batch_size: int, pad_id: int) -> float:
    """Backpropagate the mean cross-entropy over all solution tokens of `batch`, `micro_batch_size`
    sequences at a time; the loss."""
    targets_total = max(sum(len(e.ids) - e.completion_start for e in batch), 1)
    total = 0.0
    for first in range(0, len(batch), micro_batch_size):
        micro = batch[first : first + micro_batch_size]
        ids, attention = pad(micro, pad_id)
        labels = torch.full(ids.shape, -100, dtype=torch.long)
        for row, e in enumerate(micro):
            labels[row, e.completion_start : len(e.ids)] = ids[row, e.completion_start : len(e.ids)]
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / targets_total
        loss.backward()
        total += float(loss.detach())
    return total
