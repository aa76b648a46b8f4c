"""An AI judge: any causal LM, prompted with a rubric, grades one answer or compares two.

The verdict is read from the judge's next-token distribution, restricted to the rubric's labels (no
free text is generated or parsed): after the rubric, rendered through the judge's chat template with
the assistant's turn opened, the probability of each label's token, renormalised over the labels.

- `grade(questions, answers)`: P(the first label) of `GRADE_LABELS` ("Yes": the answer is correct).
- `compare(questions, answers_a, answers_b)`: P(answer a is the better one). Each pair is judged in
  both orders and the two verdicts averaged, which cancels the judge's preference for a position
  (RLAIF, Lee et al. 2023, section 3.1, do the same).

`JudgeReward` is `--reward judge:MODEL` in RL (the reward is the grade); the preference trainer labels
pairs with `compare` (`labeller: judge`) and the reward-model trainer its solutions with `grade`.
A rubric must hold its placeholders (`{question}` and `{answer}` to grade; `{question}`, `{answer_a}`
and `{answer_b}` to compare) and each label must be one token of the judge's vocabulary.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch

from incentivize.errors import IncentivizeError
from incentivize.tasks.base import render_prompt

GRADE_RUBRIC = (
    "Here is a question and a proposed answer.\n\nQuestion: {question}\n\nProposed answer:\n{answer}\n\n"
    "Is the proposed answer's final result correct? Reply with Yes or No."
)
COMPARE_RUBRIC = (
    "Here is a question and two answers.\n\nQuestion: {question}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\n"
    "Which answer reaches the correct final result? Reply with A or B."
)
GRADE_LABELS = ("Yes", "No")
COMPARE_LABELS = ("A", "B")
PLACEHOLDERS = {"grade": {"question", "answer"}, "compare": {"question", "answer_a", "answer_b"}}


def rubric_problem(rubric: str, kind: str) -> str | None:
    """What is wrong with `rubric` as a `kind` ("grade" or "compare") rubric, or None when it is usable."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as err:
        return f"is not a format string ({err}); write placeholders as {{question}}, and braces as {{{{ }}}}"
    missing, unknown = PLACEHOLDERS[kind] - fields, fields - PLACEHOLDERS[kind]
    if missing:
        return f"lacks the placeholder(s) {', '.join('{' + m + '}' for m in sorted(missing))}"
    if unknown:
        return (f"has unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}; "
                f"a {kind} rubric takes {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS[kind]))}")
    return None


def label_token_ids(tokenizer: Any, labels: Sequence[str], field: str, model: str) -> list[int]:
    """The single token id of each label; an error naming `field` when a label is not one token."""
    ids = []
    for label in labels:
        tokens = tokenizer.encode(label, add_special_tokens=False)
        if len(tokens) != 1:
            raise IncentivizeError(
                f"{field}: the label {label!r} is {len(tokens)} tokens in the vocabulary of {model}, not one; "
                "choose labels that are single tokens (e.g. Yes/No, A/B)"
            )
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise IncentivizeError(f"{field}: the labels {list(labels)} are not distinct tokens of {model}")
    return ids


class Judge:
    """A causal LM that grades answers and compares pairs of answers by its label probabilities."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "judge", grade_rubric: str = GRADE_RUBRIC,
                 compare_rubric: str = COMPARE_RUBRIC, grade_labels: Sequence[str] = GRADE_LABELS,
                 compare_labels: Sequence[str] = COMPARE_LABELS, batch_size: int = 8) -> None:
        for rubric, kind, field in ((grade_rubric, "grade", "judge_grade_rubric"),
                                    (compare_rubric, "compare", "judge_compare_rubric")):
            problem = rubric_problem(rubric, kind)
            if problem:
                raise IncentivizeError(f"{field}: the rubric {problem}")
        self.model, self.tokenizer, self.name, self.batch_size = model.eval(), tokenizer, name, batch_size
        self.grade_rubric, self.compare_rubric = grade_rubric, compare_rubric
        self.grade_ids = label_token_ids(tokenizer, grade_labels, "judge_grade_labels", name)
        self.compare_ids = label_token_ids(tokenizer, compare_labels, "judge_compare_labels", name)

    def grade(self, questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        """P(the first grade label, "Yes") for each answer to its question."""
        texts = [self.grade_rubric.format(question=q, answer=a) for q, a in zip(questions, answers, strict=True)]
        return self._label_probabilities(texts, self.grade_ids)[:, 0].tolist()

    def compare(self, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]) -> list[float]:
        """P(answer a is better than answer b), the mean of the verdicts with a shown first and b shown first."""
        rows = list(zip(questions, answers_a, answers_b, strict=True))
        forward = [self.compare_rubric.format(question=q, answer_a=a, answer_b=b) for q, a, b in rows]
        backward = [self.compare_rubric.format(question=q, answer_a=b, answer_b=a) for q, a, b in rows]
        p = self._label_probabilities(forward + backward, self.compare_ids)
        return ((p[: len(rows), 0] + p[len(rows) :, 1]) / 2).tolist()

    @torch.inference_mode()
    def _label_probabilities(self, texts: list[str], label_ids: list[int]) -> torch.Tensor:
        """(len(texts), len(label_ids)): the next-token distribution after each rubric, over the labels only."""
        out = []
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            prompts = [render_prompt(self.tokenizer, [{"role": "user", "content": t}])
                       for t in texts[start : start + self.batch_size]]
            width = max(map(len, prompts))  # left padding: every row's next token is at the last position
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            out.append(torch.softmax(logits[:, label_ids], dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(label_ids))


def load_judge(model: str, field: str = "judge", **options: Any) -> Judge:
    """The judge `model` (a name `incentivize.models.load` knows, a directory or a .gguf file); an error that
    cannot load it names `field`, the setting that gave the model."""
    from incentivize.models import load

    try:
        lm, tokenizer = load(model)
    except IncentivizeError as err:
        raise IncentivizeError(f"{field}: the judge cannot be loaded: {err}") from None
    return Judge(lm, tokenizer, name=model, **options)


class JudgeReward:
    """`--reward judge:MODEL`: the judge's grade of each completion, P(correct) in [0, 1]."""

    trusted = True  # the library's own model code: no time limit (a large judge on a slow CPU is not a hang)
    proxy_kind = "probability"  # for the sophistry monitor: a grade is P(correct)

    def __init__(self, spec: str, **options: Any) -> None:
        self.spec = spec
        self.__name__ = spec  # the metric's name
        self.judge = load_judge(spec.split(":", 1)[1], f"rewards: {spec}", **options)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        questions = columns.get("question") or [str(p) for p in prompts]
        return self.judge.grade([str(q) for q in questions], [str(c) for c in completions])


class JudgeVerifier:
    """The judge as a verifier for `incentivize eval --select judge:MODEL`: best-of-N by its grade."""

    kind = "judge"

    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def score(self, prompts: list[str], completions: list[str], *, questions: list[str]) -> list[float]:
        return self.judge.grade(questions, completions)


def is_judge_spec(spec: str) -> bool:
    return spec.startswith("judge:") and len(spec) > len("judge:")
