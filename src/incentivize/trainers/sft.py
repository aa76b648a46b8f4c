"""Supervised fine-tuning on a task's reference solutions: next-token cross-entropy on the solution
tokens, averaged over all of a batch's solution tokens; the prompt (rendered with the chat template)
is context, not a target. Held-out greedy accuracy is measured before and after."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from incentivize.checkpoint import save_model
from incentivize.config import SFTConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.models import load
from incentivize.tasks import Example, load_task, render_prompt


@dataclass
class SFTResult:
    run_dir: Path
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: float


def train_sft(config: SFTConfig, *, on_event: Callable[[str], None] | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> SFTResult:
    """Fine-tune `config.model` on the reference solutions of `config.task`; the model goes to `output_dir/final`."""
    say = on_event or (lambda text: None)
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    run_dir = Path(config.output_dir) if config.output_dir else Path("runs") / f"sft-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "final").exists() or (run_dir / "metrics.jsonl").exists():
        raise IncentivizeError(f"{run_dir} already holds a run; choose another --output-dir so nothing is overwritten")
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False), encoding="utf-8")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    total = math.ceil(len(sequences) / config.batch_size) * config.epochs
    order_rng, step = random.Random(config.seed), 0
    model.train()
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as metrics_file:
        for epoch in range(config.epochs):
            order = list(range(len(sequences)))
            order_rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = [sequences[i] for i in order[start : start + config.batch_size]]
                loss, grad_norm = _update(model, optimizer, batch, config, tokenizer.pad_token_id or 0)
                step += 1
                metrics_file.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": loss, "grad_norm": grad_norm}) + "\n")
                metrics_file.flush()
                if on_progress is not None:
                    on_progress(step, total)
    model.eval()
    after = evaluate(model, tokenizer, task, held_out, settings).metrics
    save_model(run_dir / "final", model, tokenizer)
    seconds = time.perf_counter() - started
    (run_dir / "summary.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds}, indent=2) + "\n")
    return SFTResult(run_dir, before, after, seconds)


def _tokenize(tokenizer: Any, messages: list[dict[str, str]], example: Example, max_length: int) -> tuple[list[int], int]:
    """Prompt + solution + EOS token ids, and where the solution starts."""
    prompt = render_prompt(tokenizer, messages)
    solution = list(tokenizer(example.solution, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (prompt + solution)[:max_length]
    return ids, min(len(prompt), len(ids))


def _update(model: Any, optimizer: torch.optim.Optimizer, batch: list[tuple[list[int], int]], config: SFTConfig,
            pad_id: int) -> tuple[float, float]:
    targets_total = max(sum(len(ids) - start for ids, start in batch), 1)
    total = 0.0
    for first in range(0, len(batch), config.micro_batch_size):
        micro = batch[first : first + config.micro_batch_size]
        width = max(len(ids) for ids, _ in micro)
        ids = torch.full((len(micro), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(micro), width), dtype=torch.long)
        labels = torch.full((len(micro), width), -100, dtype=torch.long)
        for row, (seq, start) in enumerate(micro):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, start : len(seq)] = torch.tensor(seq[start:])
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / targets_total
        loss.backward()
        total += float(loss.detach())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm
