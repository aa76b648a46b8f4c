"""The models an RL run holds (policy, reference, critic) and the learner's forward pass."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from incentivize.algorithms.logprobs import entropy_from_logits, selective_log_softmax
from incentivize.config import RLConfig
from incentivize.models import load
from incentivize.models.cache import cache_argument
from incentivize.models.heads import ValueModel
from incentivize.models.lora import with_lora
from incentivize.models.precision import DTYPES, RolloutCopy, check_precision
from incentivize.models.recompute import recompute_mlp
from incentivize.models.speed import LinearKernelName, enable_training_paths
from incentivize.rollout import Rollouts


@dataclass
class Models:
    policy: Any
    tokenizer: Any
    reference: Any | None  # None: no KL term, or LoRA (the reference is the policy with adapters off)
    critic: ValueModel | None
    uses_lora: bool
    speed_paths: dict[str, str] = field(default_factory=dict)  # the policy's, from enable_training_paths
    rollout: RolloutCopy | None = None  # the policy in rollout_dtype, when that is not float32

    @property
    def sampler(self) -> Any:
        """The model the engine samples the step's groups from: the rollout copy, or the policy itself."""
        return self.policy if self.rollout is None else self.rollout.model

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
        policy = with_lora(policy, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                           target_modules=config.lora_target_modules)
    reference = None
    if config.beta > 0 and not uses_lora:
        reference = copy.deepcopy(policy)
        reference.requires_grad_(False)
    critic = None
    if config.advantage == "gae":
        critic = ValueModel.from_causal_lm(load(config.critic_model)[0] if config.critic_model else policy)
        critic.eval()
    check_precision(policy, "rollout_dtype", config.rollout_dtype, allow_fp16=config.allow_fp16)
    check_precision(policy, "learner_dtype", config.learner_dtype)
    if config.learner_dtype == "float32":
        # after the reference and critic copies, which need no in-place gradients (the critic has no vocabulary layer)
        speed_paths = enable_training_paths(policy, linear=config.linear_kernel, grad_in_place=not uses_lora)
    else:  # autocast casts the products of plain linear layers; the speed paths' own products would bypass it
        speed_paths = {"linear": "torch", "grad_in_place": "off", "autocast": config.learner_dtype}
    linear = cast(LinearKernelName, speed_paths["linear"])
    if reference is not None:
        # the policy's kernel, so that log pi - log pi_ref is exactly 0 while their weights are equal: the
        # rounding differences of two kernels would be a KL gradient, which Adam scales up to full steps
        enable_training_paths(reference, linear=linear)
    if critic is not None:
        enable_training_paths(critic, linear=linear)
    if config.recompute_mlp:
        recompute_mlp(policy)
    policy.eval()  # no dropout: the learner must see the same distribution the engine sampled from
    rollout = RolloutCopy(policy, DTYPES[config.rollout_dtype]) if config.rollout_dtype != "float32" else None
    return Models(policy, tokenizer, reference, critic, uses_lora, speed_paths, rollout)


@dataclass
class Batch:
    """The learner's view of some rollout rows: prompts, completions, and which rows share a prompt.

    Rows of one group (the same prompt) are contiguous and carry the same `prompt_index`.
    `width` is the completion width of the whole rollout batch: per-token results come back at that
    width (zero beyond each row's completion) even when a micro-batch computes on fewer columns.
    """

    rollouts: Rollouts
    width: int

    @classmethod
    def from_rollouts(cls, rollouts: Rollouts) -> Batch:
        return cls(rollouts, rollouts.completion_ids.shape[1])

    def rows(self, rows: slice) -> Batch:
        """Rows `rows`, trimmed to the padding they need (`Rollouts.select`); results keep the full width."""
        return Batch(self.rollouts.select(range(rows.start or 0, min(rows.stop, len(self.rollouts)))), self.width)

    @property
    def prompt_ids(self) -> torch.Tensor:  # (B, P) left-padded
        return self.rollouts.prompt_ids

    @property
    def prompt_mask(self) -> torch.Tensor:  # (B, P)
        return self.rollouts.prompt_mask

    @property
    def completion_ids(self) -> torch.Tensor:  # (B, T) right-padded
        return self.rollouts.completion_ids

    @property
    def completion_mask(self) -> torch.Tensor:  # (B, T)
        return self.rollouts.completion_mask

    @property
    def prompt_index(self) -> torch.Tensor:  # (B,)
        return self.rollouts.prompt_index

    def full_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask and position_ids of prompt + completion, (B, P + T) each."""
        attention = torch.cat([self.prompt_mask, self.completion_mask], dim=1)
        return (torch.cat([self.prompt_ids, self.completion_ids], dim=1), attention,
                (attention.cumsum(dim=1) - 1).clamp(min=0))

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """(B, T') per-token values -> (B, width), zero on the right."""
        return torch.nn.functional.pad(values, (0, self.width - values.shape[1]))


def token_logprobs(
    model: Any, batch: Batch, temperature: float, *, share_prompt: bool = True, with_entropy: bool = False,
    grad: bool = True, prompts: SharedPrompts | None = None, entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) at `temperature`, (B, width); and the policy entropy per token if asked
    (differentiable with `entropy_grad`, for an entropy bonus; else detached).

    With `share_prompt`, each distinct prompt of the batch goes through the model once and its KV
    cache serves all its completions (the 8 completions of a GRPO group share one prompt), in the
    forward and in the backward pass; the result equals the plain full-sequence forward up to float
    rounding. Pass `prompts` (a `SharedPrompts` of the whole rollout batch) to share each prompt across
    the micro-batches of a step as well.
    """
    with nullcontext() if grad else torch.no_grad():
        if prompts is None and share_prompt:
            prompts = SharedPrompts(model, batch.rollouts, detach=False)
        logits = _full_logits(model, batch) if prompts is None else prompts.logits(batch)  # (B, T, V)
        if temperature != 1.0:
            logits = logits / temperature
        # one sequence at a time: the float32 temporaries of the softmax stay at (T, V)
        logp = batch.pad(selective_log_softmax(logits, batch.completion_ids, chunk_size=1))
    entropy = None
    if with_entropy:
        with nullcontext() if entropy_grad and grad else torch.no_grad():
            entropy = batch.pad(entropy_from_logits(logits if entropy_grad else logits.detach(), chunk_size=1))
    return logp, entropy


def _full_logits(model: Any, batch: Batch) -> torch.Tensor:
    """(B, T, V): logits at the positions that predict each completion token, from one full forward."""
    input_ids, attention, positions = batch.full_inputs()
    width = batch.completion_ids.shape[1]
    logits: torch.Tensor = model(
        input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=width + 1, use_cache=False,
    ).logits
    return logits[:, :-1]  # position p predicts token p + 1


@dataclass
class _Prefix:
    """One prompt after its forward pass: per-layer keys and values (1, heads, length, dim) and the
    logits (1, V) that predict the first completion token."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    first: torch.Tensor
    sources: list[torch.Tensor]  # with `detach`: the tensors of the prompt's graph the above were cut from


class SharedPrompts:
    """Each distinct prompt of a rollout batch through the model once, for all the rows that share it.

    `logits(batch)` computes the prompts a micro-batch needs (each at most once while it is held) and
    runs only the completions, attending to the prompts' cached keys and values. With `detach`, the
    cached tensors are leaves cut from the prompt's graph: gradients of every micro-batch collect in
    them, and `release(upto)` sends them through the prompt's forward pass once, after the rows before
    `upto` (which must include the prompt's last row) have all been backpropagated. Without `detach`
    the prompt stays in each micro-batch's graph (one call, one backward pass).
    """

    def __init__(self, model: Any, rollouts: Rollouts, *, detach: bool) -> None:
        self.model, self.rollouts, self.detach = model, rollouts, detach
        self.cache_arg = cache_argument(model)
        self.first_row: dict[int, int] = {}
        self.last_row: dict[int, int] = {}
        for row, prompt in enumerate(rollouts.prompt_index.tolist()):
            self.first_row.setdefault(prompt, row)
            self.last_row[prompt] = row
        self.held: dict[int, _Prefix] = {}
        self.supported = True  # False once the model's cache turns out not to be a plain one

    def _prefix(self, prompt: int) -> _Prefix | None:
        if prompt in self.held or not self.supported:
            return self.held.get(prompt)
        row = self.first_row[prompt]
        ids = self.rollouts.prompt_ids[row][self.rollouts.prompt_mask[row].bool()][None]  # (1, L): no padding
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        layers = getattr(out[self.cache_arg], "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            self.supported = False  # sliding-window or other cache layers: full sequences instead
            return None
        sources = [layer.keys for layer in layers] + [layer.values for layer in layers] + [out.logits[:, -1]]
        held = [t.detach().requires_grad_(t.requires_grad) for t in sources] if self.detach else sources
        n = len(layers)
        self.held[prompt] = _Prefix(ids.shape[1], held[:n], held[n : 2 * n], held[-1], sources if self.detach else [])
        return self.held[prompt]

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, T, V) like `_full_logits`, for rows of the rollout batch this was built from."""
        found = [self._prefix(p) for p in batch.prompt_index.tolist()]
        prefixes = [p for p in found if p is not None]
        if len(prefixes) < len(found):
            return _full_logits(self.model, batch)
        first = torch.stack([p.first[0] for p in prefixes])[:, None]  # (B, 1, V): predicts completion token 0
        width = batch.completion_ids.shape[1]
        if width == 1:
            return first
        prompt_width = max(p.length for p in prefixes)

        def rows(per_layer: list[list[torch.Tensor]]) -> list[torch.Tensor]:
            # left-pad each prompt's states to the widest prompt of the micro-batch: (B, heads, prompt_width, dim)
            return [torch.cat([torch.nn.functional.pad(t, (0, 0, prompt_width - t.shape[-2], 0)) for t in layer])
                    for layer in zip(*per_layer)]

        keys, values = rows([p.keys for p in prefixes]), rows([p.values for p in prefixes])
        cache = DynamicCache(ddp_cache_data=list(zip(keys, values)))
        lengths = torch.tensor([p.length for p in prefixes], device=first.device)
        prompt_mask = (torch.arange(prompt_width, device=first.device) >= prompt_width - lengths[:, None]).long()
        # Completion tokens attend to the real prompt tokens and to the tokens before them; right padding
        # comes after every real token, so a causal model never lets it change a real token's logits.
        inputs = batch.completion_ids[:, :-1]  # the last token predicts nothing we score
        attention = torch.cat([prompt_mask, torch.ones_like(inputs)], dim=1)
        positions = lengths[:, None] + torch.arange(width - 1, device=inputs.device)
        rest = self.model(input_ids=inputs, attention_mask=attention, position_ids=positions, use_cache=True,
                          logits_to_keep=width - 1, **{self.cache_arg: cache}).logits
        return torch.cat([first, rest], dim=1)

    def release(self, upto: int) -> None:
        """Drop the prompts whose rows all come before `upto`; with `detach`, backpropagate into them first."""
        for prompt in [p for p in self.held if self.last_row[p] < upto]:
            prefix = self.held.pop(prompt)
            if not self.detach:
                continue
            cut = [*prefix.keys, *prefix.values, prefix.first]
            pairs = [(source, leaf.grad) for source, leaf in zip(prefix.sources, cut)
                     if source.requires_grad and leaf.grad is not None]
            if pairs:
                torch.autograd.backward([s for s, _ in pairs], [g for _, g in pairs])


def token_values(critic: ValueModel, batch: Batch) -> torch.Tensor:
    """The critic's value of the state before each completion token, (B, width)."""
    input_ids, attention, positions = batch.full_inputs()
    width = batch.completion_ids.shape[1]
    values = critic(input_ids, attention, positions)  # (B, P + T)
    return batch.pad(values[:, -width - 1 : -1])
