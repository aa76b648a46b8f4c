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

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from incentivize.algorithms.advantages import AdvantageInputs, compute_advantages
from incentivize.algorithms.aggregate import AGGREGATIONS, global_normalizer, loss_type_to_aggregation
from incentivize.algorithms.entropy import EntropyCoefficient
from incentivize.algorithms.kl import KL_ESTIMATORS, k3, unbiased_k3
from incentivize.algorithms.latro import answer_nll, self_rewards
from incentivize.algorithms.policy_loss import POLICY_LOSSES, value_loss
from incentivize.algorithms.rollout_correction import rollout_weights
from incentivize.checkpoint import save_model
from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError
from incentivize.eval.monitor import SophistryMonitor, proxies
from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.eval.self_correct import self_correct
from incentivize.models.precision import learner_autocast
from incentivize.models.speed import describe_paths
from incentivize.rewards import reward_name
from incentivize.rollout import SamplingParams
from incentivize.rollout.episodes import run_episodes, turn_numbers, turn_separator
from incentivize.tasks import Example, Task, chat_template_warning, load_task, render_prompt, reward_columns
from incentivize.tasks.environments import make_environment
from incentivize.trainers.collect import StepData, build_scorer, rollout_metrics, sample_rows, varies
from incentivize.trainers.collect import collect as _collect
from incentivize.trainers.flat_state import FlatGradients, flatten_adam_state
from incentivize.trainers.loop import clipped_step
from incentivize.trainers.policy import Batch, Models, SharedPrompts, build_models, token_logprobs, token_values
from incentivize.trainers.rationales import sample_rationales
from incentivize.trainers.run import RunContext, RunResult, StepOutput, Trainer, run
from incentivize.trainers.sampler import PromptSampler
from incentivize.trainers.shard import Shard


def train(config: RLConfig, *, on_step: Callable[[int, dict[str, Any]], None] | None = None,
          on_event: Callable[[str], None] | None = None, on_progress: Callable[..., None] | None = None,
          resume: bool = False) -> RunResult:
    """Run `config` to the end; `on_step(step, metrics)` after each step, `on_event(text)` for milestones.

    With `resume`, `config.output_dir` is an existing run: training continues after its newest
    complete checkpoint (weights, optimizer, scheduler, RNG and data position), and the metrics and
    samples of later steps, written before the interruption, are replaced (`trainers/run.py`).
    """
    return run(RLTrainer(config), config, name=f"{config.algorithm}-{config.task}", resume=resume, on_event=on_event,
               on_progress=on_progress, on_step=on_step)


class RLTrainer(Trainer):
    """One RL step: sample and score groups (`trainers/collect.py`), then the learner's updates."""

    def __init__(self, config: RLConfig) -> None:
        self.config = config
        self.pool: Any = None  # rollout workers, with num_rollout_workers
        self.learners: Any = None  # the other learner processes, with num_learners

    def setup(self, context: RunContext) -> None:
        config, self.say = self.config, context.say
        self.task = load_task(config.task, **config.task_options)
        self.train_examples = _examples(self.task, "train", None)
        self.eval_examples = _examples(self.task, "test", config.eval_limit)
        self.say(f"run directory {context.run_dir}; {len(self.train_examples)} training and "
                 f"{len(self.eval_examples)} held-out problems")
        self.models = build_models(config)
        self.say(f"speed paths: {describe_paths(self.models.speed_paths)}")
        if warning := chat_template_warning(self.models.tokenizer, config.model):
            self.say(f"warning: {warning}")
        if config.environment != "none":  # a chat template that cannot hold several turns stops the run here
            turn_separator(self.models.tokenizer, "?", [self.models.tokenizer.eos_token_id])
        self.sampler = PromptSampler(len(self.train_examples), config.seed)
        self.learner = Learner(config, self.models)
        self.scorer = build_scorer(config, self.task)
        self.prompt_cache: dict[int, list[int]] = {}
        if config.num_rollout_workers:
            from incentivize.distributed.rollout import RolloutPool

            self.pool = RolloutPool(config, self.models.speed_paths["linear"], self.say)
        if config.num_learners > 1:
            from incentivize.distributed.learners import LearnerGroup

            self.learners = LearnerGroup(config, self.learner, self.models.speed_paths["linear"], self.say)
        self.monitor = SophistryMonitor(config.hacking_patience) if config.monitor == "oracle" else None
        self.warned_truncation = False
        self.mismatch = MismatchWatch(config)
        if self.models.rollout is not None or config.learner_dtype != "float32":
            self.say(f"precision: sampling in {config.rollout_dtype}, learning in {config.learner_dtype} (weights and "
                     f"optimizer float32); rollout correction {config.correction_mode}")
        self.total_steps = config.max_steps

    def step(self, step: int) -> StepOutput:
        config, learner = self.config, self.learner
        t0 = time.perf_counter()
        if self.pool is not None:
            self.pool.sync(self.models.policy)  # the weights of the last update (or of the restored checkpoint)
        if self.models.rollout is not None:
            self.models.rollout.sync()  # the engine's copy in rollout_dtype, likewise
        data = _collect(config, self.models, self.task, self.train_examples, self.sampler, self.scorer,
                        self.prompt_cache, step, source=self.pool)
        t1 = time.perf_counter()
        skipped, updates = learner.skipped_updates, learner.updates
        train_actor = step > config.critic_warmup_steps
        stats = (learner.step(data, train_actor) if self.learners is None
                 else self.learners.step(data, train_actor, self.models))
        t2 = time.perf_counter()
        metrics = {**rollout_metrics(data), **stats, "time/generate": data.generate_seconds,
                   "time/score": data.score_seconds, "time/learn": t2 - t1, "time/step": t2 - t0,
                   "tokens_per_second": float(data.rollouts.completion_mask.sum()) / (t2 - t0)}
        if self.pool is not None:
            metrics["time/weight_sync"] = self.pool.sync_seconds
        elif self.models.rollout is not None:
            metrics["time/weight_sync"] = self.models.rollout.sync_seconds
        alarm = None
        if self.monitor is not None:
            watched, alarm = self.monitor.observe(data.scores.components, data.scores.correct.tolist(),
                                                  proxies(self.scorer.reward_functions))
            metrics |= watched
            if alarm and config.on_hacking == "warn":
                self.say(f"warning: step {step}: {alarm}")
        if config.self_reward != "none" and metrics["truncated_share"] >= 0.25 and not self.warned_truncation:
            self.warned_truncation = True
            self.say(f"warning: step {step}: {metrics['truncated_share']:.0%} of the rationales reached "
                     f"max_completion_length ({config.max_completion_length}) before {config.answer_marker!r}; they get "
                     f"truncated_penalty x the mean self-reward: raise max_rationale_tokens")
        nonfinite = True if learner.skipped_updates > skipped else (False if learner.updates > updates else None)
        stop = f"{alarm} (on_hacking: stop)" if alarm and config.on_hacking == "stop" else None
        stop = stop or self.mismatch.observe(metrics.get("mismatch/mean_abs_log_ratio"))
        return StepOutput(metrics, sample_rows(data), nonfinite, no_signal=_no_signal(config, data, metrics), stop=stop)

    def close(self) -> None:
        for group in (self.learners, self.pool):  # the learners first: the pool may own the Ray they run on
            if group is not None:
                group.close()

    def state_dict(self) -> dict[str, Any]:
        monitor = {"monitor": self.monitor.state_dict()} if self.monitor is not None else {}
        return self.learner.state_dict() | {"sampler": self.sampler.state_dict()} | monitor

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])

    def evaluate(self, label: str, directory: Path) -> dict[str, Any]:
        config = self.config
        self.say(f"evaluating {label} on {len(self.eval_examples)} held-out problems")
        settings = EvalSettings(samples=0, max_new_tokens=config.max_completion_length, seed=config.seed)
        report = evaluate(self.models.policy, self.models.tokenizer, self.task, self.eval_examples, settings)
        if self.monitor is not None:  # the proxies on held-out answers: U-Sophistry's false-positive rate, before and after
            report.metrics |= self._proxies_on(report.records)
        if config.environment != "none":
            report.metrics |= self._episodes_on_held_out()
        if config.self_reward != "none":
            report.metrics |= self._gold_answer_likelihood()
        report.write(directory, {"model": config.model, "step": label, **settings.model_dump()})
        return report.metrics

    def _episodes_on_held_out(self) -> dict[str, float]:
        """Greedy episodes of the environment on the held-out problems: SCoRe's metrics for self_correction
        (`self_correct/...`), else the accuracy of the final turn and the mean number of turns (`episodes/...`)."""
        config, models = self.config, self.models
        settings = EvalSettings(samples=0, max_new_tokens=config.max_completion_length, seed=config.seed)
        if config.environment == "self_correction":
            report = self_correct(models.policy, models.tokenizer, self.task, self.eval_examples, settings)
            return {f"self_correct/{k}": v for k, v in report.metrics.items() if k != "problems"}
        params = SamplingParams(temperature=0.0, max_new_tokens=config.max_completion_length)
        result = run_episodes(models.policy, models.tokenizer, self.eval_examples,
                              [make_environment(config.environment, self.task) for _ in self.eval_examples], params,
                              config.max_turns, eos_token_ids=[models.tokenizer.eos_token_id],
                              timeout_s=config.reward_timeout_s)
        right = [self.task.verify(e, t[-1] if t else "").correct for e, t in zip(self.eval_examples, result.texts)]
        return {"episodes/accuracy": sum(right) / len(right),
                "episodes/turns": sum(len(t) for t in result.texts) / len(result.texts)}

    def _gold_answer_likelihood(self) -> dict[str, float]:
        """LaTRO's objective on the held-out problems, for tasks without a verifier too: the greedy rationale up to
        the answer marker, then log pi(gold answer | question, rationale), summed over the answer's tokens
        (`latro/gold_logprob`) and per token (`latro/gold_logprob_per_token`)."""
        config, models = self.config, self.models
        prompts = [render_prompt(models.tokenizer, self.task.messages(e)) for e in self.eval_examples]
        params = SamplingParams(temperature=0.0, max_new_tokens=config.max_completion_length)
        rationales = sample_rationales(models.policy, models.tokenizer, prompts, [e.answer for e in self.eval_examples],
                                       params, config.answer_marker, micro_batch_size=config.micro_batch_size)
        logps, mask = rationales.answer_logprobs(), rationales.answer_mask
        return {"latro/gold_logprob": float(self_rewards(logps, mask, "sum").mean()),
                "latro/gold_logprob_per_token": float(self_rewards(logps, mask, "mean").mean()),
                "latro/truncated_share": float(rationales.truncated.float().mean())}

    def _proxies_on(self, records: list[Any]) -> dict[str, float]:
        """`monitor/<proxy>/...` of each learned or judged reward on held-out completions (the greedy ones)."""
        watched = proxies(self.scorer.reward_functions)
        if not watched:
            return {}
        by_id = {e.id: e for e in self.eval_examples}
        columns = reward_columns([by_id[r.example_id] for r in records])
        prompts, completions, oracle = [r.prompt for r in records], [r.completion for r in records], [r.correct for r in records]
        scores = {reward_name(fn): fn(prompts, completions, **columns) for fn in self.scorer.reward_functions
                  if reward_name(fn) in watched}
        return SophistryMonitor(0).observe(scores, oracle, watched)[0]

    def checkpoint_model(self) -> tuple[Any, Any]:
        return self.models.policy, self.models.tokenizer

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {"critic": self.models.critic} if self.models.critic is not None else {}

    def save_final(self, directory: Path) -> None:
        save_model(directory, self.models.policy, self.models.tokenizer)

    def status(self, metrics: Mapping[str, Any]) -> str:
        return f"reward {metrics['reward_mean']:.3f} acc {metrics['accuracy']:.3f}"

    def memory_advice(self) -> str:
        return (f"micro_batch_size (now {self.config.micro_batch_size}; it changes memory, not the math), "
                "max_completion_length or generation_batch_size")


def _turn_weights(config: RLConfig, data: StepData, width: int) -> float | torch.Tensor:
    """The KL coefficient: beta, or per token with first_turn_beta on a multi-turn episode's first turn."""
    if data.turn_spans is None or config.first_turn_beta is None:
        return config.beta
    return torch.where(turn_numbers(data.turn_spans, width) == 1, config.first_turn_beta, config.beta)


def _no_signal(config: RLConfig, data: StepData, metrics: dict[str, Any]) -> str | None:
    """None when some rewards of the step differ where the estimator compares them (within a group, or
    across the batch for groups of one); else the likely reason why none do."""
    rewards = data.scores.rewards.view(-1, config.num_generations if config.num_generations > 1 else len(data))
    if bool(varies(rewards).any()):
        return None
    return "every reward of each group was equal; " + _likely_cause(config, data, metrics)


def _likely_cause(config: RLConfig, data: StepData, metrics: dict[str, Any]) -> str:
    if metrics["truncated_share"] >= 0.5:
        return (f"{metrics['truncated_share']:.0%} of the completions were cut off at max_completion_length "
                f"({config.max_completion_length}) before their answer: raise max_completion_length")
    if data.scores.extracted is not None and not any(data.scores.extracted):
        return ("no completion gave an answer the task could read: check the answer format the prompt asks for, "
                "or add format_reward")
    if bool(data.scores.correct.all()):
        return "every completion was right: the task is too easy for the model (raise its difficulty)"
    return "no completion was right: the task is too hard for the model, or its verifier cannot read the answers"


class MismatchWatch:
    """Stops a run whose sampler drifted from the trained policy: the mean |log pi_old - log pi_rollout| per token
    above `max_rollout_mismatch` for `mismatch_patience` steps in a row."""

    def __init__(self, config: RLConfig) -> None:
        self.config, self.streak = config, 0

    def observe(self, mean_abs_log_ratio: float | None) -> str | None:
        if mean_abs_log_ratio is None:
            return None
        limit = self.config.max_rollout_mismatch
        self.streak = self.streak + 1 if mean_abs_log_ratio > limit else 0
        if self.streak < self.config.mismatch_patience:
            return None
        return (f"the sampler's log-probs differ from the trained policy's by {mean_abs_log_ratio:.3f} per token "
                f"(above max_rollout_mismatch {limit}) for {self.streak} steps: rollout_dtype "
                f"{self.config.rollout_dtype} is too coarse for this model, or the sampler's weights are not the "
                "trained ones; try rollout_dtype=float32")


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
        self.updates = 0  # optimizer updates made or attempted, actor and critic, over the run
        self.skipped_updates = 0  # of those, the ones not applied
        self.shard = Shard()  # this process's rows; a data-parallel group replaces it (incentivize.distributed)
        self.entropy = EntropyCoefficient(config.entropy_coef, config.entropy_target, config.entropy_coef_delta,
                                          config.entropy_coef_min, config.entropy_coef_max)
        self.autocast = lambda: learner_autocast(config.learner_dtype, next(models.policy.parameters()).device)

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "updates": self.updates, "skipped_updates": self.skipped_updates, "entropy": self.entropy.state_dict()}
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        flatten_adam_state(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates, self.skipped_updates = int(state.get("updates", 0)), int(state.get("skipped_updates", 0))
        if "entropy" in state:
            self.entropy.load_state_dict(state["entropy"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def step(self, data: StepData, train_actor: bool = True) -> dict[str, float]:
        config, models = self.config, self.models
        rollouts = data.rollouts
        batch = Batch.from_rollouts(rollouts)
        valid = ~torch.isnan(data.scores.rewards)  # (B,)
        mask = rollouts.completion_mask.float() * valid[:, None]  # (B, T)
        answer_mask = None  # LaTRO: the gold answer's tokens, trained by likelihood; the policy gradient on the rest
        if data.answer_mask is not None:
            answer_mask = mask * data.answer_mask.float()
            mask = mask - answer_mask
        # the engine's log-probs are pi_old's when it samples with the trained weights in training precision; else
        # pi_old comes from the learner's own first forward pass of the step, and the engine's are pi_rollout's
        rollout_logp = rollouts.logprobs
        learner_old = config.mixed_precision or config.correction_mode != "none"
        # this process's rows (all of them unless learners share the batch), in micro-batches
        chunks = _chunks(self.shard.rows(len(rollouts), config.num_generations), config.micro_batch_size)

        ref_logp = None
        started = time.perf_counter()
        if config.beta > 0:
            with models.reference_policy() as reference:
                ref_logp = self._logprobs(reference, batch, chunks)
        reference_seconds = time.perf_counter() - started
        old_logp: torch.Tensor | None = rollout_logp
        if learner_old:  # before the update only where the advantages need it (a KL reward, a critic's returns)
            needed = (config.beta > 0 and config.kl_in == "reward") or models.critic is not None
            old_logp = self._logprobs(models.policy, batch, chunks) if needed else None
        old_values = None
        if models.critic is not None:
            with torch.no_grad():
                old_values = self._whole([token_values(models.critic, batch.rows(c)) for c in chunks], chunks,
                                         rollout_logp)
        kl_in_reward = ref_logp is not None and config.kl_in == "reward"
        advantages = compute_advantages(
            config.advantage,
            AdvantageInputs(
                scores=data.scores.rewards, mask=mask, group_size=config.num_generations,
                kl=(KL_ESTIMATORS.get(config.kl_estimator)(old_logp, ref_logp) * mask
                    if kl_in_reward and ref_logp is not None and old_logp is not None else None),
                beta=config.beta if kl_in_reward else 0.0, values=old_values,
                step_scores=data.step_scores, step_ends=data.step_ends,
            ),
            **_estimator_params(config),
        )
        actor_advantages, kl_coef = advantages.advantages, _turn_weights(config, data, mask.shape[1])
        if data.turn_spans is not None and not config.train_first_turn:  # SCoRe's stage I: the first attempt
            actor_advantages = actor_advantages * (turn_numbers(data.turn_spans, mask.shape[1]) != 1)  # has KL only
        normalizer = global_normalizer(self.aggregation, mask, config.max_completion_length)
        stats: dict[str, float] = {"lr": float(self.scheduler.get_last_lr()[0]), "time/reference": reference_seconds}
        if ref_logp is not None:
            stats["kl"] = _masked_mean(k3(rollout_logp if old_logp is None else old_logp, ref_logp), mask)
        if train_actor and float(mask.sum()) > 0:
            stats |= self._update_actor(batch, chunks, mask, ActorInputs(rollout_logp, old_logp, ref_logp),
                                        actor_advantages, normalizer, kl_coef, answer_mask)
            self.scheduler.step()
        if models.critic is not None and advantages.returns is not None and old_values is not None:
            stats |= self._update_critic(batch, chunks, mask, old_values, advantages.returns)
        return stats | {"skipped_updates": float(self.skipped_updates)}

    def _whole(self, parts: list[torch.Tensor], chunks: list[slice], like: torch.Tensor) -> torch.Tensor:
        """The per-token results of this process's `chunks`, joined with the other processes' into the
        (B, T) tensor of the whole batch (the advantages need every row)."""
        whole = torch.zeros_like(like)
        for c, part in zip(chunks, parts):
            whole[c] = part
        self.shard.reduce([whole])
        return whole

    def _logprobs(self, model: Any, batch: Batch, chunks: list[slice]) -> torch.Tensor:
        """(B, T) log-probs of the batch's completion tokens under `model`, without gradient, in the learner's
        precision (the reference policy; the policy itself before the update)."""
        config = self.config
        prompts = SharedPrompts(model, batch.rollouts, detach=False) if config.share_prompt else None
        parts = []
        for c in chunks:
            with self.autocast():
                parts.append(token_logprobs(model, batch.rows(c), config.temperature, share_prompt=config.share_prompt,
                                            grad=False, prompts=prompts)[0])
            if prompts is not None:
                prompts.release(c.stop)
        return self._whole(parts, chunks, batch.rollouts.logprobs)

    def _update_actor(self, batch: Batch, chunks: list[slice], mask: torch.Tensor, logps: ActorInputs,
                      advantages: torch.Tensor, normalizer: Any, kl_coef: float | torch.Tensor,
                      answer_mask: torch.Tensor | None = None) -> dict[str, float]:
        """`num_iterations` updates of the policy; `kl_coef` is beta, or (B, T) per token. With `answer_mask`
        (LaTRO), the loss adds `answer_loss_weight` times -log pi(gold answer | question, rationale), summed over
        the answer's tokens and averaged over the batch's rows (Proposition 2's second term).

        Where `logps.old` is None, pi_old is the policy's own log-probs in the first update's forward pass (the
        weights are still the sampled ones there), kept for the later updates; with a rollout correction, each
        token's policy loss is weighted by pi_old / pi_rollout."""
        config = self.config
        aggregate = AGGREGATIONS.get(self.aggregation)
        policy_loss = POLICY_LOSSES.get(config.policy_loss)
        kl_estimator = KL_ESTIMATORS.get(config.kl_estimator)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        old_logp = logps.old if logps.old is not None else torch.zeros_like(logps.rollout)
        take_old = logps.old is None
        weights = torch.ones_like(logps.rollout)  # (B, T) rollout correction; 1 without one
        entropy_coef = self.entropy.value
        tokens = mask.sum().clamp(min=1.0)  # the entropy bonus is a mean over the batch's tokens
        totals: dict[str, float] = {}
        clock = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for iteration in range(config.num_iterations):
            self.gradients.zero()
            loss_sum = 0.0
            # each prompt once per step, across micro-batches; its gradient flows back after its last row
            prompts = SharedPrompts(self.models.policy, batch.rollouts, detach=True) if config.share_prompt else None
            for c in chunks:
                started = time.perf_counter()
                with self.autocast():
                    logp, entropy = token_logprobs(self.models.policy, batch.rows(c), config.temperature,
                                                   share_prompt=config.share_prompt,
                                                   with_entropy=iteration == 0 or entropy_coef > 0,
                                                   entropy_grad=entropy_coef > 0, prompts=prompts)
                first = iteration == 0
                if first and take_old:
                    old_logp[c] = logp.detach()
                if first and config.correction_mode != "none":
                    weights[c], mismatch = rollout_weights(
                        old_logp[c], logps.rollout[c], mask[c], config.correction_mode,
                        cap=config.rollout_correction_cap, cap_low=config.rollout_correction_cap_low)
                    _add(totals, [(f"mismatch/{name}", value) for name, value in _stat_items(mismatch)],
                         float(mask[c].sum()) / max(float(mask.sum()), 1.0))
                per_token, pstats = policy_loss(
                    logp, old_logp[c], advantages[c], mask[c], eps_low=config.epsilon, eps_high=config.clip_high,
                    dual_clip=config.dual_clip, ratio_level=config.ratio_level,
                )
                per_token = per_token * weights[c]
                if logps.ref is not None and config.kl_in == "loss":
                    coef = kl_coef[c] if isinstance(kl_coef, torch.Tensor) else kl_coef
                    kl = (unbiased_k3(logp, old_logp[c], logps.ref[c]) if config.unbiased_kl
                          else kl_estimator(logp, logps.ref[c]))
                    per_token = per_token + coef * kl
                loss = aggregate(per_token, mask[c], normalizer)
                if entropy_coef > 0 and entropy is not None:
                    loss = loss - entropy_coef * (entropy * mask[c]).sum() / tokens
                if answer_mask is not None:
                    nll = answer_nll(logp, answer_mask[c]).sum() / len(batch.rollouts)
                    loss = loss + config.answer_loss_weight * nll
                    if first:
                        totals["answer_nll"] = totals.get("answer_nll", 0.0) + float(nll.detach())
                backward_started = time.perf_counter()
                loss.backward()
                if prompts is not None:
                    prompts.release(c.stop)
                clock["forward"] += backward_started - started
                clock["backward"] += time.perf_counter() - backward_started
                loss_sum += float(loss.detach())
                if first:
                    weight = float(mask[c].sum()) / max(float(mask.sum()), 1.0)
                    _add(totals, _stat_items(pstats), weight)
                    if entropy is not None:
                        _add(totals, [("entropy", _masked_mean(entropy.detach(), mask[c]))], weight)
            started = time.perf_counter()
            self.shard.reduce(self.gradients.buffers)  # the whole batch's gradient in every process
            loss_sum = self.shard.reduce_numbers({"loss": loss_sum})["loss"]
            grad_norm = self._apply(self.optimizer, params, loss_sum)
            clock["optimizer"] += time.perf_counter() - started
            if iteration == 0:
                totals = self.shard.reduce_numbers(totals)
                totals["loss"], totals["grad_norm"] = loss_sum, grad_norm
        if config.entropy_coef > 0 or config.entropy_target is not None:
            totals["entropy_coef"] = entropy_coef
            if "entropy" in totals:
                self.entropy.update(totals["entropy"])
        return totals | {f"time/{phase}": seconds for phase, seconds in clock.items()}

    def _apply(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], loss: float) -> float:
        """One clipped update, counted, or skipped (and counted) when the loss or gradient is not finite."""
        grad_norm, applied = clipped_step(optimizer, params, self.config.max_grad_norm, loss)
        self.updates += 1
        self.skipped_updates += not applied
        return grad_norm

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
            self.shard.reduce([p.grad for p in critic.parameters() if p.grad is not None])
            loss_sum = self.shard.reduce_numbers({"value_loss": loss_sum})["value_loss"]
            self._apply(optimizer, list(critic.parameters()), loss_sum)
            optimizer.zero_grad(set_to_none=True)
            totals["value_loss"] = loss_sum
        critic.eval()
        for name, value in _stat_items(vstats):
            totals[f"critic/{name}"] = value
        return totals


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


def _chunks(rows: slice, micro: int) -> list[slice]:
    start, stop = rows.start or 0, rows.stop
    return [slice(i, min(i + micro, stop)) for i in range(start, stop, micro)]


class ActorInputs(NamedTuple):
    """The (B, T) log-probs of the sampled tokens the actor's loss compares with: the sampler's, pi_old's (None:
    taken in the first update's forward pass) and the reference's (None without a KL term)."""

    rollout: torch.Tensor
    old: torch.Tensor | None
    ref: torch.Tensor | None


def _add(totals: dict[str, float], items: list[tuple[str, float]], weight: float) -> None:
    """Add `weight` x each value into `totals` (token-weighted means over the micro-batches)."""
    for name, value in items:
        totals[name] = totals.get(name, 0.0) + weight * value


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum().clamp(min=1.0))


def _stat_items(stats: Any) -> list[tuple[str, float]]:
    fields = stats._asdict() if hasattr(stats, "_asdict") else vars(stats)
    return [(name, float(value)) for name, value in fields.items()]


def _examples(task: Task, split: str, limit: int | None) -> list[Example]:
    examples = task.examples(split, limit)
    if not examples:
        raise IncentivizeError(f"task {task.name} has no {split} examples")
    return examples


