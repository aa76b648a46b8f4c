"""Multi-turn episodes: the model's turn, the environment's message, the model's turn again, up to `max_turns`.

An `Environment` is one episode's counterpart: `reset(example)` gives the first prompt (chat messages) and
`step(completion)` answers each model turn with a `Turn`: the turn's reward and the environment's next message,
or None when the episode is over. The conversation is rendered through the chat template; the environment's
message enters as the tokens the template puts between the end of an assistant turn and the start of the next
(`turn_separator`), so the tokens the model sampled are kept exactly as sampled, never re-tokenized.

`run_episodes` returns one `Rollouts` row per episode whose "completion" is the whole exchange after the first
prompt: model turns with their sampling log-probabilities and mask 1, the environment's tokens with mask 0 (a
learner trains on the model's tokens only; the advantage estimators take such non-contiguous masks), plus each
turn's reward and span. Each episode keeps its KV cache from one turn to the next (`KVState`): a turn reads only
the last token of the model's previous turn and the environment's message, not the whole conversation again
(`keep_cache=False` reads it all, as a learner's forward pass does; the log-probabilities agree to float rounding).

An environment that raises or overruns `timeout_s` in `step` ends its episode only: the turn's reward is NaN
and the fault is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from incentivize.errors import IncentivizeError
from incentivize.rollout.engine import KVState, Rollouts, SamplingParams, generate, prompt_seeds
from incentivize.tasks.base import Example, render_prompt
from incentivize.timelimit import TimedOut, call_with_time_limit

Messages = list[dict[str, str]]


@dataclass
class Turn:
    """The environment's answer to one model turn."""

    reward: float
    message: str | None = None  # the next user message; None: the episode is over


class Environment(Protocol):
    def reset(self, example: Example) -> Messages: ...

    def step(self, completion: str) -> Turn: ...


@dataclass
class Episodes:
    """B episodes.

    rollouts:     one row per episode; completion = model turns and environment tokens, mask 1 on the model's
    turn_rewards: (B, max_turns) float, NaN where a turn did not happen or its environment failed
    turn_spans:   per episode, (start, end) of each model turn in the completion tokens
    texts:        per episode, the text of each model turn
    turn_reasons: per episode, how each model turn ended: "eos", "stop" or "length"
    faults:       per episode, the error text of an environment that failed (None: no failure)
    """

    rollouts: Rollouts
    turn_rewards: torch.Tensor
    turn_spans: list[list[tuple[int, int]]]
    texts: list[list[str]]
    turn_reasons: list[list[str]]
    faults: list[str | None] = field(default_factory=list)


def episode_seeds(prompt_seeds: Sequence[int], n: int) -> list[int]:
    """Seeds of n episodes per prompt, sample j of prompt i drawn from prompt i's seed, all distinct.

    >>> len(set(episode_seeds([5, 6, 7], 4))), episode_seeds([5], 2) == episode_seeds([5, 6], 2)[:2]
    (12, True)
    """
    return [(seed * 0x9E3779B97F4A7C15 + j) % 2**63 for seed in prompt_seeds for j in range(n)]


def turn_separator(tokenizer: Any, message: str, eos_token_ids: Sequence[int]) -> Callable[[bool], list[int]]:
    """The token ids between a model turn and the next one, carrying the user `message`: the rest of the
    assistant turn's closing as the chat template writes it, the user turn, and the generation prompt. The
    returned function takes whether the model's turn ended with an end-of-turn token (then that token is not
    repeated)."""
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n" + message + "\n\n"
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return lambda ended: ids
    marker = "\x00assistant-turn\x00"
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    closed = tokenizer.apply_chat_template(convo, tokenize=False)
    full = tokenizer.apply_chat_template([*convo, {"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    if marker not in closed or not full.startswith(closed):
        raise IncentivizeError("the chat template does not hold a conversation of several turns (it rewrites or "
                               "drops earlier turns); multi-turn episodes need one that does")
    closing = closed[closed.index(marker) + len(marker):]  # e.g. "<|im_end|>\n"
    rest = full[len(closed):]
    end_texts = [str(tokenizer.decode([i])) for i in eos_token_ids]
    after_end = next((closing[len(e):] for e in end_texts if e and closing.startswith(e)), None)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    with_end, without_end = encode(closing + rest), encode((after_end if after_end is not None else closing) + rest)
    return lambda ended: without_end if ended else with_end


def run_episodes(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example],
                 environments: Sequence[Environment], params: SamplingParams, max_turns: int, *,
                 eos_token_ids: Sequence[int], seeds: Sequence[int] | None = None, timeout_s: float = 10.0,
                 batch_size: int = 64, progress: Callable[[int], None] | None = None,
                 keep_cache: bool = True) -> Episodes:
    """Episodes of `environments[i]` on `examples[i]` (params.n must be 1: give one environment per sample),
    each turn sampled from `model` by `generate`, `batch_size` conversations at a time, with the episode's own
    seed for that turn, so an episode does not depend on the others in its batch. `progress(n)` gets the
    number of model turns completed. With `keep_cache` each episode's KV cache carries over to its next turn."""
    if max_turns < 1:
        raise IncentivizeError(f"max_turns must be at least 1, got {max_turns}")
    if params.n != 1:
        raise IncentivizeError("run_episodes samples one episode per environment: give params.n = 1")
    if len(examples) != len(environments):
        raise IncentivizeError(f"{len(examples)} examples for {len(environments)} environments")
    count = len(examples)
    seeds = list(seeds) if seeds is not None else prompt_seeds(params.seed, count)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = [render_prompt(tokenizer, env.reset(example)) for env, example in zip(environments, examples)]
    tokens: list[list[int]] = [[] for _ in range(count)]
    logps: list[list[float]] = [[] for _ in range(count)]
    mask: list[list[int]] = [[] for _ in range(count)]
    rewards = torch.full((count, max_turns), float("nan"))
    spans: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    texts: list[list[str]] = [[] for _ in range(count)]
    faults: list[str | None] = [None] * count
    reasons: list[list[str]] = [[] for _ in range(count)]
    caches: list[KVState | None] = [None] * count
    live = list(range(count))
    separators: dict[str, Callable[[bool], list[int]]] = {}  # message -> its tokens between turns
    for turn in range(max_turns):
        next_live = []
        seeds_now = [(seeds[i] + 0x51ED * turn) % 2**63 for i in live]
        keep = keep_cache and turn + 1 < max_turns
        for i, ids, row_logps, reason, cache in _sample_turn(
            model, [prompts[i] + tokens[i] for i in live], [caches[i] for i in live], live, params, seeds_now,
            eos_token_ids, pad, tokenizer.decode, batch_size, progress, keep,
        ):
            caches[i] = cache
            start = len(tokens[i])
            tokens[i] += ids
            logps[i] += row_logps
            mask[i] += [1] * len(ids)
            spans[i].append((start, len(tokens[i])))
            reasons[i].append(reason)
            text = str(tokenizer.decode(ids, skip_special_tokens=True))
            texts[i].append(text)
            try:
                answer = call_with_time_limit(lambda: environments[i].step(text), timeout_s)
                rewards[i, turn] = float(answer.reward)
            except TimedOut:
                faults[i] = f"the environment's step took longer than {timeout_s:g}s"
                continue
            except Exception as error:  # an environment's bug costs its episode, not the batch
                faults[i] = f"{type(error).__name__}: {error}"
                continue
            if answer.message is None or turn + 1 == max_turns:
                caches[i] = None
                continue
            if answer.message not in separators:  # environments often say the same thing to every episode
                separators[answer.message] = turn_separator(tokenizer, answer.message, eos_token_ids)
            separator = separators[answer.message](reason == "eos")
            tokens[i] += separator
            logps[i] += [0.0] * len(separator)
            mask[i] += [0] * len(separator)
            next_live.append(i)
        live = next_live
        if not live:
            break
    rollouts = Rollouts.from_token_lists(prompts, tokens, logps, mask, [r[-1] if r else "length" for r in reasons],
                                         pad)
    return Episodes(rollouts, rewards, spans, texts, reasons, faults)


TurnSample = tuple[int, list[int], list[float], str, "KVState | None"]


def _sample_turn(model: torch.nn.Module, conversations: list[list[int]], caches: list[KVState | None],
                 episodes: list[int], params: SamplingParams, seeds: list[int], eos_token_ids: Sequence[int], pad: int,
                 decode: Callable[..., Any], batch_size: int, progress: Callable[[int], None] | None,
                 keep_cache: bool) -> list[TurnSample]:
    """One model turn of each conversation (whose beginning `caches` may hold): (episode, sampled ids, their
    log-probs, finish reason, the conversation's cache with `keep_cache`), in input order, sampled in batches
    of similar length."""
    order = sorted(range(len(conversations)), key=lambda k: len(conversations[k]))
    results: dict[int, TurnSample] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out = generate(model, [conversations[k] for k in chunk], params, eos_token_ids=eos_token_ids,
                       pad_token_id=pad, decode=decode, seeds=[seeds[k] for k in chunk],
                       past=[caches[k] for k in chunk], keep_states=keep_cache)
        for row, (k, ids) in enumerate(zip(chunk, out.completion_token_lists())):
            results[k] = (episodes[k], ids, out.logprobs[row, : len(ids)].tolist(), out.finish_reasons[row],
                          out.states[row] if out.states is not None else None)
        if progress is not None:
            progress(len(chunk))
    return [results[k] for k in range(len(conversations))]


def turn_numbers(spans: Sequence[Sequence[tuple[int, int]]], width: int) -> torch.Tensor:
    """(B, width) long: the number (1, 2, ...) of the model turn each completion token belongs to, 0 for the
    environment's tokens and padding.

    >>> turn_numbers([[(0, 2), (4, 5)], [(0, 1)]], 6).tolist()
    [[1, 1, 0, 0, 2, 0], [1, 0, 0, 0, 0, 0]]
    """
    numbers = torch.zeros((len(spans), width), dtype=torch.long)
    for row, row_spans in enumerate(spans):
        for turn, (start, end) in enumerate(row_spans, start=1):
            numbers[row, start : min(end, width)] = turn
    return numbers
