"""One RL loop for GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ (and its baseline variant) and PPO.

Every estimator runs the same step: sample `num_generations` completions for each of
`prompts_per_step` training problems (reusing the engine's sampling log-probabilities as the
behaviour policy's), score them, compute advantages with the estimator named in the config, then
make `num_iterations` optimizer updates over micro-batches. What differs between algorithms is
only data in the config (`config.PRESETS`): the advantage estimator, where the KL goes (the loss,
k3, as in GRPO; or the reward, k1, as in RLOO, REINFORCE++ and PPO), the loss aggregation, the clip
range, DAPO's dynamic sampling and overlong shaping, and PPO's critic with its warm-up.

Papers and deviations:
- GRPO (arXiv 2402.03300), Dr. GRPO (2503.20783), DAPO (2503.14476), RLOO (2402.14740),
  REINFORCE++ (2501.03262), PPO with GAE; the math is in `incentivize.algorithms`.
- Rows whose reward could not be computed (a user reward function failed) are left out of the
  loss and of the group statistics, rather than scored 0.
- The learning-rate schedule advances once per training step (rollout batch), not once per
  inner update, so `num_iterations` does not change the schedule's length.
- DAPO's dynamic sampling draws only as many new prompts as groups are still missing, rather than
  over-sampling a fixed multiple, and stops with an error after `max_resample_rounds` rounds.
- With `critic_warmup_steps`, the first steps sample, score and train only the critic.
"""

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
import yaml

from incentivize.algorithms.advantages import AdvantageInputs, compute_advantages
from incentivize.algorithms.aggregate import AGGREGATIONS, global_normalizer, loss_type_to_aggregation
from incentivize.algorithms.kl import KL_ESTIMATORS, k3
from incentivize.algorithms.policy_loss import ppo_clip_loss, value_loss
from incentivize.checkpoint import (
    latest_checkpoint, load_checkpoint, remove_partial_checkpoints, restore_rng, rng_state, save_checkpoint, save_model,
)
from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError, describe
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.rewards import load_reward_function
from incentivize.rewards.steps import step_end_tokens
from incentivize.rollout import Rollouts, SamplingParams, generate
from incentivize.tasks import Example, Task, chat_template_warning, load_task, render_prompt
from incentivize.trainers.interrupt import StopRequest, TrainingInterrupted
from incentivize.trainers.flat_state import FlatGradients, flatten_adam_state
from incentivize.trainers.policy import Batch, Models, SharedPrompts, build_models, token_logprobs, token_values
from incentivize.trainers.sampler import PromptSampler
from incentivize.trainers.scoring import Scorer, Scores


@dataclass
class TrainResult:
    run_dir: Path
    before: dict[str, Any] | None  # held-out metrics before training (None if skipped)
    after: dict[str, Any]
    seconds: float


@dataclass
class StepData:
    """One step's rollouts with the problems and scores that go with each row."""

    rollouts: Rollouts
    examples: list[Example]  # one per row
    scores: Scores
    zero_variance_share: float  # of the groups first sampled this step
    rounds: int
    generate_seconds: float
    score_seconds: float
    texts: list[str]  # decoded completions, one per row
    step_scores: torch.Tensor | None = None  # (B, S) PRM step rewards, NaN past a row's steps (grpo_process)
    step_ends: torch.Tensor | None = None  # (B, S) completion-token index where each step ends


Callback = Callable[[int, dict[str, Any]], None]


def train(
    config: RLConfig, *, on_step: Callback | None = None, on_event: Callable[[str], None] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run `config` to the end; `on_step(step, metrics)` after each step, `on_event(text)` for milestones.

    With `resume`, `config.output_dir` is an existing run: training continues after its newest
    complete checkpoint (weights, optimizer, scheduler, RNG and data position), and the metrics and
    samples of later steps, written before the interruption, are replaced.
    """
    say = on_event or (lambda text: None)
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    run_dir = _resume_dir(config) if resume else _new_run_dir(config)
    task = load_task(config.task, **config.task_options)
    train_examples = _examples(task, "train", None)
    eval_examples = _examples(task, "test", config.eval_limit)
    say(f"run directory {run_dir}; {len(train_examples)} training and {len(eval_examples)} held-out problems")

    models = build_models(config)
    if warning := chat_template_warning(models.tokenizer, config.model):
        say(f"warning: {warning}")
    scorer = Scorer(
        task, [load_reward_function(spec) for spec in config.rewards], config.reward_weights, config.format_reward,
        config.max_completion_length, config.overlong_buffer, config.overlong_penalty,
        timeout_s=config.reward_timeout_s, on_error=config.on_reward_error, process=config.advantage == "grpo_process",
    )
    sampler = PromptSampler(len(train_examples), config.seed)
    learner = Learner(config, models)
    done = 0
    if resume:
        done = _restore(run_dir, models, learner, sampler)
        say(f"resuming after step {done}")
    else:  # only now, once the model, data and reward functions have loaded: bad input leaves no trace
        _create_run_dir(run_dir, config)
    metrics_file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
    samples_file = (run_dir / "samples.jsonl").open("a", encoding="utf-8")
    prompt_cache: dict[int, list[int]] = {}

    def evaluate_now(label: str) -> dict[str, Any]:
        say(f"evaluating {label} on {len(eval_examples)} held-out problems")
        settings = EvalSettings(samples=0, max_new_tokens=config.max_completion_length, seed=config.seed)
        report = evaluate(models.policy, models.tokenizer, task, eval_examples, settings)
        report.write(run_dir / f"eval-{label}", {"model": config.model, "step": label, **settings.model_dump()})
        return report.metrics

    if resume:
        before_file = run_dir / "eval-before" / "results.json"
        before = json.loads(before_file.read_text())["metrics"] if before_file.exists() else None
    else:
        before = evaluate_now("before") if config.eval_before else None
    stop = StopRequest(lambda: say("interrupt: finishing this step, then saving a checkpoint (Ctrl-C again to stop "
                                   "at once, without one)"))
    try:
        with stop:
            for step in range(done + 1, config.max_steps + 1):
                t0 = time.perf_counter()
                try:
                    data = _collect(config, models, task, train_examples, sampler, scorer, prompt_cache, step)
                    t1 = time.perf_counter()
                    stats = learner.step(data, train_actor=step > config.critic_warmup_steps)
                except (MemoryError, torch.OutOfMemoryError):
                    raise IncentivizeError(_out_of_memory_message(run_dir, step, config)) from None
                t2 = time.perf_counter()
                metrics = {"step": step, **_rollout_metrics(data), **stats,
                           "time/generate": data.generate_seconds, "time/score": data.score_seconds,
                           "time/learn": t2 - t1, "time/step": t2 - t0,
                           "tokens_per_second": float(data.rollouts.completion_mask.sum()) / (t2 - t0)}
                if config.eval_steps and step % config.eval_steps == 0 and step < config.max_steps:
                    metrics["eval/greedy_accuracy"] = evaluate_now(f"step-{step}")["greedy_accuracy"]
                metrics_file.write(json.dumps(_plain(metrics)) + "\n")
                metrics_file.flush()
                _write_samples(samples_file, step, data)
                if on_step is not None:
                    on_step(step, metrics)
                if learner.nonfinite_streak >= config.max_nonfinite_steps:
                    raise IncentivizeError(_nonfinite_message(run_dir, step, learner.nonfinite_streak))
                stopping = stop.requested  # read once: a Ctrl-C from here on is handled after the next step
                if (config.save_steps and step % config.save_steps == 0) or stopping:
                    checkpoint = _save(run_dir, step, models, learner, sampler, config)
                if stopping:
                    raise TrainingInterrupted(
                        f"interrupted after step {step}; checkpoint {checkpoint}; continue with: "
                        f"incentivize train --resume {run_dir}"
                    )
    finally:
        metrics_file.close()
        samples_file.close()
    after = evaluate_now("after")
    save_model(run_dir / "final", models.policy, models.tokenizer)
    seconds = time.perf_counter() - started
    summary = {"before": before, "after": after, "seconds": seconds}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(run_dir, before, after, seconds)


class Learner:
    """Optimizers and the update rule: advantages, clipped policy loss, KL, critic regression."""

    def __init__(self, config: RLConfig, models: Models) -> None:
        self.config, self.models = config, models
        self.aggregation = loss_type_to_aggregation(config.loss_type)
        params = [p for p in models.policy.parameters() if p.requires_grad]
        # fused: one kernel per update and no temporaries the size of the model
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay, fused=fused,
        )
        # gradients and Adam moments in flat buffers allocated once (see flat_state)
        flatten_adam_state(self.optimizer)
        self.gradients = FlatGradients(params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config))
        self.critic_optimizer = None
        if models.critic is not None:
            self.critic_optimizer = torch.optim.AdamW(models.critic.parameters(), lr=config.critic_learning_rate)
        # Updates whose loss or gradient norm was NaN or infinite are not applied (the weights stay);
        # the run stops after `max_nonfinite_steps` steps in a row with such an update.
        self.skipped_updates = 0  # optimizer updates not applied, actor and critic, over the run
        self.skipped_steps = 0  # steps with at least one update not applied, over the run
        self.nonfinite_streak = 0  # such steps in a row, up to this one

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "skipped_updates": self.skipped_updates, "skipped_steps": self.skipped_steps,
                 "nonfinite_streak": self.nonfinite_streak}
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        flatten_adam_state(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def step(self, data: StepData, train_actor: bool = True) -> dict[str, float]:
        config, models = self.config, self.models
        rollouts = data.rollouts
        batch = Batch.from_rollouts(rollouts)
        valid = ~torch.isnan(data.scores.rewards)  # (B,)
        mask = rollouts.completion_mask.float() * valid[:, None]  # (B, T)
        old_logp = rollouts.logprobs  # sampled by the current weights: the behaviour policy
        chunks = _chunks(len(rollouts), config.micro_batch_size)

        ref_logp = None
        started = time.perf_counter()
        if config.beta > 0:
            with models.reference_policy() as reference:
                prompts = SharedPrompts(reference, rollouts, detach=False) if config.share_prompt else None
                parts = []
                for c in chunks:
                    parts.append(token_logprobs(reference, batch.rows(c), config.temperature,
                                                share_prompt=config.share_prompt, grad=False, prompts=prompts)[0])
                    if prompts is not None:
                        prompts.release(c.stop)
                ref_logp = torch.cat(parts)
        reference_seconds = time.perf_counter() - started
        old_values = None
        if models.critic is not None:
            with torch.no_grad():
                old_values = torch.cat([token_values(models.critic, batch.rows(c)) for c in chunks])
        kl_in_reward = ref_logp is not None and config.kl_in == "reward"
        advantages = compute_advantages(
            config.advantage,
            AdvantageInputs(
                scores=data.scores.rewards, mask=mask, group_size=config.num_generations,
                kl=KL_ESTIMATORS.get(config.kl_estimator)(old_logp, ref_logp) * mask if kl_in_reward and ref_logp is not None else None,
                beta=config.beta if kl_in_reward else 0.0, values=old_values,
                step_scores=data.step_scores, step_ends=data.step_ends,
            ),
            **_estimator_params(config),
        )
        normalizer = global_normalizer(self.aggregation, mask, config.max_completion_length)
        stats: dict[str, float] = {"lr": float(self.scheduler.get_last_lr()[0]), "time/reference": reference_seconds}
        if ref_logp is not None:
            stats["kl"] = _masked_mean(k3(old_logp, ref_logp), mask)
        skipped_before, updated = self.skipped_updates, False
        if train_actor and float(mask.sum()) > 0:
            stats |= self._update_actor(batch, chunks, mask, old_logp, ref_logp, advantages.advantages, normalizer)
            self.scheduler.step()
            updated = True
        if models.critic is not None and advantages.returns is not None and old_values is not None:
            stats |= self._update_critic(batch, chunks, mask, old_values, advantages.returns)
            updated = True
        if self.skipped_updates > skipped_before:
            self.skipped_steps += 1
            self.nonfinite_streak += 1
        elif updated:
            self.nonfinite_streak = 0
        return stats | {"skipped_updates": float(self.skipped_updates), "skipped_steps": float(self.skipped_steps),
                        "nonfinite_streak": float(self.nonfinite_streak)}

    def _update_actor(self, batch: Batch, chunks: list[slice], mask: torch.Tensor, old_logp: torch.Tensor,
                      ref_logp: torch.Tensor | None, advantages: torch.Tensor, normalizer: Any) -> dict[str, float]:
        config = self.config
        aggregate = AGGREGATIONS.get(self.aggregation)
        kl_estimator = KL_ESTIMATORS.get(config.kl_estimator)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        totals: dict[str, float] = {}
        clock = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for iteration in range(config.num_iterations):
            self.gradients.zero()
            loss_sum = 0.0
            # each prompt once per step, across micro-batches; its gradient flows back after its last row
            prompts = SharedPrompts(self.models.policy, batch.rollouts, detach=True) if config.share_prompt else None
            for c in chunks:
                started = time.perf_counter()
                logp, entropy = token_logprobs(self.models.policy, batch.rows(c), config.temperature,
                                               share_prompt=config.share_prompt, with_entropy=iteration == 0,
                                               prompts=prompts)
                per_token, pstats = ppo_clip_loss(
                    logp, old_logp[c], advantages[c], mask[c], eps_low=config.epsilon, eps_high=config.clip_high,
                    dual_clip=config.dual_clip, ratio_level=config.ratio_level,
                )
                if ref_logp is not None and config.kl_in == "loss":
                    per_token = per_token + config.beta * kl_estimator(logp, ref_logp[c])
                loss = aggregate(per_token, mask[c], normalizer)
                backward_started = time.perf_counter()
                loss.backward()
                if prompts is not None:
                    prompts.release(c.stop)
                clock["forward"] += backward_started - started
                clock["backward"] += time.perf_counter() - backward_started
                loss_sum += float(loss.detach())
                if iteration == 0:
                    weight = float(mask[c].sum()) / max(float(mask.sum()), 1.0)
                    for name, value in _stat_items(pstats):
                        totals[name] = totals.get(name, 0.0) + weight * value
                    if entropy is not None:
                        totals["entropy"] = totals.get("entropy", 0.0) + weight * _masked_mean(entropy, mask[c])
            started = time.perf_counter()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            if math.isfinite(grad_norm) and math.isfinite(loss_sum):
                self.optimizer.step()
            else:
                self.skipped_updates += 1
            clock["optimizer"] += time.perf_counter() - started
            if iteration == 0:
                totals["loss"], totals["grad_norm"] = loss_sum, grad_norm
        return totals | {f"time/{phase}": seconds for phase, seconds in clock.items()}

    def _update_critic(self, batch: Batch, chunks: list[slice], mask: torch.Tensor, old_values: torch.Tensor,
                       returns: torch.Tensor) -> dict[str, float]:
        critic, optimizer = self.models.critic, self.critic_optimizer
        assert critic is not None and optimizer is not None
        critic.train()
        tokens = max(float(mask.sum()), 1.0)
        totals: dict[str, float] = {"value_loss": 0.0}
        for _ in range(self.config.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for c in chunks:
                values = token_values(critic, batch.rows(c))
                per_token, vstats = value_loss(values, old_values[c], returns[c], mask[c], clip=self.config.cliprange_value)
                loss = (per_token * mask[c]).sum() / tokens
                loss.backward()
                loss_sum += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(critic.parameters(), self.config.max_grad_norm))
            if math.isfinite(grad_norm) and math.isfinite(loss_sum):
                optimizer.step()
            else:
                self.skipped_updates += 1
            optimizer.zero_grad(set_to_none=True)
            totals["value_loss"] = loss_sum
        critic.eval()
        for name, value in _stat_items(vstats):
            totals[f"critic/{name}"] = value
        return totals


def _collect(config: RLConfig, models: Models, task: Task, examples: list[Example], sampler: PromptSampler,
             scorer: Scorer, prompt_cache: dict[int, list[int]], step: int) -> StepData:
    """Sample and score one step's groups; with dynamic sampling, only groups whose rewards differ."""
    tokenizer, group = models.tokenizer, config.num_generations
    parts: list[tuple[Rollouts, list[Example], Scores, list[str]]] = []
    kept_groups, zero_share, rounds = 0, 0.0, 0
    generate_seconds = score_seconds = 0.0
    while kept_groups < config.prompts_per_step:
        rounds += 1
        if rounds > config.max_resample_rounds:
            raise IncentivizeError(
                f"step {step}: dynamic sampling found only {kept_groups} of {config.prompts_per_step} groups with "
                f"differing rewards in {config.max_resample_rounds} rounds; raise max_resample_rounds, use an easier "
                "task, or set dynamic_sampling=false"
            )
        indices = sampler.take(config.prompts_per_step - kept_groups)
        for i in indices:
            if i not in prompt_cache:
                prompt_cache[i] = render_prompt(tokenizer, task.messages(examples[i]))
        params = SamplingParams(
            n=group, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
            max_new_tokens=config.max_completion_length, seed=config.seed * 1_000_003 + step * 101 + rounds,
        )
        started = time.perf_counter()
        rollouts = generate(models.policy, [prompt_cache[i] for i in indices], params,
                            eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
        generated = time.perf_counter()
        generate_seconds += generated - started
        rows = [examples[i] for i in indices for _ in range(group)]
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.completion_token_lists()]
        prompt_texts = [tokenizer.decode(prompt_cache[i], skip_special_tokens=False) for i in indices]
        prompts = [text for text in prompt_texts for _ in range(group)]
        scores = scorer(rows, prompts, texts, rollouts.completion_lengths)
        score_seconds += time.perf_counter() - generated
        by_group = scores.rewards.view(-1, group)
        varied = _varies(by_group)  # (G_count,)
        if rounds == 1:
            zero_share = 1.0 - float(varied.float().mean())
        keep = varied if config.dynamic_sampling and group > 1 else torch.ones_like(varied)
        rows_kept = [g * group + j for g in keep.nonzero().flatten().tolist() for j in range(group)]
        if rows_kept:
            parts.append((rollouts.select(rows_kept), [rows[r] for r in rows_kept], _select_scores(scores, rows_kept),
                          [texts[r] for r in rows_kept]))
            kept_groups += len(rows_kept) // group
    rollouts = Rollouts.concat([p[0] for p in parts])
    step_rewards = None
    if parts[0][2].step_rewards is not None:
        step_rewards = [steps for p in parts for steps in p[2].step_rewards or []]
    scores = Scores(
        rewards=torch.cat([p[2].rewards for p in parts]), correct=torch.cat([p[2].correct for p in parts]),
        components={k: [v for p in parts for v in p[2].components[k]] for k in parts[0][2].components},
        errors=[e for p in parts for e in p[2].errors], timeouts=sum(p[2].timeouts for p in parts),
        step_rewards=step_rewards,
    )
    texts = [t for p in parts for t in p[3]]
    data = StepData(rollouts, [e for p in parts for e in p[1]], scores, zero_share, rounds,
                    generate_seconds, score_seconds, texts)
    if step_rewards is not None:
        data.step_scores, data.step_ends = _step_tensors(tokenizer, rollouts, texts, step_rewards)
    return data


def _step_tensors(tokenizer: Any, rollouts: Rollouts, texts: list[str],
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


def _varies(by_group: torch.Tensor) -> torch.Tensor:
    """Per group: do its (non-NaN) rewards take more than one value?"""
    filled_hi = torch.where(torch.isnan(by_group), -torch.inf, by_group).amax(dim=1)
    filled_lo = torch.where(torch.isnan(by_group), torch.inf, by_group).amin(dim=1)
    return filled_hi > filled_lo


def _select_scores(scores: Scores, rows: list[int]) -> Scores:
    index = torch.tensor(rows, dtype=torch.long)
    return Scores(scores.rewards[index], scores.correct[index],
                  {k: [v[r] for r in rows] for k, v in scores.components.items()}, scores.errors, scores.timeouts,
                  [scores.step_rewards[r] for r in rows] if scores.step_rewards is not None else None)


def _rollout_metrics(data: StepData) -> dict[str, float]:
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
        if name != "correctness" and present:
            metrics[f"reward/{name}"] = sum(present) / len(present)
    return metrics


def _write_samples(handle: Any, step: int, data: StepData) -> None:
    for i, (example, text) in enumerate(zip(data.examples, data.texts)):
        reward = float(data.scores.rewards[i])
        handle.write(json.dumps({"step": step, "example_id": example.id, "completion": text, "gold": example.answer,
                                 "reward": None if math.isnan(reward) else reward,
                                 "correct": bool(data.scores.correct[i])}) + "\n")
    handle.flush()


def _estimator_params(config: RLConfig) -> dict[str, Any]:
    if config.advantage == "grpo":
        return {"scale": config.scale_rewards}
    if config.advantage in ("reinforce_pp", "reinforce_pp_baseline"):
        return {"gamma": config.gamma}
    if config.advantage == "gae":
        return {"gamma": config.gamma, "lam": config.lam}
    return {}


def _schedule(config: RLConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_scheduler_type == "cosine":
            span = max(1, config.max_steps - config.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
        return 1.0

    return factor


def _chunks(size: int, micro: int) -> list[slice]:
    return [slice(i, min(i + micro, size)) for i in range(0, size, micro)]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum().clamp(min=1.0))


def _stat_items(stats: Any) -> list[tuple[str, float]]:
    fields = stats._asdict() if hasattr(stats, "_asdict") else vars(stats)
    return [(name, float(value)) for name, value in fields.items()]


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _examples(task: Task, split: str, limit: int | None) -> list[Example]:
    examples = task.examples(split, limit)
    if not examples:
        raise IncentivizeError(f"task {task.name} has no {split} examples")
    return examples


def _save(run_dir: Path, step: int, models: Models, learner: Learner, sampler: PromptSampler,
          config: RLConfig) -> Path:
    """Checkpoint `step`; a failed write (a full disk) leaves the previous checkpoint and stops with one line."""
    root = run_dir / "checkpoints"
    try:
        return save_checkpoint(root, step, models.policy, models.tokenizer, learner.state_dict() | {"rng": rng_state()},
                               {"sampler": sampler.state_dict(), "config": config.model_dump()},
                               config.save_total_limit, critic=models.critic)
    except OSError as err:
        previous = latest_checkpoint(root)
        kept = (f"the newest complete checkpoint {previous} is intact; free space, then continue with: "
                f"incentivize train --resume {run_dir}") if previous else "no earlier checkpoint exists"
        raise IncentivizeError(f"step {step}: writing its checkpoint failed ({describe(err)}); {kept}") from None


def _newest_checkpoint_text(run_dir: Path) -> str:
    previous = latest_checkpoint(run_dir / "checkpoints")
    return f"the newest checkpoint is {previous}" if previous else "no checkpoint was written (set save_steps)"


def _out_of_memory_message(run_dir: Path, step: int, config: RLConfig) -> str:
    return (f"step {step}: out of memory; {_newest_checkpoint_text(run_dir)}; lower micro_batch_size (now "
            f"{config.micro_batch_size}; it changes memory, not the math), max_completion_length or "
            f"generation_batch_size, then continue with: incentivize train --resume {run_dir}")


def _nonfinite_message(run_dir: Path, step: int, streak: int) -> str:
    where = _newest_checkpoint_text(run_dir)
    return (f"step {step}: the loss or gradient was NaN or infinite in {streak} steps in a row (max_nonfinite_steps), "
            f"so their updates were skipped and the run stopped; {where}; lower learning_rate or check the rewards")


# Settings that may change between the start of a run and its resumption (edited in its config.yaml).
RESUMABLE_CHANGES = frozenset({"output_dir", "max_steps", "eval_steps", "eval_limit", "eval_before", "save_steps",
                               "save_total_limit"})


def _resume_dir(config: RLConfig) -> Path:
    """The run to continue, checked before anything loads: its config.yaml must still be the config its
    newest checkpoint was written with, and a finished run is not run again."""
    if not config.output_dir or not (Path(config.output_dir) / "config.yaml").exists():
        raise IncentivizeError(f"cannot resume {config.output_dir}: it holds no run (config.yaml missing)")
    run_dir = Path(config.output_dir)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("config") if checkpoint else None
    except (OSError, ValueError, AttributeError):
        saved = None  # _restore reports an unreadable checkpoint
    if isinstance(saved, dict):  # checkpoints written before they kept their config are not compared
        now = json.loads(json.dumps(config.model_dump()))
        changed = [k for k in now if k in saved and k not in RESUMABLE_CHANGES and saved[k] != now[k]]
        if changed:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed[:3])
            raise IncentivizeError(
                f"cannot resume {run_dir}: its config.yaml differs from the config of {checkpoint} ({diff}); "
                "put the old values back, or start a new run with the new ones"
            )
    finished = checkpoint is not None and (run_dir / "final").exists()
    if finished and (not isinstance(saved, dict) or saved.get("max_steps", 0) >= config.max_steps):
        raise IncentivizeError(
            f"{run_dir} is finished ({run_dir / 'final'} holds its model); to train further, raise max_steps in "
            f"{run_dir / 'config.yaml'} and resume again"
        )
    return run_dir


def _restore(run_dir: Path, models: Models, learner: Learner, sampler: PromptSampler) -> int:
    """Load the newest complete checkpoint of `run_dir`; drop metrics and samples of later steps; its step."""
    remove_partial_checkpoints(run_dir / "checkpoints")  # torn by the interruption: never loaded, now gone
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise IncentivizeError(
            f"cannot resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} (set save_steps to write them)"
        )
    try:
        state, info = load_checkpoint(checkpoint, models.policy, models.critic)
        learner.load_state_dict(state)
        sampler.load_state_dict(info["sampler"])
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise IncentivizeError(f"cannot resume from {checkpoint}: {err}") from None
    restore_rng(state["rng"])
    step = int(info["step"])
    for name in ("metrics.jsonl", "samples.jsonl"):
        _truncate_jsonl(run_dir / name, step)
    return step


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step` (and drop a torn last line), written atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the interruption
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    partial.replace(path)


def _new_run_dir(config: RLConfig) -> Path:
    """Where a new run will go (created by `_create_run_dir`); a directory holding another run is refused."""
    if not config.output_dir:
        return Path("runs") / f"{config.algorithm}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output_dir)
    blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists()), run_dir)
    if blocker.exists() and not blocker.is_dir():
        raise IncentivizeError(f"output_dir {run_dir}: {blocker} is a file, not a directory; choose another --output-dir")
    if (run_dir / "metrics.jsonl").exists():
        raise IncentivizeError(
            f"{run_dir} already holds a run (metrics.jsonl); choose another --output-dir so nothing is overwritten"
        )
    existing = run_dir / "config.yaml"
    if existing.exists() and existing.read_text(encoding="utf-8", errors="replace") != _config_text(config):
        raise IncentivizeError(
            f"{run_dir} already holds another run's {existing.name}; choose another --output-dir so nothing is "
            "overwritten"
        )
    return run_dir


def _create_run_dir(run_dir: Path, config: RLConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(_config_text(config), encoding="utf-8")


def _config_text(config: RLConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
