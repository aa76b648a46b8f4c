"""Self-correction: a second attempt after the model reads its first (SCoRe, Kumar et al. 2024, section 3).

Turn 1 is the task's prompt; turn 2 is the same conversation with the model's first answer as the assistant's
turn and an instruction to find and fix a mistake, with no word on whether the first answer was right. Both
attempts are checked by the task's verifier. The metrics are the paper's:

- `accuracy@t1`, `accuracy@t2` and `delta` = accuracy@t2 - accuracy@t1;
- `delta_i_to_c`: the share of attempts wrong at turn 1 and right at turn 2, `delta_c_to_i` the reverse
  (delta = delta_i_to_c - delta_c_to_i);
- `unchanged`: the share of second attempts identical to the first (after stripping whitespace), and
  `similarity`, the mean `difflib` ratio of the two (1: no edit); a model that learned to make no edits
  shows here (SCoRe's collapse detector).

Evaluation is greedy by default (the paper's, T = 0); with `samples` N each problem gets N sampled first
attempts at `temperature`, each followed by one sampled second attempt.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, SampleRecord, decode_prompts
from incentivize.rollout import SamplingParams
from incentivize.tasks import Example, Task, render_prompt

# SCoRe's instruction (Appendix A), its answer-format sentence replaced by one that fits any task
INSTRUCTION = ("There might be an error in the solution above because of lack of understanding of the question. "
               "Please correct the error, if any, and rewrite the solution. End with the final answer in the form "
               "the question asked for.")


def correction_messages(task: Task, example: Example, first_attempt: str,
                        instruction: str = INSTRUCTION) -> list[dict[str, str]]:
    """The conversation of the second turn: the task's prompt, the first attempt, the instruction."""
    return [*task.messages(example), {"role": "assistant", "content": first_attempt},
            {"role": "user", "content": instruction}]


def check_multi_turn(tokenizer: Any, model_name: str) -> None:
    """Refuse a chat template that does not keep the earlier turns of a conversation (some keep only the last
    user message): the second attempt would not see the first."""
    marker = "first-attempt-4f1c"
    ids = render_prompt(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker},
                                    {"role": "user", "content": "again"}])
    if marker not in tokenizer.decode(ids):
        raise IncentivizeError(f"the chat template of {model_name} drops the earlier turns of a conversation, so a "
                               "second attempt cannot read the first; use a model whose template holds several turns")


@dataclass
class Attempts:
    """One problem's two attempts (`index`: which sampled first attempt, 0 when greedy)."""

    example_id: str
    index: int
    first: SampleRecord
    second: SampleRecord


@dataclass
class SelfCorrectionReport:
    metrics: dict[str, Any]
    attempts: list[Attempts]

    def write(self, output: str | Path, settings: dict[str, Any]) -> None:
        """`results.json` (metrics and settings) and `samples.jsonl`, one line per problem and attempt pair."""
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        with (output / "samples.jsonl").open("w", encoding="utf-8") as handle:
            for pair in self.attempts:
                row = {"example_id": pair.example_id, "index": pair.index, "gold": pair.first.gold,
                       "first": _attempt_row(pair.first), "second": _attempt_row(pair.second)}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        results = {"metrics": self.metrics, "settings": settings}
        (output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _attempt_row(record: SampleRecord) -> dict[str, Any]:
    row = asdict(record)
    for key in ("example_id", "mode", "index", "gold", "rewards", "scores"):
        row.pop(key)
    return row


def self_correct(model: torch.nn.Module, tokenizer: Any, task: Task, examples: Sequence[Example],
                 settings: EvalSettings, *, instruction: str = INSTRUCTION,
                 progress: Callable[[int], None] | None = None) -> SelfCorrectionReport:
    """Two attempts at each of `examples` (greedy, or `settings.samples` sampled first attempts each), checked
    by the task; `progress(n)` gets completed sequences (first attempts, then second ones)."""
    n = max(1, settings.samples)
    temperature = settings.temperature if settings.samples else 0.0
    params = SamplingParams(n=n, temperature=temperature, top_p=settings.top_p, top_k=settings.top_k,
                            max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    mode = "sample" if settings.samples else "greedy"
    prompts = [render_prompt(tokenizer, task.messages(e)) for e in examples]
    firsts = decode_prompts(model, tokenizer, task, examples, prompts, params, mode, settings.batch_size, progress)
    by_id = {e.id: e for e in examples}
    second_examples = [by_id[r.example_id] for r in firsts]
    second_prompts = [render_prompt(tokenizer, correction_messages(task, by_id[r.example_id], r.completion, instruction))
                      for r in firsts]
    # each second attempt its own seed, distinct from the first attempts' (a different stream of the same seed)
    second_params = params.model_copy(update={"n": 1, "seed": settings.seed * 1_000_003 + 1})
    seconds = decode_prompts(model, tokenizer, task, second_examples, second_prompts, second_params, mode,
                             settings.batch_size, progress)
    attempts = [Attempts(f.example_id, f.index, f, s) for f, s in zip(firsts, seconds)]
    return SelfCorrectionReport(self_correction_metrics(attempts) | {"problems": len(examples)}, attempts)


def self_correction_metrics(attempts: Sequence[Attempts]) -> dict[str, float]:
    """SCoRe's five quantities and the two edit measures, over attempt pairs."""
    if not attempts:
        raise ValueError("no attempts to measure")
    count = len(attempts)
    t1 = sum(a.first.correct for a in attempts) / count
    t2 = sum(a.second.correct for a in attempts) / count
    return {
        "accuracy@t1": t1,
        "accuracy@t2": t2,
        "delta": t2 - t1,
        "delta_i_to_c": sum(not a.first.correct and a.second.correct for a in attempts) / count,
        "delta_c_to_i": sum(a.first.correct and not a.second.correct for a in attempts) / count,
        "unchanged": sum(a.first.completion.strip() == a.second.completion.strip() for a in attempts) / count,
        "similarity": sum(difflib.SequenceMatcher(None, a.first.completion, a.second.completion).ratio()
                          for a in attempts) / count,
    }
