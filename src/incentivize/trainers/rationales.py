"""LaTRO's samples (`incentivize.algorithms.latro`): rationales that stop at the answer marker, each followed by the
gold answer, and the policy's log-likelihood of that answer given the rationale.

A rationale is sampled by the rollout engine with the marker as a stop string. What follows it is the marker (when
the rationale ended without it: at its end-of-turn token, which is dropped, or at the length limit) and then
" <gold answer>", as the tasks' answer line writes it. The rationale keeps its sampled tokens and log-probs; the
answer's tokens carry the log-probs of one forward pass of the policy (at `temperature`) and are marked in
`answer_mask`. The marker added after a rationale that lacked it counts as neither (mask 0): it was not sampled and
it is not the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from incentivize.errors import IncentivizeError
from incentivize.rollout import Rollouts, SamplingParams, generate
from incentivize.trainers.policy import Batch, token_logprobs


@dataclass
class Rationales:
    """B rationales with the gold answer after each.

    rollouts:     prompt, rationale and answer tokens; mask 1 on the rationale's sampled tokens and the answer's
    answer_mask:  (B, T) 1 on the gold answer's tokens
    truncated:    (B,) bool, the rationale reached the length limit before the marker
    texts:        the rationales as text (without what was appended)
    """

    rollouts: Rollouts
    answer_mask: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]

    def answer_logprobs(self) -> torch.Tensor:
        """(B, T) the answer tokens' log-probs, 0 elsewhere."""
        return self.rollouts.logprobs * self.answer_mask


def answer_tokens(tokenizer: Any, marker: str, answer: str, with_marker: bool) -> tuple[list[int], int]:
    """The ids appended after a rationale, and how many of the first ones are the marker (not the answer)."""
    answer_ids = list(tokenizer(f" {answer.strip()}", add_special_tokens=False)["input_ids"]) if answer.strip() else []
    if not answer_ids:
        raise IncentivizeError(f"the gold answer {answer!r} tokenizes to nothing: LaTRO needs a non-empty gold answer")
    if not with_marker:
        return answer_ids, 0
    marker_ids = list(tokenizer(f"\n{marker}", add_special_tokens=False)["input_ids"])
    return marker_ids + answer_ids, len(marker_ids)


def sample_rationales(policy: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], answers: Sequence[str],
                      params: SamplingParams, marker: str, seeds: Sequence[int] | None = None,
                      micro_batch_size: int = 8) -> Rationales:
    """`params.n` rationales per prompt (up to `marker`), each followed by its prompt's gold answer in `answers`,
    with the answer's log-probs from the policy at `params.temperature` (1 for greedy rationales)."""
    eos = tokenizer.eos_token_id
    stopped = generate(policy, prompts, params.model_copy(update={"stop": [marker]}), eos_token_ids=[eos],
                       pad_token_id=tokenizer.pad_token_id, decode=tokenizer.decode, seeds=seeds)
    rows, logps, masks, answer_spans = [], [], [], []
    token_lists = stopped.completion_token_lists()
    for row, (ids, reason) in enumerate(zip(token_lists, stopped.finish_reasons)):
        sampled = ids[:-1] if reason == "eos" else ids  # the end of turn would come before the answer
        extra, marker_count = answer_tokens(tokenizer, marker, answers[row // params.n], with_marker=reason != "stop")
        rows.append(sampled + extra)
        logps.append(stopped.logprobs[row, : len(sampled)].tolist() + [0.0] * len(extra))
        masks.append([1] * len(sampled) + [0] * marker_count + [1] * (len(extra) - marker_count))
        answer_spans.append((len(sampled) + marker_count, len(sampled) + len(extra)))
    prompt_lists = [p[m.bool()].tolist() for p, m in zip(stopped.prompt_ids, stopped.prompt_mask)]
    rollouts = Rollouts.from_token_lists(prompt_lists, rows, logps, masks, stopped.finish_reasons,
                                         stopped.pad_token_id, stopped.prompt_index.tolist())
    answer_mask = torch.zeros_like(rollouts.completion_mask)
    for row, (start, end) in enumerate(answer_spans):
        answer_mask[row, start:end] = 1
    temperature = params.temperature if params.temperature > 0 else 1.0
    batch = Batch.from_rollouts(rollouts)
    with torch.no_grad():
        logp = torch.cat([token_logprobs(policy, batch.rows(slice(start, start + micro_batch_size)), temperature,
                                         grad=False)[0] for start in range(0, len(rollouts), micro_batch_size)])
    rollouts.logprobs = torch.where(answer_mask.bool(), logp, rollouts.logprobs)
    texts = [str(tokenizer.decode(ids[:-1] if r == "eos" else ids, skip_special_tokens=True))
             for ids, r in zip(token_lists, stopped.finish_reasons)]
    truncated = torch.tensor([r == "length" for r in stopped.finish_reasons])
    return Rationales(rollouts, answer_mask, truncated, texts)
