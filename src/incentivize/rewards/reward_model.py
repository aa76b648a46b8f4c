"""Reward models as rewards and verifiers: an ORM, a PRM or a pairwise RM, loaded from a directory.

A trained reward model is a Hugging Face token-classification checkpoint (the backbone of the LM it
started from, plus a linear `score` head: 1 output for outcome and pairwise models, 3 for process
models) beside `incentivize_verifier.json`, which says what kind it is and how it scores:

- `orm`: sigmoid of the head at the completion's last token = P(the solution is correct);
- `prm`: at each step's last token, P(step correct) = P(positive) (+ P(neutral) when neutral counts
  as positive); the solution's score is their product, minimum or the last one (`aggregation`);
- `rm`: the head at the last token, a Bradley-Terry score (only differences mean something).

Prompt and completion are tokenized separately and joined (`incentivize.tasks.encoding.encode`), in
training and scoring alike, so a verifier sees the same tokens either way. `AutoModelForTokenClassification.from_pretrained` loads
the directory in plain transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from incentivize.algorithms.reward_losses import step_correct_probability, step_score
from incentivize.atomic import atomic_directory
from incentivize.errors import IncentivizeError, describe
from incentivize.tasks.encoding import Encoded, encode, pad

META_FILE = "incentivize_verifier.json"
KINDS = {"orm": 1, "prm": 3, "rm": 1}  # kind -> outputs of the score head


def score_head_model(lm: Any, kind: str) -> Any:
    """A token-classification model for `kind` whose backbone is a copy of causal LM `lm`'s and
    whose head starts at zero (P = 0.5 for outcome models, uniform classes for process models)."""
    import copy

    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(lm.config)
    config.num_labels = KINDS[kind]
    config.architectures = None
    for attribute in ("classifier_dropout", "hidden_dropout"):
        setattr(config, attribute, 0.0)
    model = AutoModelForTokenClassification.from_config(config)
    model.base_model.load_state_dict(lm.base_model.state_dict())
    head = score_head(model)
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model.to(next(lm.parameters()).dtype)


def score_head(model: Any) -> torch.nn.Linear:
    """The linear head of a transformers token-classification model (`score` or `classifier`)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise IncentivizeError(f"{type(model).__name__} has no linear score head; it is not a token classifier")


def save_verifier(target: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> Path:
    """The model, its tokenizer and `incentivize_verifier.json`, written atomically."""
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


class Verifier:
    """Scores completions with a trained ORM, PRM or pairwise RM."""

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any], path: str = "") -> None:
        self.model, self.tokenizer, self.meta, self.path = model.eval(), tokenizer, meta, path
        self.kind: str = meta["kind"]
        self.aggregation: str = meta.get("aggregation", "prod")
        self.neutral: str = meta.get("neutral", "positive")
        self.max_length: int | None = meta.get("max_length")

    def logits(self, encoded: list[Encoded]) -> torch.Tensor:
        """(B, L, C) head outputs at every position, in float32."""
        device = next(self.model.parameters()).device
        ids, mask = pad(encoded, self.tokenizer.pad_token_id or 0, device)
        return self.model(input_ids=ids, attention_mask=mask).logits.float()

    def score(self, prompts: list[str], completions: list[str], batch_size: int = 16,
              questions: list[str] | None = None) -> list[float]:
        """One score per completion, higher = better: P(correct) for orm and prm, a BT score for rm. A reward
        model reads the rendered prompts it was trained on; `questions` is for verifiers that read the problem."""
        if self.kind == "prm":
            return self.solution_scores(self.step_scores(prompts, completions, batch_size))
        scores: list[float] = []
        for encoded, logits in self._batches(prompts, completions, batch_size):
            last = logits[torch.arange(len(encoded)), torch.tensor([e.last for e in encoded]), 0]
            scores += (torch.sigmoid(last) if self.kind == "orm" else last).tolist()
        return scores

    def solution_scores(self, step_probabilities: list[list[float]]) -> list[float]:
        """A PRM's score of each solution from its steps' P(correct), by `aggregation` (prod, min, last)."""
        return [float(step_score(torch.tensor(p), self.aggregation)) for p in step_probabilities]

    def step_scores(self, prompts: list[str], completions: list[str], batch_size: int = 16) -> list[list[float]]:
        """P(step correct) for each step (non-blank line) of each completion; a PRM only."""
        if self.kind != "prm":
            raise IncentivizeError(f"{self.path}: step scores need a process reward model, this is a {self.kind}")
        out: list[list[float]] = []
        for encoded, logits in self._batches(prompts, completions, batch_size):
            for row, e in enumerate(encoded):
                out.append(step_correct_probability(logits[row, e.step_positions], self.neutral).tolist())
        return out

    def _batches(self, prompts: list[str], completions: list[str], batch_size: int) -> Any:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                encoded = [encode(self.tokenizer, p, c, self.max_length)
                           for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])]
                yield encoded, self.logits(encoded)


def load_verifier(path: str | Path, device: str | torch.device = "cpu") -> Verifier:
    """The reward model saved at `path` by `incentivize train orm|prm|rm`."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        what = "does not exist" if not path.exists() else f"has no {META_FILE}"
        raise IncentivizeError(
            f"{path} {what}: give the directory written by `incentivize train orm|prm|rm` (its final/ folder)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IncentivizeError(f"{meta_path}: cannot read it ({describe(err)}); retrain or restore the file") from None
    if meta.get("kind") not in KINDS:
        raise IncentivizeError(f"{meta_path}: kind must be one of {', '.join(KINDS)}, got {meta.get('kind')!r}")
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    try:
        model = AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise IncentivizeError(f"{path}: cannot load the reward model ({describe(err)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Verifier(model.to(device), tokenizer, meta, str(path))


class VerifierReward:
    """A trained reward model as a reward function (TRL's signature), named by `orm:DIR`, `prm:DIR` or
    `rm:DIR`: one score per completion (`Verifier.score`). A PRM also gives per-step rewards
    (`step_rewards`) for process-supervised advantages (`advantage: grpo_process`); the scores and
    step rewards of one batch come from one forward pass. `neutral` overrides how a PRM counts the steps it
    reads as neutral (`step_correct_probability`); None: as it was trained."""

    trusted = True  # the library's own model code: no time limit

    def __init__(self, spec: str, neutral: str | None = None) -> None:
        kind, _, path = spec.partition(":")
        self.verifier = load_verifier(path)
        if self.verifier.kind != kind:
            raise IncentivizeError(f"reward {spec}: {path} holds a {self.verifier.kind}, not a {kind}; write {self.verifier.kind}:{path}")
        if neutral is not None and kind == "prm":
            self.verifier.neutral = neutral
        self.__name__ = kind
        self.proxy_kind = "score" if kind == "rm" else "probability"  # for the sophistry monitor
        self._last: tuple[tuple[str, ...], list[list[float]]] | None = None

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        from incentivize.rewards.functions import completion_text

        prompt_texts, texts = [completion_text(p) for p in prompts], [completion_text(c) for c in completions]
        if self.verifier.kind != "prm":
            return self.verifier.score(prompt_texts, texts)
        return self.verifier.solution_scores(self.step_rewards(prompt_texts, texts))

    def step_rewards(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """P(step correct) of every step (non-blank line) of each completion."""
        key = (*prompts, "\0", *completions)
        if self._last is None or self._last[0] != key:
            self._last = (key, self.verifier.step_scores(prompts, completions))
        return self._last[1]


def is_verifier_spec(spec: str) -> bool:
    """Whether a reward spec names a trained reward model (`orm:DIR`, `prm:DIR`, `rm:DIR`)."""
    return spec.partition(":")[0] in KINDS and bool(spec.partition(":")[2])
