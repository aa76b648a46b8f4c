"""One RL step's data, from the rollout engine to the loss: sample groups, score them, and keep them in
one record (`StepData`) that the learner, the metrics and the samples log all read."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from incentivize.algorithms.advantages import append_outcome_step
from incentivize.algorithms.latro import penalize_truncated, self_rewards
from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError
from incentivize.rewards import load_reward_function
from incentivize.rewards.steps import step_end_tokens
from incentivize.rollout import Rollouts, SamplingParams, generate
from incentivize.rollout.engine import prompt_seeds
from incentivize.rollout.episodes import episode_seeds, run_episodes
from incentivize.tasks.environments import episode_rewards, make_environment
from incentivize.tasks import Example, Task, render_prompt
from incentivize.trainers.rationales import sample_rationales
from incentivize.trainers.sampler import PromptSampler
from incentivize.rewards.scoring import Scorer, Scores


@dataclass
class StepData:
    """A step's groups: B = groups * num_generations rows, the rows of a group contiguous.

    rollouts:     token ids, masks and sampling log-probs (`incentivize.rollout.Rollouts`)
    examples:     the problem of each row
    texts:        each row's decoded completion
    scores:       each row's reward (NaN: none, left out of learning), verdict and reward components
    step_scores:  (B, S) a PRM's step rewards, NaN past a row's steps (advantage grpo_process only)
    step_ends:    (B, S) the completion-token index where each step ends
    turn_spans:   multi-turn episodes: per row, the (start, end) completion tokens of each model turn
    answer_mask:  LaTRO: (B, T) 1 on the gold answer's tokens after each rationale (trained by likelihood, not by
                  the policy gradient)
    zero_variance_share: share of the groups first sampled this step whose rewards were all equal
    rounds:       generation rounds it took (dynamic sampling draws again for groups without signal)
    """

    rollouts: Rollouts
    examples: list[Example]
    texts: list[str]
    scores: Scores
    step_scores: torch.Tensor | None = None
    step_ends: torch.Tensor | None = None
    turn_spans: list[list[tuple[int, int]]] | None = None
    answer_mask: torch.Tensor | None = None
    zero_variance_share: float = 0.0
    rounds: int = 1
    generate_seconds: float = 0.0
    score_seconds: float = 0.0

    def select(self, rows: Sequence[int]) -> StepData:
        """These rows, in this order (the step's totals stay as they are)."""
        rollouts = self.rollouts.select(rows)
        return replace(self, rollouts=rollouts, examples=[self.examples[r] for r in rows],
                       texts=[self.texts[r] for r in rows], scores=self.scores.select(rows),
                       turn_spans=None if self.turn_spans is None else [self.turn_spans[r] for r in rows],
                       answer_mask=None if self.answer_mask is None
                       else self.answer_mask[list(rows), : rollouts.completion_ids.shape[1]])

    @staticmethod
    def concat(parts: Sequence[StepData]) -> StepData:
        """The rows of all parts; times summed."""
        return StepData(Rollouts.concat([p.rollouts for p in parts]), [e for p in parts for e in p.examples],
                        [t for p in parts for t in p.texts], Scores.concat([p.scores for p in parts]),
                        turn_spans=None if parts[0].turn_spans is None else [s for p in parts for s in p.turn_spans or []],
                        answer_mask=None if parts[0].answer_mask is None else _padded_cat(
                            [p.answer_mask for p in parts if p.answer_mask is not None]),
                        zero_variance_share=parts[0].zero_variance_share, rounds=len(parts),
                        generate_seconds=sum(p.generate_seconds for p in parts),
                        score_seconds=sum(p.score_seconds for p in parts))

    def __len__(self) -> int:
        return len(self.examples)


def _prompt_ids(cache: dict[int, list[int]], tokenizer: Any, task: Task, examples: list[Example],
                indices: list[int]) -> list[list[int]]:
    """The rendered prompt ids of training problems `indices`, each rendered once per run (kept in `cache`)."""
    for i in indices:
        if i not in cache:
            cache[i] = render_prompt(tokenizer, task.messages(examples[i]))
    return [cache[i] for i in indices]


def _padded_cat(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    width = max(m.shape[1] for m in masks)
    return torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])


def build_scorer(config: RLConfig, task: Task) -> Scorer:
    """The rewards of `config`: the task's verifier, reward functions and reward models, shaping."""
    functions = [load_reward_function(spec, config.judge_options(), config.process_neutral) for spec in config.rewards]
    return Scorer(
        task, functions, config.reward_weights, config.format_reward,
        config.max_completion_length, config.overlong_buffer, config.overlong_penalty,
        timeout_s=config.reward_timeout_s, on_error=config.on_reward_error,
        process=config.advantage == "grpo_process" and config.environment == "none",  # else the turns are the steps
    )


class LocalRollouts:
    """Samples and scores groups in this process: the rollout engine on `policy`, then the scorer."""

    def __init__(self, policy: Any, tokenizer: Any, task: Task, examples: list[Example], scorer: Scorer,
                 prompt_cache: dict[int, list[int]] | None = None) -> None:
        self.policy, self.tokenizer, self.task, self.examples, self.scorer = policy, tokenizer, task, examples, scorer
        self.prompt_cache = {} if prompt_cache is None else prompt_cache  # example index -> rendered prompt ids

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData:
        """`params.n` completions of training problems `indices`, prompt i sampled with `seeds[i]`, scored."""
        tokenizer, group = self.tokenizer, params.n
        prompt_ids = _prompt_ids(self.prompt_cache, tokenizer, self.task, self.examples, indices)
        started = time.perf_counter()
        rollouts = generate(self.policy, prompt_ids, params, seeds=seeds,
                            eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
        generated = time.perf_counter()
        rows = [self.examples[i] for i in indices for _ in range(group)]
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.completion_token_lists()]
        texts_of = {i: tokenizer.decode(self.prompt_cache[i], skip_special_tokens=False) for i in set(indices)}
        prompts = [texts_of[i] for i in indices for _ in range(group)]
        scores = self.scorer(rows, prompts, texts, rollouts.completion_lengths)
        return StepData(rollouts, rows, texts, scores, generate_seconds=generated - started,
                        score_seconds=time.perf_counter() - generated)


class EpisodeRollouts:
    """Samples and scores multi-turn episodes of `config.environment` in this process: `params.n` episodes per
    problem, each from a seed of its own, rewarded by the environment (`config.episode_reward`); an episode whose
    environment failed has no reward (NaN) and its error is counted with the reward faults."""

    def __init__(self, config: RLConfig, policy: Any, tokenizer: Any, task: Task, examples: list[Example]) -> None:
        self.config, self.policy, self.tokenizer, self.task, self.examples = config, policy, tokenizer, task, examples

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData:
        config, tokenizer, n = self.config, self.tokenizer, params.n
        rows = [self.examples[i] for i in indices for _ in range(n)]
        started = time.perf_counter()
        episodes = run_episodes(self.policy, tokenizer, rows, [make_environment(config.environment, self.task)
                                                               for _ in rows],
                                params.model_copy(update={"n": 1}), config.max_turns,
                                eos_token_ids=[tokenizer.eos_token_id], seeds=episode_seeds(seeds, n),
                                timeout_s=config.reward_timeout_s, batch_size=config.generation_batch_size)
        generated = time.perf_counter()
        rollouts = episodes.rollouts
        rollouts.prompt_index = torch.arange(len(indices)).repeat_interleave(n)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.completion_token_lists()]
        verdicts = [self.task.verify(e, turns[-1] if turns else "") for e, turns in zip(rows, episodes.texts)]
        failed = torch.tensor([f is not None for f in episodes.faults])
        rewards = torch.where(failed, torch.nan, episode_rewards(episodes.turn_rewards, config.episode_reward,
                                                                 config.shaping_alpha))
        components: dict[str, list[float | None]] = {
            f"turn_{t + 1}": [None if math.isnan(v) else v for v in episodes.turn_rewards[:, t].tolist()]
            for t in range(config.max_turns)}
        per_turn = None
        if config.episode_reward == "per_turn":  # the turns as the steps of process supervision
            per_turn = [[v for v in row if not math.isnan(v)] for row in episodes.turn_rewards.tolist()]
        scores = Scores(rewards.float(), torch.tensor([v.correct for v in verdicts], dtype=torch.bool), components,
                        errors=[f for f in episodes.faults if f is not None], step_rewards=per_turn,
                        extracted=[v.extracted for v in verdicts])
        return StepData(rollouts, rows, texts, scores, turn_spans=episodes.turn_spans,
                        generate_seconds=generated - started, score_seconds=time.perf_counter() - generated)


class RationaleRollouts:
    """LaTRO's samples in this process (`trainers/rationales.py`): `params.n` rationales per problem, each rewarded by
    the policy's log-likelihood of the gold answer after it (`config.self_reward`), a rationale cut at the length
    limit by `truncated_penalty` times the step's mean. A row counts as correct when every gold answer token has
    probability above 1/2 after it: greedy decoding would write the gold answer."""

    def __init__(self, config: RLConfig, policy: Any, tokenizer: Any, task: Task, examples: list[Example],
                 prompt_cache: dict[int, list[int]]) -> None:
        self.config, self.policy, self.tokenizer, self.task, self.examples = config, policy, tokenizer, task, examples
        self.prompt_cache = prompt_cache

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData:
        config, n = self.config, params.n
        prompts = _prompt_ids(self.prompt_cache, self.tokenizer, self.task, self.examples, indices)
        started = time.perf_counter()
        rationales = sample_rationales(self.policy, self.tokenizer, prompts,
                                       [self.examples[i].answer for i in indices], params, config.answer_marker,
                                       seeds, config.micro_batch_size)
        generated = time.perf_counter()
        answer_logps, mask = rationales.answer_logprobs(), rationales.answer_mask
        own = self_rewards(answer_logps, mask, "mean" if config.self_reward == "mean" else "sum")
        rewards = penalize_truncated(own, rationales.truncated, config.truncated_penalty)
        likely = ((answer_logps > math.log(0.5)) | (mask == 0)).all(dim=1)
        scores = Scores(rewards.float(), likely, {"self_reward": [float(v) for v in own.tolist()]})
        rows = [self.examples[i] for i in indices for _ in range(n)]
        return StepData(rationales.rollouts, rows, rationales.texts, scores, answer_mask=mask,
                        generate_seconds=generated - started, score_seconds=time.perf_counter() - generated)


class RolloutSource(Protocol):
    """Where a step's groups come from: `LocalRollouts`, or rollout workers (`incentivize.distributed`)."""

    def sample(self, indices: list[int], seeds: list[int], params: SamplingParams) -> StepData: ...


def collect(config: RLConfig, models: Any, task: Task, examples: list[Example], sampler: PromptSampler,
            scorer: Scorer, prompt_cache: dict[int, list[int]], step: int, *,
            source: RolloutSource | None = None) -> StepData:
    """Sample and score one step's groups; with dynamic sampling, only groups whose rewards differ.

    The groups come from `source` (rollout workers), or else from this process: `models.sampler` (the policy, or its copy in rollout_dtype) on
    `examples`, scored by `scorer`. Each prompt is sampled with a seed of its own, drawn from the step,
    the round and its position, so the groups are the same however many processes sample them."""
    tokenizer, group = models.tokenizer, config.num_generations
    if source is None and config.environment != "none":
        source = EpisodeRollouts(config, models.sampler, tokenizer, task, examples)
    if source is None and config.self_reward != "none":
        source = RationaleRollouts(config, models.sampler, tokenizer, task, examples, prompt_cache)
    if source is None:
        source = LocalRollouts(models.sampler, tokenizer, task, examples, scorer, prompt_cache)
    parts: list[StepData] = []
    kept_groups, rounds, zero_share = 0, 0, 0.0
    while kept_groups < config.prompts_per_step:
        rounds += 1
        if rounds > config.max_resample_rounds:
            raise IncentivizeError(
                f"step {step}: dynamic sampling found only {kept_groups} of {config.prompts_per_step} groups with "
                f"differing rewards in {config.max_resample_rounds} rounds; raise max_resample_rounds, use an easier "
                "task, or set dynamic_sampling=false"
            )
        indices = sampler.take(config.prompts_per_step - kept_groups)
        params = SamplingParams(n=group, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                max_new_tokens=config.max_completion_length)
        data = source.sample(indices, prompt_seeds(config.seed * 1_000_003 + step * 101 + rounds, len(indices)), params)
        varied = varies(data.scores.rewards.view(-1, group))  # (groups,)
        if rounds == 1:
            zero_share = 1.0 - float(varied.float().mean())
        keep = varied if config.dynamic_sampling and group > 1 else torch.ones_like(varied)
        rows_kept = [g * group + j for g in keep.nonzero().flatten().tolist() for j in range(group)]
        if rows_kept:
            parts.append(data.select(rows_kept))
            kept_groups += len(rows_kept) // group
    data = StepData.concat(parts)
    data.zero_variance_share, data.rounds = zero_share, rounds
    if data.scores.step_rewards is not None and data.turn_spans is not None:
        data.step_scores, data.step_ends = turn_step_tensors(data.turn_spans, data.scores.step_rewards)
    elif data.scores.step_rewards is not None:
        data.step_scores, data.step_ends = step_tensors(tokenizer, data.rollouts, data.texts, data.scores.step_rewards)
        if config.process_outcome_weight:
            outcome = config.process_outcome_weight * data.scores.correct.float()
            last = (data.rollouts.completion_lengths - 1).clamp(min=0)
            data.step_scores, data.step_ends = append_outcome_step(data.step_scores, data.step_ends, outcome, last)
    return data


def step_tensors(tokenizer: Any, rollouts: Rollouts, texts: list[str],
                 step_rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) step rewards (NaN = no step) and the completion-token index where each step ends."""
    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    ends = [step_end_tokens(decode, ids, text) for ids, text in zip(rollouts.completion_token_lists(), texts)]
    width = max(1, max(len(e) for e in ends))
    scores = torch.full((len(texts), width), float("nan"))
    positions = torch.full((len(texts), width), -1, dtype=torch.long)
    for row, (row_ends, rewards) in enumerate(zip(ends, step_rewards)):
        n = min(len(row_ends), len(rewards))  # a step the PRM could not read (truncated) gets no reward
        scores[row, :n] = torch.tensor(rewards[:n])
        positions[row, :n] = torch.tensor(row_ends[:n], dtype=torch.long)
    return scores, positions


def turn_step_tensors(turn_spans: list[list[tuple[int, int]]],
                      turn_rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) the rewards of each episode's turns as steps (NaN = no turn) and each turn's last token.

    >>> scores, ends = turn_step_tensors([[(0, 3), (5, 7)], [(0, 2)]], [[0.0, 1.0], []])
    >>> scores.tolist()[0], ends.tolist()
    ([0.0, 1.0], [[2, 6], [-1, -1]])
    """
    width = max(1, max(len(spans) for spans in turn_spans))
    scores = torch.full((len(turn_spans), width), float("nan"))
    ends = torch.full((len(turn_spans), width), -1, dtype=torch.long)
    for row, (spans, rewards) in enumerate(zip(turn_spans, turn_rewards)):
        n = min(len(spans), len(rewards))  # a turn whose environment failed has no reward
        scores[row, :n] = torch.tensor(rewards[:n])
        ends[row, :n] = torch.tensor([end - 1 for _, end in spans[:n]], dtype=torch.long)
    return scores, ends


def varies(by_group: torch.Tensor) -> torch.Tensor:
    """Per group: do its (non-NaN) rewards take more than one value?"""
    filled_hi = torch.where(torch.isnan(by_group), -torch.inf, by_group).amax(dim=1)
    filled_lo = torch.where(torch.isnan(by_group), torch.inf, by_group).amin(dim=1)
    return filled_hi > filled_lo


def rollout_metrics(data: StepData) -> dict[str, float]:
    """What the rollouts of a step look like: rewards (total and per reward function), accuracy, lengths,
    truncation, groups without signal, reward failures."""
    rewards, correct = data.scores.rewards, data.scores.correct
    lengths = data.rollouts.completion_lengths.float()
    valid = ~torch.isnan(rewards)
    metrics = {
        "reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
        "reward_std": float(rewards[valid].std()) if int(valid.sum()) > 1 else 0.0,
        "accuracy": float(correct.float().mean()),
        "prompt_length": float(data.rollouts.prompt_mask.sum(dim=1).float().mean()),
        "completion_length": float(lengths.mean()),
        "completion_length_correct": float(lengths[correct].mean()) if correct.any() else float("nan"),
        "completion_length_incorrect": float(lengths[~correct].mean()) if (~correct).any() else float("nan"),
        "truncated_share": sum(r == "length" for r in data.rollouts.finish_reasons) / len(data.rollouts),
        "zero_variance_groups": data.zero_variance_share,
        "reward_errors": float(len(data.scores.errors)),  # samples a reward function failed on (no reward)
        "reward_timeouts": float(data.scores.timeouts),  # of those, the ones whose call ran out of time
        "sampling_rounds": float(data.rounds),
    }
    for name, values in data.scores.components.items():
        present = [v for v in values if v is not None]
        if present:
            metrics[f"reward/{name}"] = sum(present) / len(present)
    return metrics


def sample_rows(data: StepData) -> list[dict[str, Any]]:
    """One row per completion for `samples.jsonl`: the problem, the completion, its reward and verdict."""
    rows = []
    for i, (example, text) in enumerate(zip(data.examples, data.texts)):
        reward = float(data.scores.rewards[i])
        rows.append({"example_id": example.id, "question": example.question, "completion": text,
                     "gold": example.answer, "extracted": data.scores.extracted[i] if data.scores.extracted else None,
                     "reward": None if reward != reward else reward, "correct": bool(data.scores.correct[i]),
                     "finish_reason": data.rollouts.finish_reasons[i],
                     "rewards": {k: v[i] for k, v in data.scores.components.items()}})
    return rows
