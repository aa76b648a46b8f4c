"""Losses and scores of reward models: outcome (ORM), process (PRM) and pairwise (Bradley-Terry).

Pure tensor math. Shapes: B sequences, L positions, S steps, C step classes.

- Outcome verifier (Cobbe et al. 2021): a scalar logit per position trained towards the solution's
  correctness (1 or 0). "Token-level" puts the target on every completion token, "final" only on
  the last one; the score of a solution is the prediction at its last token.
- Process reward model (Lightman et al. 2023): a C = 3 way classification (negative, neutral,
  positive) at the last token of each step; a solution's score combines the steps' probabilities
  of being correct (`step_score`).
- Bradley-Terry: `-log sigmoid(r_chosen - r_rejected)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVE, NEUTRAL, POSITIVE = 0, 1, 2  # PRM step classes (PRM800K ratings -1, 0, +1)
STEP_AGGREGATIONS = ("prod", "min", "last")


def outcome_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Outcome-verifier loss: each sequence's masked positions regress to its label.

    logits (B, L) scalar per position; labels (B,) in [0, 1]; mask (B, L) which positions carry the
    target (every completion token, or only the last). Each sequence's positions are averaged
    first, so a long solution counts as much as a short one; `kind` is "bce" (on the logit) or
    "mse" (on the sigmoid; Cobbe et al. found the two about equal).

    >>> logits = torch.tensor([[0.0, 20.0], [0.0, -20.0]])
    >>> round(float(outcome_loss(logits, torch.tensor([1.0, 0.0]), torch.tensor([[0, 1], [0, 1]]))), 6)
    0.0
    >>> round(float(outcome_loss(torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3))), 4)
    0.6931
    """
    mask = mask.to(logits.dtype)
    targets = labels.to(logits.dtype)[:, None].expand_as(logits)
    if kind == "bce":
        per_position = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    elif kind == "mse":
        per_position = (torch.sigmoid(logits) - targets) ** 2
    else:
        raise ValueError(f"outcome loss kind must be 'bce' or 'mse', got {kind!r}")
    per_sequence = (per_position * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    has_target = (mask.sum(dim=1) > 0).to(logits.dtype)
    return (per_sequence * has_target).sum() / has_target.sum().clamp(min=1.0)


def step_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PRM loss: cross-entropy of each labelled step's class; labels < 0 are ignored.

    logits (S, C) at the steps' last tokens, labels (S,) long in {0 negative, 1 neutral, 2 positive}
    or -1. Steps after a solution's first negative step carry no label (Lightman et al. stop
    supervision there); the data side marks them -1.

    >>> round(float(step_loss(torch.tensor([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]), torch.tensor([2, -1]))), 4)
    0.0002
    """
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0  # keeps the graph for a batch with no labelled step
    return F.cross_entropy(logits.float(), labels, ignore_index=-1)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Pairwise loss `-log sigmoid(r_chosen - r_rejected - margin)`, averaged over pairs (B,).

    >>> round(float(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))), 4)
    0.6931
    >>> float(bradley_terry_loss(torch.tensor([30.0]), torch.tensor([0.0]))) < 1e-9
    True
    """
    return -F.logsigmoid(chosen - rejected - margin).mean()


def step_correct_probability(logits: torch.Tensor, neutral: str = "positive") -> torch.Tensor:
    """P(step is correct) from PRM class logits (..., 3): P(positive), plus P(neutral) when
    neutral steps count as correct (Lightman et al. report both mappings; "positive" scored best). With
    "neither", a step the PRM reads as most likely neutral (prose) has no score at all (NaN: no reward and
    no place in a group's normalisation, so a policy cannot climb the PRM by writing prose instead of
    calculations), and any other step scores P(positive | not neutral).

    >>> p = step_correct_probability(torch.log(torch.tensor([[0.2, 0.3, 0.5]])))
    >>> [round(v, 4) for v in p.tolist()]
    [0.8]
    >>> [round(v, 4) for v in step_correct_probability(torch.log(torch.tensor([[0.2, 0.3, 0.5]])), "negative").tolist()]
    [0.5]
    >>> neither = step_correct_probability(torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])), "neither")
    >>> [round(v, 4) for v in neither.tolist()]
    [0.7143, nan]
    """
    if neutral not in ("positive", "negative", "neither"):
        raise ValueError(f"neutral must count as 'positive', 'negative' or 'neither', got {neutral!r}")
    probs = torch.softmax(logits.float(), dim=-1)
    if neutral == "neither":
        decided = probs[..., POSITIVE] / (probs[..., POSITIVE] + probs[..., NEGATIVE]).clamp_min(1e-12)
        return torch.where(probs.argmax(-1) == NEUTRAL, torch.nan, decided)
    return probs[..., POSITIVE] + (neutral == "positive") * probs[..., NEUTRAL]


def step_score(step_probabilities: torch.Tensor, how: str = "prod") -> torch.Tensor:
    """A solution's score from its steps' P(correct) (S,): the product (the probability that every
    step is correct, Lightman et al.'s choice), the minimum, or the last step's, over the steps that have a
    score (not NaN). No such steps: 1.0 for prod/min (nothing went wrong), and 0.5 (no information) for last.

    >>> step_score(torch.tensor([0.5, 0.8, 1.0])).item(), step_score(torch.tensor([0.5, 0.8, 1.0]), "min").item()
    (0.4000000059604645, 0.5)
    >>> step_score(torch.tensor([0.5, 0.8]), "last").item(), step_score(torch.tensor([])).item()
    (0.800000011920929, 1.0)
    """
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"step aggregation must be one of {', '.join(STEP_AGGREGATIONS)}, got {how!r}")
    step_probabilities = step_probabilities[~torch.isnan(step_probabilities)]  # steps without a score count as absent
    if step_probabilities.numel() == 0:
        return torch.tensor(0.5 if how == "last" else 1.0)
    if how == "prod":
        return step_probabilities.prod()
    if how == "min":
        return step_probabilities.min()
    return step_probabilities[-1]
