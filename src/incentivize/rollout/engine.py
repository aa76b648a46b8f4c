"""Batched sampling with a KV cache, returning what an RL learner needs.

`generate` takes prompts as token ids, samples `n` completions per prompt (a prompt's samples stay
contiguous: rows `i*n .. i*n+n-1` belong to prompt `i`), and returns a `Rollouts` record with the
completion ids, the log-probability of every sampled token, a completion mask and finish reasons.

Log-probabilities are those of the policy at the sampling temperature, `log_softmax(logits / T)`
(T = 1 for greedy decoding). top-k and top-p only restrict which tokens may be drawn; they are not
folded into the returned log-probabilities, so a learner's forward pass with `logits / T` reproduces
them exactly (the convention of TRL and verl). With top-k and top-p off (the RL default) the two
distributions are the same.

The mask covers every generated token up to and including the one that ended the sequence (the EOS
token or the token that completed a stop string), so the stop token gets a gradient; padding after
it has mask 0.

A prompt may come with the KV cache of its beginning (`past`, a `KVState` from an earlier call with
`keep_states=True`): only the rest of it is prefilled. A multi-turn episode keeps its cache this way from
one turn to the next instead of reading the whole conversation again.

Sampling is seeded per prompt: the uniform draws of a prompt's samples come from its own seed
(`seeds`, by default derived from `params.seed` and the prompt's position), so a prompt's completions
do not depend on which other prompts share its batch. Several processes that each sample some of a
step's prompts with those prompts' seeds produce the same completions as one process sampling all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field
from transformers.cache_utils import DynamicCache

from incentivize.errors import IncentivizeError
from incentivize.models.cache import cache_argument, preallocate


class SamplingParams(BaseModel):
    """How to sample. `temperature=0` means greedy decoding."""

    model_config = {"extra": "forbid"}

    n: int = Field(default=1, ge=1, description="completions per prompt, kept contiguous")
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k")
    max_new_tokens: int = Field(default=256, ge=1)
    stop: list[str] = Field(default_factory=list, description="stop strings; kept in the completion")
    seed: int = 0


@dataclass
class KVState:
    """The keys and values a sequence's first `length` tokens left in the model's cache: per layer, (heads, length,
    head_dim) keys and values, ready to continue that sequence without reading it again."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int


@dataclass
class Rollouts:
    """A batch of B = len(prompts) * n sampled completions.

    prompt_ids:      (B, P) long, left-padded with the pad id
    prompt_mask:     (B, P) long, 1 on real prompt tokens
    completion_ids:  (B, T) long, right-padded with the pad id
    completion_mask: (B, T) long, 1 on generated tokens up to and including the EOS / stop token
    logprobs:        (B, T) float32, log pi(token) at the sampling temperature; 0 where masked
    prompt_index:    (B,)   long, which input prompt each row came from
    finish_reasons:  B strings: "eos", "stop" (a stop string) or "length"
    pad_token_id:    the id used for padding
    states:          from `generate(..., keep_states=True)` only: per row, the cache of its prompt and completion
                     but the last token (what the model has read); not carried by `select` or `concat`
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    prompt_index: torch.Tensor
    finish_reasons: list[str]
    pad_token_id: int
    states: list[KVState] | None = None

    def __len__(self) -> int:
        return len(self.finish_reasons)

    def select(self, rows: Sequence[int]) -> Rollouts:
        """The given rows, in that order, trimmed to the padding they still need."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.prompt_ids.device)
        prompt_mask, completion_mask = self.prompt_mask[index], self.completion_mask[index]
        start = int((prompt_mask.sum(dim=0) > 0).nonzero().min()) if len(index) else 0
        width = int(_widths(completion_mask).max()) if len(index) else 0
        return Rollouts(
            prompt_ids=self.prompt_ids[index, start:],
            prompt_mask=prompt_mask[:, start:],
            completion_ids=self.completion_ids[index, :width],
            completion_mask=completion_mask[:, :width],
            logprobs=self.logprobs[index, :width],
            prompt_index=self.prompt_index[index],
            finish_reasons=[self.finish_reasons[i] for i in index.tolist()],
            pad_token_id=self.pad_token_id,
        )

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """Rows of all parts, re-padded to common widths; prompt indices are offset to stay distinct."""
        pad = parts[0].pad_token_id
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        width = max(p.completion_ids.shape[1] for p in parts)

        def left(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (prompt_width - t.shape[1], 0), value=value)

        def right(t: torch.Tensor, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += int(p.prompt_index.max()) + 1 if len(p) else 0
        return Rollouts(
            prompt_ids=torch.cat([left(p.prompt_ids, pad) for p in parts]),
            prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
            completion_ids=torch.cat([right(p.completion_ids, pad) for p in parts]),
            completion_mask=torch.cat([right(p.completion_mask, 0) for p in parts]),
            logprobs=torch.cat([right(p.logprobs, 0.0) for p in parts]),
            prompt_index=torch.cat([p.prompt_index + o for p, o in zip(parts, offsets)]),
            finish_reasons=[r for p in parts for r in p.finish_reasons],
            pad_token_id=pad,
        )

    @classmethod
    def from_token_lists(cls, prompts: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]],
                         logprobs: Sequence[Sequence[float]], mask: Sequence[Sequence[int]], reasons: list[str],
                         pad: int, prompt_index: Sequence[int] | None = None) -> Rollouts:
        """Rows built from per-row lists (prompt ids; completion ids with their log-probs and mask), padded;
        `prompt_index` says which rows share a prompt (default: none do)."""
        count = len(prompts)
        prompt_width, width = max(len(p) for p in prompts), max(1, max(len(t) for t in tokens))
        prompt_ids = torch.full((count, prompt_width), pad, dtype=torch.long)
        prompt_mask = torch.zeros((count, prompt_width), dtype=torch.long)
        completion_ids = torch.full((count, width), pad, dtype=torch.long)
        completion_mask = torch.zeros((count, width), dtype=torch.long)
        values = torch.zeros((count, width))
        for i in range(count):
            prompt_ids[i, prompt_width - len(prompts[i]):] = torch.tensor(list(prompts[i]), dtype=torch.long)
            prompt_mask[i, prompt_width - len(prompts[i]):] = 1
            n = len(tokens[i])
            if n:
                completion_ids[i, :n] = torch.tensor(list(tokens[i]), dtype=torch.long)
                completion_mask[i, :n] = torch.tensor(list(mask[i]), dtype=torch.long)
                values[i, :n] = torch.tensor(list(logprobs[i]))
        index = torch.arange(count) if prompt_index is None else torch.tensor(list(prompt_index), dtype=torch.long)
        return cls(prompt_ids, prompt_mask, completion_ids, completion_mask, values, index, reasons, pad)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """(B,) the tokens each row trains on (the model's; a multi-turn row's environment tokens excluded)."""
        return self.completion_mask.sum(dim=1)

    def completion_token_lists(self) -> list[list[int]]:
        """Each row's completion tokens up to its last model token (with a multi-turn row's environment tokens)."""
        widths = _widths(self.completion_mask).tolist()
        return [row[:n] for row, n in zip(self.completion_ids.tolist(), widths)]


def _widths(mask: torch.Tensor) -> torch.Tensor:
    """(B,) one past the last position of each row where `mask` is 1 (0 for an empty row): a row's length also
    when its mask has holes (a multi-turn episode's environment tokens).

    >>> _widths(torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])).tolist()
    [2, 3, 0]
    """
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.bool() * positions).amax(dim=1) if mask.shape[1] else mask.sum(dim=1)


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    decode: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int], None] | None = None,
    seeds: Sequence[int] | None = None,
    past: Sequence[KVState | None] | None = None,
    keep_states: bool = False,
) -> Rollouts:
    """Sample `params.n` completions for each prompt in one batch.

    `decode` turns token ids into text; it is needed only when `params.stop` is not empty.
    `on_token(k)` is called after each decoding step with the number of sequences still running.
    `seeds` has one seed per prompt (default `prompt_seeds(params.seed, len(prompts))`).
    `past` has per prompt the cache of its first `length` tokens (or None): only the rest is prefilled.
    `keep_states` returns each row's cache in `Rollouts.states`, to continue it in a later call.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise IncentivizeError("generate() needs at least one prompt and no empty prompt")
    if params.stop and decode is None:
        raise IncentivizeError("stop strings need a decode function (pass decode=tokenizer.decode)")
    if past is not None and len(past) != len(prompts):
        raise IncentivizeError(f"generate() got {len(past)} cache states for {len(prompts)} prompts")
    device = next(model.parameters()).device
    batch = len(prompts) * params.n
    prompt_ids, prompt_mask = _left_pad([list(p) for p in prompts], pad_token_id, device)
    cache_arg = cache_argument(model)
    unique_ids, unique_mask, past_cache = _prefill_inputs(model, prompts, past, pad_token_id, device)
    seeds = list(seeds) if seeds is not None else prompt_seeds(params.seed, len(prompts))
    if len(seeds) != len(prompts):
        raise IncentivizeError(f"generate() got {len(seeds)} seeds for {len(prompts)} prompts")
    uniforms = _uniforms(seeds, params.n, params.max_new_tokens).to(device)  # (B, max_new_tokens)
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)

    tokens = torch.full((batch, params.max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, params.max_new_tokens), dtype=torch.float32, device=device)
    mask = torch.zeros((batch, params.max_new_tokens), dtype=torch.long, device=device)
    running = torch.ones(batch, dtype=torch.bool, device=device)
    reasons = ["length"] * batch
    max_stop_tokens = max((len(s) for s in params.stop), default=0) + 4
    states: list[KVState | None] = [None] * batch

    with torch.inference_mode():
        # Prefill each distinct prompt once (past its cached beginning), then copy its cache for its n samples.
        positions = (unique_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(
            input_ids=unique_ids, attention_mask=unique_mask, position_ids=positions[:, -unique_ids.shape[1]:],
            use_cache=True, logits_to_keep=1, **{cache_arg: past_cache},
        )
        # each row's cache gets room for all its new tokens up front: no copy to grow it at every step
        prefill_width = unique_mask.shape[1]
        cache = preallocate(out[cache_arg], prefill_width + params.max_new_tokens, repeats=params.n)
        logits = out.logits[:, -1, :].float().repeat_interleave(params.n, dim=0)  # (B, V)
        attention = unique_mask.repeat_interleave(params.n, dim=0)
        positions = positions[:, -1:].repeat_interleave(params.n, dim=0)
        active = torch.arange(batch, device=device)  # original row of each row in the live batch

        for t in range(params.max_new_tokens):
            next_tokens, next_logprobs = _sample(logits, params, uniforms[active, t])
            live = running[active]
            rows = active[live]
            tokens[rows, t] = next_tokens[live]
            logprobs[rows, t] = next_logprobs[live]
            mask[rows, t] = 1

            for i in rows[torch.isin(next_tokens[live], eos)].tolist():
                reasons[i] = "eos"
                running[i] = False
            if params.stop:
                assert decode is not None
                for i in rows[running[rows]].tolist():
                    tail = decode(tokens[i, max(0, t + 1 - max_stop_tokens) : t + 1].tolist())
                    if any(s in tail for s in params.stop):
                        reasons[i] = "stop"
                        running[i] = False
            if on_token is not None:
                on_token(int(running.sum()))
            live = running[active]
            if not live.any() or t + 1 == params.max_new_tokens:
                break
            if int(live.sum()) <= 0.75 * len(active):
                # Drop finished rows so they stop costing compute; copying the cache is not free,
                # so only when a quarter of the batch is done.
                keep = live.nonzero().flatten()
                if keep_states:
                    _keep_states(states, cache, active, ~live, attention[:, :prefill_width], mask)
                cache.batch_select_indices(keep)
                active, attention, positions = active[keep], attention[keep], positions[keep]
                next_tokens = next_tokens[keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            positions = positions + 1
            out = model(
                input_ids=next_tokens[:, None], attention_mask=attention, position_ids=positions,
                use_cache=True, logits_to_keep=1, **{cache_arg: cache},
            )
            cache = out[cache_arg]
            logits = out.logits[:, -1, :].float()
        if keep_states:
            _keep_states(states, cache, active, torch.ones_like(active, dtype=torch.bool), attention[:, :prefill_width],
                         mask)

    width = int(mask.sum(dim=1).max())
    return Rollouts(
        prompt_ids=prompt_ids.repeat_interleave(params.n, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(params.n, dim=0),
        completion_ids=tokens[:, :width].clone(),
        completion_mask=mask[:, :width].clone(),
        logprobs=logprobs[:, :width].clone(),
        prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(params.n),
        finish_reasons=reasons,
        pad_token_id=pad_token_id,
        states=[state for state in states if state is not None] if keep_states else None,
    )


def _prefill_inputs(model: torch.nn.Module, prompts: Sequence[Sequence[int]], past: Sequence[KVState | None] | None,
                    pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """What the prefill reads: the input ids (B, S), the attention mask over cache and input (B, P + S) and the
    cache (None without `past`). Each row's cached beginning sits at the right end of the P cache columns and the
    rest of its prompt at the right end of the S input columns; the columns between are masked out."""
    states = list(past) if past is not None else [None] * len(prompts)
    cached = [0 if state is None else state.length for state in states]
    if not any(cached):
        ids, mask = _left_pad([list(p) for p in prompts], pad_id, device)
        return ids, mask, None
    if any(length >= len(prompt) for length, prompt in zip(cached, prompts)):
        raise IncentivizeError("a cache state covers a whole prompt: the prompt must go on past its cached beginning")
    ids, suffix_mask = _left_pad([list(p[n:]) for p, n in zip(prompts, cached)], pad_id, device)
    width = max(cached)
    cache_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, length in enumerate(cached):
        cache_mask[row, width - length:] = 1  # (an empty slice for a row without a state)
    template = next(state for state in states if state is not None)  # a row without a state has length 0
    cache = DynamicCache()
    for layer in range(len(template.layers)):
        keys, values = [], []
        for state, length in zip(states, cached):
            k, v = (state or template).layers[layer]
            keys.append(torch.nn.functional.pad(k[:, :length], (0, 0, width - length, 0)))  # zeros on the left
            values.append(torch.nn.functional.pad(v[:, :length], (0, 0, width - length, 0)))
        cache.update(torch.stack(keys), torch.stack(values), layer)
    return ids, torch.cat([cache_mask, suffix_mask], dim=1), cache


def _keep_states(states: list[KVState | None], cache: Any, active: torch.Tensor, rows: torch.Tensor,
                 prefill_mask: torch.Tensor, mask: torch.Tensor) -> None:
    """Store the cache of the live batch's `rows` (bool) under their original rows: the prefill columns they
    attend to, then the decoding columns of their sampled tokens but the last (never fed to the model)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise IncentivizeError("keeping the KV cache across calls needs a transformers cache with layers (>= 4.56)")
    width = prefill_mask.shape[1]
    for position in rows.nonzero().flatten().tolist():
        row = int(active[position])
        sampled = int(mask[row].sum())
        columns = torch.cat([prefill_mask[position].nonzero().flatten(),
                             torch.arange(width, width + sampled - 1, device=mask.device)])
        kept = [(layer.keys[position].index_select(1, columns), layer.values[position].index_select(1, columns))
                for layer in layers]
        states[row] = KVState(kept, len(columns))


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def prompt_seeds(base: int, count: int, start: int = 0) -> list[int]:
    """Seeds of prompts `start .. start + count - 1` of a batch seeded with `base`, spread apart so that
    batches with nearby bases share no seed.

    >>> prompt_seeds(0, 3) == prompt_seeds(0, 5)[:3] and prompt_seeds(0, 2, start=3) == prompt_seeds(0, 5)[3:]
    True
    """
    return [(base * 0x9E3779B97F4A7C15 + start + i) % 2**63 for i in range(count)]


def _uniforms(seeds: Sequence[int], n: int, steps: int) -> torch.Tensor:
    """(len(seeds) * n, steps) uniform draws in [0, 1): prompt i's n rows from its own seed."""
    return torch.cat([torch.rand((n, steps), generator=torch.Generator().manual_seed(seed)) for seed in seeds])


def _sample(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from `logits` (B, V) with the row's uniform draw `uniforms` (B,); return it
    and its log-probability.

    Sampling inverts the cumulative distribution with one uniform draw per row, which costs one
    exponential and one cumulative sum over the vocabulary; `torch.multinomial` draws an exponential
    variate per vocabulary entry, several times slower on a CPU.
    """
    if params.temperature == 0.0:
        chosen = logits.argmax(dim=-1)
        return chosen, torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)
    scaled = logits if params.temperature == 1.0 else logits / params.temperature
    allowed = scaled
    if params.top_k > 0 and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        allowed = allowed.masked_fill(allowed < kth, float("-inf"))
    if params.top_p < 1.0:
        allowed = _top_p_filter(allowed, params.top_p)
    peak = allowed.amax(dim=-1, keepdim=True)  # (B, 1)
    cumulative = torch.exp(allowed - peak).cumsum(dim=-1)  # (B, V) unnormalised CDF
    total = cumulative[:, -1:]
    draw = uniforms[:, None].to(total.dtype) * total
    # right=True: the first entry whose CDF exceeds the draw, so zero-probability tokens are never picked
    chosen = torch.searchsorted(cumulative, draw, right=True).clamp(max=scaled.shape[-1] - 1).squeeze(1)
    if allowed is scaled:
        log_normalizer = peak.squeeze(1) + torch.log(total.squeeze(1))
    else:
        log_normalizer = torch.logsumexp(scaled, dim=-1)
    return chosen, scaled.gather(1, chosen[:, None]).squeeze(1) - log_normalizer


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches `top_p` (at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
