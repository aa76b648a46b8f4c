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

Sampling is seeded per prompt: the uniform draws of a prompt's samples come from its own seed
(`seeds`, by default derived from `params.seed` and the prompt's position), so a prompt's completions
do not depend on which other prompts share its batch. Several processes that each sample some of a
step's prompts with those prompts' seeds produce the same completions as one process sampling all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, Field

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
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    prompt_index: torch.Tensor
    finish_reasons: list[str]
    pad_token_id: int

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
) -> Rollouts:
    """Sample `params.n` completions for each prompt in one batch.

    `decode` turns token ids into text; it is needed only when `params.stop` is not empty.
    `on_token(k)` is called after each decoding step with the number of sequences still running.
    `seeds` has one seed per prompt (default `prompt_seeds(params.seed, len(prompts))`).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise IncentivizeError("generate() needs at least one prompt and no empty prompt")
    if params.stop and decode is None:
        raise IncentivizeError("stop strings need a decode function (pass decode=tokenizer.decode)")
    device = next(model.parameters()).device
    batch = len(prompts) * params.n
    unique_ids, unique_mask = _left_pad([list(p) for p in prompts], pad_token_id, device)
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
    cache_arg = cache_argument(model)

    with torch.inference_mode():
        # Prefill each distinct prompt once, then copy its cache for its n samples.
        positions = (unique_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(
            input_ids=unique_ids, attention_mask=unique_mask, position_ids=positions,
            use_cache=True, logits_to_keep=1, **{cache_arg: None},
        )
        # each row's cache gets room for all its new tokens up front: no copy to grow it at every step
        cache = preallocate(out[cache_arg], unique_ids.shape[1] + params.max_new_tokens, repeats=params.n)
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

    prompt_ids = unique_ids.repeat_interleave(params.n, dim=0)
    prompt_mask = unique_mask.repeat_interleave(params.n, dim=0)
    width = int(mask.sum(dim=1).max())
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=tokens[:, :width].clone(),
        completion_mask=mask[:, :width].clone(),
        logprobs=logprobs[:, :width].clone(),
        prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(params.n),
        finish_reasons=reasons,
        pad_token_id=pad_token_id,
    )


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
