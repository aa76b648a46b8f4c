"""The entropy bonus of a policy-gradient loss, with a static or an adaptive coefficient.

    L = L_policy - c * Hbar,   Hbar = sum_t H_t m_t / (valid tokens of the global batch)

H_t is the full-vocabulary entropy of the policy at completion position t, with gradient. Hbar is
the mean per-token entropy whatever the policy loss's aggregation (TRL's convention; verl aggregates
it like the policy term, so its coefficient means something different under each loss type).

The adaptive coefficient is Skywork-OR1's controller (arXiv 2505.22312; TRL `use_adaptive_entropy`):
after each step, with H_w that step's mean token entropy and H_tgt the target,

    c <- min(c + delta, c_max)  if H_w <= H_tgt   else   max(c - delta, c_min)

and the next step applies c while the entropy is at or below the target, 0 above it. The
coefficient is part of the run's state: a resumed run continues with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EntropyCoefficient:
    """The coefficient c of the entropy bonus: fixed (`target` None) or steered towards `target` nats.

    ALGORITHMS.md section 15's table: c = 0.01, delta 0.005, target 0.2; entropies 0.15, 0.15, 0.30.

    >>> control = EntropyCoefficient(0.01, target=0.2, delta=0.005)
    >>> [round(control.update(h), 3) for h in (0.15, 0.15, 0.30)]
    [0.015, 0.02, 0.0]
    >>> round(control.coefficient, 3)
    0.015
    """

    coefficient: float = 0.0
    target: float | None = None
    delta: float = 0.005
    minimum: float = 0.0
    maximum: float = 1.0
    applied: float | None = None  # what the next step applies; None before the first update: `coefficient`

    def __post_init__(self) -> None:
        if self.applied is None:
            self.applied = self.coefficient

    @property
    def value(self) -> float:
        """The coefficient the next step's loss uses."""
        return self.coefficient if self.applied is None else self.applied

    def update(self, entropy: float) -> float:
        """Take one step's mean token entropy; return the coefficient the next step applies."""
        if self.target is None:
            return self.coefficient
        below = entropy <= self.target
        if below:
            self.coefficient = min(self.coefficient + self.delta, self.maximum)
        else:
            self.coefficient = max(self.coefficient - self.delta, self.minimum)
        self.applied = self.coefficient if below else 0.0
        return self.applied

    def state_dict(self) -> dict[str, float | None]:
        return {"coefficient": self.coefficient, "applied": self.applied}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.coefficient = float(state["coefficient"] or 0.0)
        self.applied = state.get("applied")
