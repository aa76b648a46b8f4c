"""Supervised fine-tuning on a task's reference solutions: next-token cross-entropy on the solution
tokens, averaged over all of a batch's solution tokens; the prompt (rendered with the chat template)
is context, not a target. Held-out greedy accuracy is measured before and after."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from incentivize.checkpoint import save_model
from incentivize.config import SFTConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.models import load
from incentivize.rewards.reward_model import Encoded, pad
from incentivize.tasks import Example, load_task, render_prompt
from incentivize.trainers.loop import apply_gradients, create_run_dir, new_run_dir, train_epochs


@dataclass
class SFTResult:
    run_dir: Path
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: float


def train_sft(config: SFTConfig, *, on_event: Callable[[str], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None) -> SFTResult:
    """Fine-tune `config.model` on the reference solutions of `config.task`; the model goes to `output_dir/final`.
    `on_progress("sft", done, total)` counts optimizer steps."""
    say = on_event or (lambda text: None)
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    run_dir = new_run_dir(config.output_dir, f"sft-{config.task}")
    task = load_task(config.task, **config.task_options)
    examples = [e for e in task.examples("train", config.num_examples) if e.solution]
    if not examples:
        raise IncentivizeError(f"task {config.task!r} has no reference solutions to fine-tune on")
    model, tokenizer = load(config.model)
    sequences = [_tokenize(tokenizer, task.messages(e), e, config.max_length) for e in examples]
    held_out = task.examples("test", config.eval_limit)
    settings = EvalSettings(samples=0, max_new_tokens=task.max_new_tokens, seed=config.seed)
    say(f"{len(sequences)} solutions, {config.epochs} epochs; evaluating on {len(held_out)} held-out problems first")
    before = evaluate(model, tokenizer, task, held_out, settings).metrics
    create_run_dir(run_dir, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    model.train()
    train_epochs(sequences, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                 update=lambda batch: _update(model, optimizer, batch, config, tokenizer.pad_token_id or 0),
                 metrics_path=run_dir / "metrics.jsonl",
                 on_step=None if on_progress is None else lambda done, total: on_progress("sft", done, total))
    model.eval()
    after = evaluate(model, tokenizer, task, held_out, settings).metrics
    save_model(run_dir / "final", model, tokenizer)
    seconds = time.perf_counter() - started
    (run_dir / "summary.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds}, indent=2) + "\n")
    return SFTResult(run_dir, before, after, seconds)


def _tokenize(tokenizer: Any, messages: list[dict[str, str]], example: Example, max_length: int) -> Encoded:
    """Prompt + solution + EOS token ids; the solution is the completion (the only target)."""
    prompt = render_prompt(tokenizer, messages)
    solution = list(tokenizer(example.solution, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (prompt + solution)[:max_length]
    return Encoded(ids, min(len(prompt), len(ids)), [])


def _update(model: Any, optimizer: torch.optim.Optimizer, batch: list[Encoded], config: SFTConfig,
            pad_id: int) -> dict[str, float]:
    targets_total = max(sum(len(e.ids) - e.completion_start for e in batch), 1)
    total = 0.0
    for first in range(0, len(batch), config.micro_batch_size):
        micro = batch[first : first + config.micro_batch_size]
        ids, attention = pad(micro, pad_id)
        labels = torch.full(ids.shape, -100, dtype=torch.long)
        for row, e in enumerate(micro):
            labels[row, e.completion_start : len(e.ids)] = ids[row, e.completion_start : len(e.ids)]
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / targets_total
        loss.backward()
        total += float(loss.detach())
    return {"loss": total, "grad_norm": apply_gradients(optimizer, config.max_grad_norm)}
