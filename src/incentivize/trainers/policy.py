"""The models an RL run holds (policy, reference, critic) and the learner's forward pass."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from incentivize.algorithms.logprobs import entropy_from_logits, selective_log_softmax
from incentivize.config import RLConfig
from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.models.heads import ValueModel
from incentivize.rollout import Rollouts


@dataclass
class Models:
    policy: Any
    tokenizer: Any
    reference: Any | None  # None: no KL term, or LoRA (the reference is the policy with adapters off)
    critic: ValueModel | None
    uses_lora: bool

    @contextmanager
    def reference_policy(self) -> Iterator[Any]:
        """The frozen reference: a separate copy, or the policy with its LoRA adapters disabled."""
        if self.uses_lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.reference


def build_models(config: RLConfig) -> Models:
    policy, tokenizer = load(config.model)
    uses_lora = config.use_peft
    if uses_lora:
        policy = _with_lora(policy, config)
    reference = None
    if config.beta > 0 and not uses_lora:
        reference = copy.deepcopy(policy)
        reference.requires_grad_(False)
    critic = None
    if config.advantage == "gae":
        critic = ValueModel.from_causal_lm(load(config.critic_model)[0] if config.critic_model else policy)
        critic.eval()
    policy.eval()  # no dropout: the learner must see the same distribution the engine sampled from
    return Models(policy, tokenizer, reference, critic, uses_lora)


def _with_lora(model: Any, config: RLConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise IncentivizeError(f"config lora_target_modules: {err}") from None


@dataclass
class Batch:
    """The learner's view of some rollout rows: model inputs and where the completion starts."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T)

    @classmethod
    def from_rollouts(cls, rollouts: Rollouts) -> Batch:
        attention = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1)
        return cls(
            input_ids=torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1),
            attention_mask=attention,
            position_ids=(attention.cumsum(dim=1) - 1).clamp(min=0),
            completion_ids=rollouts.completion_ids,
            completion_mask=rollouts.completion_mask,
        )


def token_logprobs(
    model: Any, batch: Batch, temperature: float, *, with_entropy: bool = False, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) at `temperature`, (B, T); and the policy entropy per token if asked."""
    width = batch.completion_ids.shape[1]
    with nullcontext() if grad else torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            logits_to_keep=width + 1, use_cache=False,
        ).logits[:, :-1] / temperature  # (B, T, V): position p predicts token p + 1
        logp = selective_log_softmax(logits, batch.completion_ids)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
    return logp, entropy


def token_values(critic: ValueModel, batch: Batch) -> torch.Tensor:
    """The critic's value of the state before each completion token, (B, T)."""
    width = batch.completion_ids.shape[1]
    values = critic(batch.input_ids, batch.attention_mask, batch.position_ids)  # (B, P + T)
    return values[:, -width - 1 : -1]
