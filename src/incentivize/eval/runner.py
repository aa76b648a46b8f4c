"""Evaluate a model on a task: greedy accuracy, unbiased pass@k, maj@k, lengths, parse rate.

The greedy pass decodes each problem once at temperature 0; the sampled pass draws `samples`
completions per problem at `temperature`. Every completion is verified by the task and, when given,
scored by user reward functions (a function that fails on some samples loses only those samples).
With verifiers and selectors, every sampled completion is also scored once by each verifier, and
each selector (majority vote, best-of-N, weighted or top-k voting) picks one answer per problem
among the same samples, at N = 1, 2, 4, ... samples (`incentivize.inference.selection`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel, Field

from incentivize.eval.metrics import auroc, maj_at_k, mean_pass_at_k
from incentivize.inference.selection import Problem, Selector, plot_sweep, sweep
from incentivize.rewards import call_reward_function, reward_name
from incentivize.rollout import SamplingParams, generate
from incentivize.rollout.engine import prompt_seeds
from incentivize.tasks import Example, Task, render_prompt, reward_columns


class EvalSettings(BaseModel):
    model_config = {"extra": "forbid"}

    samples: int = Field(default=8, ge=0, description="sampled completions per problem (0: greedy only)")
    temperature: float = Field(default=0.7, gt=0.0, description="temperature of the sampled pass")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=64, ge=1, description="sequences decoded together")
    seed: int = 0


@dataclass
class SampleRecord:
    example_id: str
    mode: str  # "greedy" or "sample"
    index: int  # sample number within its problem
    prompt: str
    completion: str
    extracted: str | None
    gold: str
    correct: bool
    finish_reason: str
    num_tokens: int
    rewards: dict[str, float | None] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # verifier name -> its score (sampled pass only)


class Scorer(Protocol):
    """What a verifier offers (`incentivize.rewards.reward_model.Verifier`, `incentivize.rewards.judge.JudgeVerifier`):
    one score per completion, higher = better; prompts are the rendered prompt texts of `SampleRecord.prompt`,
    questions the problems' own text."""

    def score(self, prompts: list[str], completions: list[str], *, questions: list[str]) -> list[float]: ...


SWEEP_TRIALS = 200  # random subsets per problem and N in the selection sweep (all, when fewer exist)


@dataclass
class EvalReport:
    metrics: dict[str, Any]
    records: list[SampleRecord]
    reward_errors: dict[str, list[str]]  # reward name -> error texts, one per failed sample
    sweep: dict[str, dict[int, float]] | None = None  # selector -> N -> accuracy (with selectors)

    def write(self, output: str | Path, settings: dict[str, Any]) -> None:
        """`results.json` (metrics and settings) and `samples.jsonl` (every completion)."""
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        with (output / "samples.jsonl").open("w", encoding="utf-8") as handle:
            for record in self.records:
                handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        errors = {name: {"count": len(texts), "first": texts[0]} for name, texts in self.reward_errors.items() if texts}
        results: dict[str, Any] = {"metrics": self.metrics, "settings": settings, "reward_errors": errors}
        if self.sweep is not None:
            results["sweep"] = self.sweep
            sweep_json = {"accuracy": self.sweep, "trials": SWEEP_TRIALS, "seed": settings.get("seed")}
            (output / "sweep.json").write_text(json.dumps(sweep_json, indent=2) + "\n", encoding="utf-8")
            plot_sweep(self.sweep, output / "sweep.svg", title=f"accuracy vs samples ({self.metrics['problems']} problems)")
        (output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    settings: EvalSettings,
    *,
    reward_functions: Sequence[Callable[..., Any]] = (),
    verifiers: Mapping[str, Scorer] | None = None,
    selectors: Sequence[Selector] = (),
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Run the greedy and sampled passes over `examples`; `progress(n)` gets completed sequences
    (generated, then scored by each verifier).

    `verifiers` (name -> scorer) score every sampled completion once, into `SampleRecord.scores`;
    `selectors` read those scores by name. With selectors, majority voting is always among them,
    the metrics gain `select/<name>` (accuracy with all `samples` samples) and the report a sweep
    table over N (see `incentivize.inference.selection.sweep`).
    """
    verifiers = dict(verifiers or {})
    if selectors:
        if settings.samples < 1:
            raise ValueError("selectors choose among sampled completions: they need samples >= 1")
        unknown = sorted({s.verifier for s in selectors if s.verifier is not None} - set(verifiers))
        if unknown:
            raise ValueError(f"selectors need scores from verifiers {unknown}, not given")
        if not any(s.method == "majority" for s in selectors):
            selectors = [Selector("majority"), *selectors]
    prompts = [render_prompt(tokenizer, task.messages(e)) for e in examples]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    records = decode_prompts(model, tokenizer, task, examples, prompts, greedy, "greedy", settings.batch_size, progress)
    if settings.samples > 0:
        sampled = SamplingParams(
            n=settings.samples,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
        )
        records += decode_prompts(model, tokenizer, task, examples, prompts, sampled, "sample", settings.batch_size, progress)
        questions = {e.id: e.question for e in examples}
        _score_with_verifiers([r for r in records if r.mode == "sample"], verifiers, questions, settings.batch_size,
                              progress)
    reward_errors = _score_rewards(records, examples, reward_functions)
    metrics = _metrics(records, examples, settings.samples)
    table = None
    if selectors:
        table = _selection_sweep(records, examples, selectors, settings.seed)
        for selector in selectors:
            metrics[f"select/{selector.name}"] = table[selector.name][settings.samples]
    return EvalReport(metrics, records, reward_errors, table)


def decode_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    prompts: list[list[int]],
    params: SamplingParams,
    mode: str,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> list[SampleRecord]:
    """`params.n` completions of each of `prompts` (token ids; the i-th asks `examples[i]`), each verified by the
    task, in prompt order. Each prompt has its own seed, so the results do not depend on `batch_size`."""
    # Batches of similar prompt length waste little on padding; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_batch = max(1, batch_size // params.n)
    by_example: dict[int, list[SampleRecord]] = {}
    eos = eos_ids(model, tokenizer)
    seeds = prompt_seeds(params.seed, len(prompts))  # each problem its own: results do not depend on batch_size
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        rollouts = generate(
            model, [prompts[i] for i in chunk], params, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
            decode=tokenizer.decode, seeds=[seeds[i] for i in chunk],
        )
        completions = rollouts.completion_token_lists()
        for row, ids in enumerate(completions):
            i = chunk[row // params.n]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            verdict = task.verify(examples[i], text)
            by_example.setdefault(i, []).append(
                SampleRecord(
                    example_id=examples[i].id, mode=mode, index=row % params.n,
                    prompt=tokenizer.decode(prompts[i]), completion=text,
                    extracted=verdict.extracted, gold=examples[i].answer, correct=verdict.correct,
                    finish_reason=rollouts.finish_reasons[row], num_tokens=len(ids),
                )
            )
        if progress is not None:
            progress(len(completions))
    return [record for i in range(len(prompts)) for record in by_example[i]]


def sample_completions(
    model: torch.nn.Module, tokenizer: Any, task: Task, examples: Sequence[Example], params: SamplingParams,
    batch_size: int = 64, progress: Callable[[int], None] | None = None,
) -> list[SampleRecord]:
    """`params.n` verified completions per example, in example order (reward-model training data)."""
    prompts = [render_prompt(tokenizer, task.messages(e)) for e in examples]
    return decode_prompts(model, tokenizer, task, examples, prompts, params, "sample", batch_size, progress)


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus whatever the model's generation config also stops on."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _score_with_verifiers(
    records: list[SampleRecord], verifiers: Mapping[str, Scorer], questions: Mapping[str, str], batch_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Each verifier scores each record once, in chunks of `batch_size`."""
    for name, verifier in verifiers.items():
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            scores = verifier.score([r.prompt for r in chunk], [r.completion for r in chunk],
                                    questions=[questions[r.example_id] for r in chunk])
            if len(scores) != len(chunk):
                raise ValueError(f"verifier {name} gave {len(scores)} scores for {len(chunk)} completions")
            for record, value in zip(chunk, scores):
                if not math.isfinite(value):
                    raise ValueError(f"verifier {name} gave the score {value} (a finite number was expected)")
                record.scores[name] = float(value)
            if progress is not None:
                progress(len(chunk))


def _selection_sweep(
    records: list[SampleRecord], examples: Sequence[Example], selectors: Sequence[Selector], seed: int
) -> dict[str, dict[int, float]]:
    per_problem: dict[str, list[SampleRecord]] = {}
    for r in records:
        if r.mode == "sample":
            per_problem.setdefault(r.example_id, []).append(r)
    problems = []
    for example in examples:
        group = sorted(per_problem[example.id], key=lambda r: r.index)
        names = {name for r in group for name in r.scores}
        scores = {name: [r.scores[name] for r in group] for name in names}
        problems.append(Problem([r.extracted for r in group], [r.correct for r in group], scores))
    return sweep(problems, selectors, trials=SWEEP_TRIALS, seed=seed)


def _score_rewards(
    records: list[SampleRecord], examples: Sequence[Example], reward_functions: Sequence[Callable[..., Any]]
) -> dict[str, list[str]]:
    by_id = {e.id: e for e in examples}
    errors: dict[str, list[str]] = {}
    for fn in reward_functions:
        name = reward_name(fn)
        columns = reward_columns([by_id[r.example_id] for r in records])
        call = call_reward_function(fn, [r.prompt for r in records], [r.completion for r in records], columns)
        for record, value in zip(records, call.values):
            record.rewards[name] = value
        errors[name] = [e for e in call.errors if e is not None]
    return errors


def _metrics(records: list[SampleRecord], examples: Sequence[Example], samples: int) -> dict[str, Any]:
    greedy = [r for r in records if r.mode == "greedy"]
    sampled = [r for r in records if r.mode == "sample"]
    metrics: dict[str, Any] = {
        "problems": len(examples),
        "greedy_accuracy": _mean([r.correct for r in greedy]),
        "greedy_parsed": _mean([r.extracted is not None for r in greedy]),
        "greedy_mean_length": _mean([r.num_tokens for r in greedy]),
    }
    if sampled:
        per_problem: dict[str, list[SampleRecord]] = {}
        for r in sampled:
            per_problem.setdefault(r.example_id, []).append(r)
        groups = [per_problem[e.id] for e in examples]
        counts = [(len(g), sum(r.correct for r in g)) for g in groups]
        for k in _k_values(samples):
            metrics[f"pass@{k}"] = mean_pass_at_k(counts, k)
        metrics[f"maj@{samples}"] = maj_at_k([[r.extracted for r in g] for g in groups], [e.answer for e in examples], samples)
        metrics["sample_parsed"] = _mean([r.extracted is not None for r in sampled])
        metrics["sample_mean_length"] = _mean([r.num_tokens for r in sampled])
        for name in sorted({n for r in sampled for n in r.scores}):  # how well each verifier tells right from wrong
            metrics[f"auroc/{name}"] = auroc([r.scores[name] for r in sampled], [r.correct for r in sampled])
    for name in sorted({n for r in records for n in r.rewards}):
        values = [v for r in records if (v := r.rewards.get(name)) is not None]
        metrics[f"reward/{name}"] = _mean(values) if values else None
    return metrics


def _k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    return sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})


def _mean(values: Sequence[float | bool | int]) -> float:
    return float(sum(values)) / len(values) if values else 0.0
