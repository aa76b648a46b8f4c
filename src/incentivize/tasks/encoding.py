"""Prompt + completion as one sequence of token ids, for the supervised trainers and the reward models.

`encode` tokenizes a prompt and a completion apart and joins them, so a reward model sees the same
tokens in training and in scoring, and records where each step of the completion ends (process
reward models read a score there). `encode_solution` renders a task's messages with the chat
template (`render_prompt`) and appends a reference solution and EOS, for supervised fine-tuning.
`pad` makes a right-padded batch of either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from incentivize.rewards.steps import split_steps
from incentivize.tasks.base import render_prompt

__all__ = ["Encoded", "encode", "encode_solution", "pad"]


@dataclass
class Encoded:
    """Token ids of prompt + completion; where the completion starts; each step's last token."""

    ids: list[int]
    completion_start: int
    step_positions: list[int]

    @property
    def last(self) -> int:
        return len(self.ids) - 1


def encode(tokenizer: Any, prompt: str, completion: str, max_length: int | None = None) -> Encoded:
    """Tokenize `prompt` and `completion` apart and join them; a step (a non-blank line) is read at
    the token holding its last character. `max_length` keeps the prompt's end and the completion's
    start."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pieces = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    completion_ids = list(pieces["input_ids"])
    offsets = pieces["offset_mapping"]
    positions = []
    for step in split_steps(completion):
        index = next((i for i, (start, end) in enumerate(offsets) if start <= step.end - 1 < end), None)
        if index is not None:
            positions.append(index)
    if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
        keep_prompt = max(1, max_length - len(completion_ids))
        prompt_ids = prompt_ids[-keep_prompt:]
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    start = len(prompt_ids)
    return Encoded(prompt_ids + completion_ids, start,
                   [start + i for i in positions if start + i < start + len(completion_ids)])


def encode_solution(tokenizer: Any, messages: list[dict[str, str]], solution: str, max_length: int) -> Encoded:
    """The rendered prompt + `solution` + EOS, cut to the first `max_length` tokens; the solution is
    the completion (the supervised target)."""
    prompt = render_prompt(tokenizer, messages)
    completion = list(tokenizer(solution, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (prompt + completion)[:max_length]
    return Encoded(ids, min(len(prompt), len(ids)), [])


def pad(batch: list[Encoded], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, (B, L) each."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
    return ids.to(device), mask.to(device)
