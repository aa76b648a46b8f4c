"""Self-correction: a second attempt after the model reads its first (SCoRe, Kumar et al. 2024, section 3).

Two-turn episodes of the `SelfCorrection` environment (`incentivize.tasks.environments`): turn 1 is the task's
prompt; turn 2 continues the conversation after the model's first answer with an instruction to find and fix a
mistake, with no word on whether the first answer was right. Both attempts are checked by the task's verifier.
The metrics are the paper's:

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

from incentivize.eval.runner import EvalSettings, SampleRecord, eos_ids
from incentivize.rollout import SamplingParams
from incentivize.rollout.engine import prompt_seeds
from incentivize.rollout.episodes import Episodes, episode_seeds, run_episodes, turn_separator
from incentivize.tasks import Example, Task
from incentivize.atomic import write_text
from incentivize.tasks.environments import CORRECTION_INSTRUCTION, SelfCorrection, correction_conversation


@dataclass
class Attempts:
    """One problem's two attempts (`index`: which sampled first attempt, 0 when greedy)."""

    example_id: str
    index: int
    first: SampleRecord
    second: SampleRecord


@dataclass
class SelfCorrectionReport:
    """The metrics, every attempt pair, and the correction traces: prompt-completion rows (the conversation up
    to the instruction, then the second attempt) of the pairs that went from wrong to right, the data of SFT on
    self-generated corrections (STaR-style; `incentivize train sft --set data=...` reads them)."""

    metrics: dict[str, Any]
    attempts: list[Attempts]
    traces: list[dict[str, Any]]

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

    def write_traces(self, path: str | Path) -> None:
        write_text(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.traces))


def _attempt_row(record: SampleRecord) -> dict[str, Any]:
    row = asdict(record)
    for key in ("example_id", "mode", "index", "gold", "rewards", "scores"):
        row.pop(key)
    return row


def self_correct(model: torch.nn.Module, tokenizer: Any, task: Task, examples: Sequence[Example],
                 settings: EvalSettings, *, instruction: str = CORRECTION_INSTRUCTION,
                 progress: Callable[[int], None] | None = None) -> SelfCorrectionReport:
    """Two attempts at each of `examples` (greedy, or `settings.samples` sampled first attempts each), checked
    by the task; `progress(n)` gets completed attempts (first ones, then second ones)."""
    eos = eos_ids(model, tokenizer)
    turn_separator(tokenizer, instruction, eos)  # a template that cannot hold the conversation stops us now
    n = max(1, settings.samples)
    params = SamplingParams(temperature=settings.temperature if settings.samples else 0.0, top_p=settings.top_p,
                            top_k=settings.top_k, max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    episodes = [e for e in examples for _ in range(n)]
    seeds = episode_seeds(prompt_seeds(settings.seed, len(examples)), n)
    result = run_episodes(model, tokenizer, episodes, [SelfCorrection(task, instruction) for _ in episodes],
                          params, 2, eos_token_ids=eos, seeds=seeds, batch_size=settings.batch_size,
                          progress=progress)
    mode = "sample" if settings.samples else "greedy"
    attempts = [Attempts(e.id, k % n, *_records(tokenizer, task, e, result, k, mode)) for k, e in enumerate(episodes)]
    traces = [{"prompt": correction_conversation(task, e, a.first.completion, instruction),
               "completion": a.second.completion}
              for e, a in zip(episodes, attempts) if not a.first.correct and a.second.correct]
    return SelfCorrectionReport(self_correction_metrics(attempts) | {"problems": len(examples)}, attempts, traces)


def _records(tokenizer: Any, task: Task, example: Example, result: Episodes, k: int,
             mode: str) -> tuple[SampleRecord, SampleRecord]:
    """The two attempts of episode `k`, each with the prompt it was sampled from."""
    rollouts = result.rollouts
    prompt = rollouts.prompt_ids[k][rollouts.prompt_mask[k].bool()].tolist()
    completion = rollouts.completion_ids[k].tolist()
    records = []
    for turn in range(2):
        took_place = turn < len(result.turn_spans[k])  # not when the environment failed on the first attempt
        start, end = result.turn_spans[k][turn] if took_place else (len(completion), len(completion))
        text = result.texts[k][turn] if took_place else ""
        verdict = task.verify(example, text)
        records.append(SampleRecord(
            example_id=example.id, mode=mode, index=0, prompt=str(tokenizer.decode(prompt + completion[:start])),
            completion=text, extracted=verdict.extracted, gold=example.answer, correct=verdict.correct,
            finish_reason=result.turn_reasons[k][turn] if took_place else "none", num_tokens=end - start,
        ))
    return records[0], records[1]


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
