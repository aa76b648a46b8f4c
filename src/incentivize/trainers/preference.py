"""Preference optimization: DPO and its variants (IPO, cDPO, robust, hinge), SimPO and KTO, on pairs from a
file or on pairs the policy samples itself and a verifier labels (Iterative RPO).

A pair is a prompt (rendered with the chat template) and two answers. Each answer's log-probability is
summed over its own tokens (the prompt is context, not a target). The reference log-probabilities are
computed once, before the first update, by the model as it starts (with LoRA: the base model, adapters
off), and kept with the pair, so no second model sits in memory while training. The losses are
`incentivize.algorithms.preference`. Metrics are TRL's: `rewards/chosen`, `rewards/rejected` (the
implicit rewards beta * (log pi - log pi_ref)), `rewards/margins`, `rewards/accuracies`,
`logps/chosen`, `logps/rejected`.

With `pairs: self`, each of `rounds` rounds samples `samples_per_problem` completions for
`problems_per_round` training problems from the current policy, pairs correct completions with
incorrect ones by the task's verifier (problems without both are skipped and counted), writes them to
`pairs-round-N.jsonl` (with their reference log-probabilities: the policy at the round's start is the
reference, as in Iterative RPO), and trains on them for ceil(problems_per_round * pairs_per_problem /
batch_size) * epochs steps (cycling over the pairs it found). A resumed run reads the round's pairs back
rather than sampling again.

KTO's reference point z0 is estimated on mismatched pairs (each prompt with the previous row's answer,
fixed when the data is read), so its reference log-probabilities are computed once as well.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from incentivize.algorithms.logprobs import selective_log_softmax
from incentivize.algorithms.preference import (
    PREFERENCE_LOSSES, implicit_rewards, kto_loss, kto_reference_point, nll_loss,
)
from incentivize.checkpoint import save_model
from incentivize.config import PreferenceConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, SampleRecord, evaluate, sample_completions
from incentivize.models import load
from incentivize.models.lora import with_lora
from incentivize.models.speed import describe_paths, enable_training_paths
from incentivize.rewards.judge import Judge, load_judge
from incentivize.rollout import SamplingParams
from incentivize.tasks import Example, load_task, render_prompt
from incentivize.tasks.encoding import Encoded, encode_solution, pad
from incentivize.tasks.preference_data import Messages, load_judged_answers, load_preference_pairs
from incentivize.trainers.loop import SupervisedTrainer
from incentivize.trainers.run import RunContext, RunResult, StepOutput, counter, run

PAIR_FIELDS = ("prompt", "chosen", "rejected", "ref_chosen", "ref_rejected")


def train_preference(config: PreferenceConfig, *, on_event: Callable[[str], None] | None = None,
                     on_progress: Callable[..., None] | None = None, resume: bool = False) -> RunResult:
    """Train `config`'s preference optimization; the model goes to `output_dir/final`."""
    source = "self" if config.pairs == "self" else Path(config.data or "pairs").stem
    return run(PreferenceTrainer(config), config, name=f"{config.algorithm}-{source}", resume=resume,
               on_event=on_event, on_progress=on_progress)


@dataclass
class Item:
    """One training example: a pair (chosen, rejected), or for KTO an answer and its mismatched twin."""

    prompt: str  # the rendered prompt, for the validation split and the pairs files
    first: Encoded  # chosen (pairs) or the answer (kto)
    second: Encoded  # rejected (pairs) or the prompt with the previous row's answer (kto)
    desirable: bool = True  # kto
    ref_first: float = 0.0
    ref_second: float = 0.0


class PreferenceTrainer(SupervisedTrainer):
    config: PreferenceConfig

    def __init__(self, config: PreferenceConfig) -> None:
        self.config = config
        self.epochs = config.epochs
        self.items: list[Item] = []
        self.validation: list[Item] = []
        self.kto = config.loss_type == "kto"
        self.loss = None if self.kto else PREFERENCE_LOSSES.get(config.loss_type)
        self.round_items: dict[int, list[Item]] = {}
        self.judge: Judge | None = None
        self.truncated = 0  # answers whose prompt was cut to fit max_length, in the file being read

    # ------------------------------------------------------------------ setup

    def setup(self, context: RunContext) -> None:
        config, self.context, self.say = self.config, context, context.say
        self.model, self.tokenizer = load(config.model)
        if config.use_peft:
            self.model = with_lora(self.model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                   target_modules=config.lora_target_modules)
        self.say(f"speed paths: {describe_paths(enable_training_paths(self.model, linear=config.linear_kernel))}")
        self.pad_id = self.tokenizer.pad_token_id or 0
        if config.labeller == "judge":
            assert config.judge is not None
            self.judge = load_judge(config.judge, **config.judge_options())
        self.task = load_task(config.task, **config.task_options) if config.pairs == "self" or config.eval_limit else None
        self.held_out = self.task.examples("test", config.eval_limit) if self.task and config.eval_limit else []
        if config.pairs == "self":
            assert self.task is not None
            self.problems = self.task.examples("train", None)
            self.items, self.validation = [], []  # each round samples its own (no validation pairs)
            self.steps_per_round = math.ceil(config.problems_per_round * config.pairs_per_problem / config.batch_size)
            self.steps_per_round *= config.epochs
            self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
            self.total_steps = self.steps_per_round * config.rounds
        else:
            items = self._read(Path(config.data or ""))
            self.items, self.validation = _split(items, config.validation_share)
            if not self.items:
                raise IncentivizeError("no training pairs left after the validation split; lower validation_share")
            self.say(f"{len(self.items)} training and {len(self.validation)} validation "
                     f"{'answers' if self.kto else 'pairs'}; computing their reference log-probabilities")
            self._reference(self.items + self.validation)
            self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])

    def _read(self, path: Path) -> list[Item]:
        self.truncated = 0
        if self.kto:
            rows = load_judged_answers(path)
            items = [Item(self._text(r.prompt), self._encode(r.prompt, r.completion),
                          self._encode(r.prompt, rows[i - 1].completion), r.desirable) for i, r in enumerate(rows)]
        else:
            pairs, identical = load_preference_pairs(path)
            if identical:
                self.say(f"warning: {path}: dropped {identical} pairs whose chosen and rejected answers are the same")
            items = [Item(self._text(p.prompt), self._encode(p.prompt, p.chosen), self._encode(p.prompt, p.rejected))
                     for p in pairs]
        self._warn_truncated(path)
        return items

    def _encode(self, prompt: Messages, answer: str) -> Encoded:
        """An answer with its prompt, at most `max_length` tokens: the answer kept whole where it fits, the prompt
        cut from its start (counted in `self.truncated`)."""
        length = self.config.max_length
        full = encode_solution(self.tokenizer, prompt, answer, 10**9)
        if len(full.ids) <= length:
            return full
        self.truncated += 1
        keep = max(1, length - (len(full.ids) - full.completion_start))
        start = full.completion_start - keep
        return Encoded(full.ids[start : start + length], keep, [])

    def _warn_truncated(self, path: Path) -> None:
        if self.truncated:
            self.say(f"warning: {path}: {self.truncated} answers with their prompt are longer than max_length "
                     f"({self.config.max_length}): their prompts were cut from the start")

    def _text(self, prompt: Messages) -> str:
        return str(self.tokenizer.decode(render_prompt(self.tokenizer, prompt)))

    def _reference(self, items: list[Item]) -> None:
        """The starting model's log-probabilities of every item's answers (LoRA: with its adapters off)."""
        with _adapters_off(self.model), torch.no_grad():
            for start in range(0, len(items), self.config.micro_batch_size):
                chunk = items[start : start + self.config.micro_batch_size]
                logps, _ = self._logps([i.first for i in chunk] + [i.second for i in chunk])
                for row, item in enumerate(chunk):
                    item.ref_first, item.ref_second = float(logps[row]), float(logps[len(chunk) + row])

    # ------------------------------------------------------------------ steps

    def step(self, step: int) -> StepOutput:
        if self.config.pairs == "self":
            round_ = (step - 1) // self.steps_per_round + 1
            if round_ not in self.round_items:
                self.round_items[round_] = self._round_pairs(round_)
            self.items = self.round_items[round_]
            step = (step - 1) % self.steps_per_round + 1
            output = super().step(step)
            output.metrics["round"] = round_
            return output
        return super().step(step)

    def losses(self, batch: list[Item]) -> tuple[float, dict[str, float]]:
        self.model.train()
        totals: dict[str, float] = {}
        for start in range(0, len(batch), self.config.micro_batch_size):
            micro = batch[start : start + self.config.micro_batch_size]
            loss, stats = self._micro_loss(micro)
            (loss.sum() / len(batch)).backward()  # the batch's mean, whatever the micro-batches
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + float(value.sum()) / _count(batch, name)
        return totals["loss"], totals

    def _micro_loss(self, micro: list[Item]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config, n = self.config, len(micro)
        logps, lengths = self._logps([i.first for i in micro] + [i.second for i in micro])
        first, second = logps[:n], logps[n:]
        ref_first = torch.tensor([i.ref_first for i in micro])
        ref_second = torch.tensor([i.ref_second for i in micro])
        if self.kto:
            desirable = torch.tensor([i.desirable for i in micro])
            z0 = kto_reference_point(second, ref_second)
            loss = kto_loss(first, ref_first, desirable, config.beta, kl_estimate=z0,
                            desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)
            reward = config.beta * (first - ref_first).detach()
            return loss, {"loss": loss.detach(), "rewards/desirable": reward * desirable,
                          "rewards/undesirable": reward * ~desirable, "kl_estimate": z0.expand(n)}
        assert self.loss is not None
        loss = self.loss(first, second, ref_first, ref_second, config.beta, chosen_lengths=lengths[:n],
                         rejected_lengths=lengths[n:], **_loss_params(config))
        stats = {"loss": loss.detach()}
        if config.rpo_alpha:
            nll = nll_loss(first, lengths[:n])
            loss = loss + config.rpo_alpha * nll
            stats |= {"loss": loss.detach(), "nll": nll.detach()}
        chosen, rejected = implicit_rewards(first, second, ref_first, ref_second, config.beta)
        return loss, stats | {"rewards/chosen": chosen, "rewards/rejected": rejected,
                              "rewards/margins": chosen - rejected, "rewards/accuracies": (chosen > rejected).float(),
                              "logps/chosen": first.detach(), "logps/rejected": second.detach()}

    def _logps(self, encoded: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's log-probability summed over its answer tokens, and the answer's length."""
        ids, attention = pad(encoded, self.pad_id, next(self.model.parameters()).device)
        logits = self.model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # position p predicts p + 1
        token_logps = selective_log_softmax(logits, ids[:, 1:], chunk_size=1)
        positions = torch.arange(1, ids.shape[1])[None]
        starts = torch.tensor([e.completion_start for e in encoded])[:, None]
        ends = torch.tensor([len(e.ids) for e in encoded])[:, None]
        mask = ((positions >= starts) & (positions < ends)).float()
        return (token_logps * mask).sum(dim=1), mask.sum(dim=1)

    # ------------------------------------------------------------------ on-policy pairs

    def _round_pairs(self, round_: int) -> list[Item]:
        """Round `round_`'s pairs: read back from its file after a resume, else sampled, verified and paired."""
        path = self.context.run_dir / f"pairs-round-{round_}.jsonl"
        self.truncated = 0
        if path.exists():
            items = [self._item(row) for row in _read_pairs(path)]
            self._warn_truncated(path)
            return items
        config = self.config
        first = ((round_ - 1) * config.problems_per_round) % len(self.problems)
        problems = [self.problems[(first + i) % len(self.problems)] for i in range(config.problems_per_round)]
        self.say(f"round {round_}: sampling {config.samples_per_problem} completions for each of {len(problems)} "
                 "problems from the current policy")
        self.model.eval()
        params = SamplingParams(n=config.samples_per_problem, temperature=config.temperature,
                                max_new_tokens=config.max_completion_length, seed=config.seed * 1_000_003 + round_)
        assert self.task is not None
        records = sample_completions(self.model, self.tokenizer, self.task, problems, params,
                                     progress=counter(self.context.progress, "sample", len(problems) * params.n))
        by_problem: dict[str, list[SampleRecord]] = {e.id: [] for e in problems}
        for record in records:  # one pass: records come in problem order, n per problem
            by_problem[record.example_id].append(record)
        pair = self._pairs_by_judge if self.judge is not None else _pairs_by_verifier
        rows, skipped = pair([(e, self.task.messages(e), by_problem[e.id]) for e in problems], config.pairs_per_problem)
        if not rows:
            what = ("the judge preferred no completion with judge_confidence" if self.judge is not None else
                    "no problem had both a correct and an incorrect completion")
            raise NoPairs(f"round {round_}: {what} among {config.samples_per_problem} samples; raise "
                          "samples_per_problem or temperature, or use a task nearer the model's level")
        items = [self._item(row) for row in rows]
        self._warn_truncated(path)
        self._reference(items)  # the policy at the round's start is the round's reference
        for item, row in zip(items, rows):
            row["ref_chosen"], row["ref_rejected"] = item.ref_first, item.ref_second
        _write_pairs(path, rows)
        why = "under two distinct answers or the judge unsure" if self.judge is not None else "all right or all wrong"
        self.say(f"round {round_}: {len(items)} pairs from {len(problems) - skipped} problems ({skipped} skipped: "
                 f"{why}); written to {path}")
        return items

    def _pairs_by_judge(self, problems: list[tuple[Example, Messages, list[SampleRecord]]],
                        per_problem: int) -> tuple[list[dict[str, Any]], int]:
        """Distinct completions of a problem paired off (the i-th with the (i + n/2)-th), each pair judged in both
        orders; a pair is kept, its preferred answer chosen, when the judge is `judge_confidence` sure. Where the
        task's verifier tells the two apart, how often the judge chose the correct one is said."""
        assert self.judge is not None
        candidates = []
        for example, messages, records in problems:
            texts = list(dict.fromkeys(r.completion for r in records))
            verdicts = {r.completion: r.correct for r in records}
            half = len(texts) // 2
            for k in range(min(per_problem, half)):
                a, b = texts[k], texts[k + half]
                candidates.append((example, messages, a, b, verdicts[a], verdicts[b]))
        p = self.judge.compare([c[0].question for c in candidates], [c[2] for c in candidates],
                               [c[3] for c in candidates])
        rows, kept_problems, right, decided = [], set(), 0, 0
        for (example, messages, a, b, a_correct, b_correct), p_a in zip(candidates, p):
            if max(p_a, 1 - p_a) < self.config.judge_confidence:
                continue
            chosen, rejected = (a, b) if p_a >= 0.5 else (b, a)
            rows.append({"prompt": messages, "chosen": chosen, "rejected": rejected, "ref_chosen": 0.0,
                         "ref_rejected": 0.0})
            kept_problems.add(example.id)
            if a_correct != b_correct:
                decided += 1
                right += (p_a >= 0.5) == a_correct
        if decided:
            self.say(f"the judge chose the correct answer in {right} of the {decided} kept pairs the verifier tells "
                     f"apart ({right / decided:.0%})")
        return rows, len(problems) - len(kept_problems)

    def _item(self, row: dict[str, Any]) -> Item:
        item = Item(self._text(row["prompt"]), self._encode(row["prompt"], row["chosen"]),
                    self._encode(row["prompt"], row["rejected"]))
        item.ref_first, item.ref_second = float(row.get("ref_chosen", 0.0)), float(row.get("ref_rejected", 0.0))
        return item

    # ------------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        metrics: dict[str, Any] = {}
        self.model.eval()
        if self.validation:
            with torch.no_grad():
                totals: dict[str, float] = {}
                for start in range(0, len(self.validation), self.config.micro_batch_size):
                    _, stats = self._micro_loss(self.validation[start : start + self.config.micro_batch_size])
                    for name, value in stats.items():
                        totals[name] = totals.get(name, 0.0) + float(value.sum()) / _count(self.validation, name)
            metrics |= {f"validation/{k}": v for k, v in totals.items()}
        if self.held_out:
            assert self.task is not None
            self.say(f"evaluating {label} on {len(self.held_out)} held-out problems")
            settings = EvalSettings(samples=0, max_new_tokens=self.config.max_completion_length, seed=self.config.seed)
            report = evaluate(self.model, self.tokenizer, self.task, self.held_out, settings)
            report.write(directory, {"model": self.config.model, "step": label, **settings.model_dump()})
            metrics |= report.metrics
        return metrics or None

    def checkpoint_model(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def save_final(self, directory: Path) -> None:
        save_model(directory, self.model, self.tokenizer)

    def status(self, metrics: Any) -> str:
        accuracy = metrics.get("rewards/accuracies")
        return f"loss {metrics['loss']:.4f}" + (f" acc {accuracy:.2f}" if accuracy is not None else "")


class NoPairs(IncentivizeError):
    """A round of self-sampled pairs found none to train on (the run stops; a recipe may go on without it)."""


def _pairs_by_verifier(problems: list[tuple[Example, Messages, list[SampleRecord]]],
                       per_problem: int) -> tuple[list[dict[str, Any]], int]:
    """Each problem's distinct correct completions paired with its distinct incorrect ones (up to
    `per_problem` pairs); problems whose completions are all right or all wrong are skipped and counted."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for _, messages, records in problems:
        right = list(dict.fromkeys(r.completion for r in records if r.correct))
        wrong = list(dict.fromkeys(r.completion for r in records if not r.correct))
        if not right or not wrong:
            skipped += 1
            continue
        for k in range(min(per_problem, max(len(right), len(wrong)))):
            rows.append({"prompt": messages, "chosen": right[k % len(right)], "rejected": wrong[k % len(wrong)],
                         "ref_chosen": 0.0, "ref_rejected": 0.0})
    return rows, skipped


def _count(items: list[Item], stat: str) -> int:
    """The items a stat averages over: KTO's rewards of desirable (undesirable) answers over those alone, as
    TRL logs them; every other stat over all the items."""
    if stat in ("rewards/desirable", "rewards/undesirable"):
        return max(1, sum(i.desirable == (stat == "rewards/desirable") for i in items))
    return len(items)


def _loss_params(config: PreferenceConfig) -> dict[str, float]:
    """The keys of `config` that its loss takes besides beta."""
    if config.loss_type in ("cdpo", "robust"):
        return {"label_smoothing": config.label_smoothing}
    if config.loss_type == "simpo":
        return {"gamma": config.gamma}
    return {}


class _adapters_off:
    """With LoRA, the base model (the reference); otherwise the model as it is."""

    def __init__(self, model: Any) -> None:
        self.context = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)


def _split(items: list[Item], share: float) -> tuple[list[Item], list[Item]]:
    """Training and validation items, split by a hash of the prompt (a prompt's pairs stay together)."""
    def held_out(item: Item) -> bool:
        return int(hashlib.sha256(item.prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share

    return [i for i in items if not held_out(i)], [i for i in items if held_out(i)]


def _write_pairs(path: Path, rows: list[dict[str, Any]]) -> None:
    from incentivize.atomic import write_text

    write_text(path, "".join(json.dumps({k: row[k] for k in PAIR_FIELDS}, ensure_ascii=False) + "\n" for row in rows))


def _read_pairs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

