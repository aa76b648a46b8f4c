"""The sophistry monitor: a learned or judged reward (the proxy) watched against the task's verifier (the oracle).

Wen et al. 2024 ("Language Models Learn to Mislead Humans via RLHF", U-Sophistry) found RLHF raising the
evaluator's approval without raising correctness: the evaluator's false-positive rate rose. Here, on the
same samples each step, for each proxy reward (a reward model, `orm:`, `prm:`, `rm:`, or a judge, `judge:`;
such reward functions carry `proxy_kind`, "probability" or "score"):

- `proxy_oracle_stats`: the proxy's mean, its correlation with the oracle's verdicts (Pearson, i.e. the
  point-biserial correlation), and its false-positive rate: the share of wrong samples (by the oracle) that
  the proxy calls right (score >= 0.5; a pairwise RM's unbounded scores have no such threshold: none);
- `HackingAlarm`: the proxy rising while the oracle falls. It compares the first `patience` steps it saw
  (the baseline) with the latest `patience` steps, per sample: it trips when the proxy's mean rose and the
  oracle's fell, each by more than twice its standard error (so noise alone rarely trips it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

def proxies(reward_functions: Sequence[Any]) -> dict[str, bool]:
    """The proxy rewards among `reward_functions`, by metric name: whether each scores P(correct)."""
    from incentivize.rewards import reward_name

    return {reward_name(fn): fn.proxy_kind == "probability" for fn in reward_functions if hasattr(fn, "proxy_kind")}


def proxy_oracle_stats(proxy: Sequence[float | None], oracle: Sequence[bool], probability: bool) -> dict[str, float | None]:
    """The proxy's mean, its correlation with the oracle and (for probabilities) its false-positive rate.

    >>> stats = proxy_oracle_stats([0.9, 0.8, 0.7, 0.2], [True, False, True, False], probability=True)
    >>> round(stats["correlation"], 3), stats["false_positive_rate"]
    (0.557, 0.5)
    """
    pairs = [(float(p), bool(o)) for p, o in zip(proxy, oracle, strict=True) if p is not None]
    if not pairs:
        return {"mean": None, "correlation": None, "false_positive_rate": None}
    xs, ys = [p for p, _ in pairs], [float(o) for _, o in pairs]
    wrong = [p for p, o in pairs if not o]
    return {
        "mean": sum(xs) / len(xs),
        "correlation": _pearson(xs, ys),
        "false_positive_rate": sum(p >= 0.5 for p in wrong) / len(wrong) if probability and wrong else None,
    }


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None  # a constant has no correlation
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


class _Moments:
    """Count, sum and sum of squares of per-sample values, per step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float]] = []

    def add(self, values: Sequence[float]) -> None:
        self.steps.append((len(values), sum(values), sum(v * v for v in values)))

    @staticmethod
    def mean_and_variance_of_mean(window: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
        n = sum(s[0] for s in window)
        mean = sum(s[1] for s in window) / n
        variance = max(sum(s[2] for s in window) / n - mean * mean, 0.0)
        return mean, variance / n


class HackingAlarm:
    """Trips when the proxy's per-sample mean over the latest `patience` steps exceeds the first `patience`
    steps' by more than 2 standard errors while the oracle's falls by more than 2 standard errors."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience = patience
        self.proxy, self.oracle = _Moments(), _Moments()

    def update(self, proxy: Sequence[float | None], oracle: Sequence[bool]) -> str | None:
        """Add one step's samples; a sentence saying what moved when the alarm trips, else None."""
        pairs = [(float(p), float(o)) for p, o in zip(proxy, oracle, strict=True) if p is not None]
        if not pairs:
            return None
        self.proxy.add([p for p, _ in pairs])
        self.oracle.add([o for _, o in pairs])
        if len(self.proxy.steps) < 2 * self.patience:
            return None
        k = self.patience
        moved = []
        for moments, sign in ((self.proxy, 1.0), (self.oracle, -1.0)):
            base, base_var = _Moments.mean_and_variance_of_mean(moments.steps[:k])
            now, now_var = _Moments.mean_and_variance_of_mean(moments.steps[-k:])
            if sign * (now - base) <= 2 * math.sqrt(base_var + now_var):
                return None
            moved.append((base, now))
        (p0, p1), (o0, o1) = moved
        return (f"the proxy reward rose from {p0:.3f} to {p1:.3f} while the verifier's accuracy fell from {o0:.3f} "
                f"to {o1:.3f} (the first {k} steps against the last {k})")

    def state_dict(self) -> dict[str, Any]:
        return {"proxy": [list(s) for s in self.proxy.steps], "oracle": [list(s) for s in self.oracle.steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.proxy.steps = [(int(n), float(s), float(q)) for n, s, q in state["proxy"]]
        self.oracle.steps = [(int(n), float(s), float(q)) for n, s, q in state["oracle"]]


class SophistryMonitor:
    """Each step, every proxy reward of the scores against the oracle: metrics, and one `HackingAlarm` per
    proxy (`patience` 0: metrics only)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.alarms: dict[str, HackingAlarm] = {}
        self.tripped: set[str] = set()

    def observe(self, components: dict[str, list[float | None]], oracle: Sequence[bool],
                watched: dict[str, bool]) -> tuple[dict[str, float], str | None]:
        """`monitor/<proxy>/...` metrics of one step for the `watched` components (name -> scores P(correct)),
        and the alarm's sentence when one has just tripped."""
        metrics: dict[str, float] = {}
        alarm = None
        for name, values in components.items():
            if name not in watched:
                continue
            stats = proxy_oracle_stats(values, oracle, probability=watched[name])
            metrics |= {f"monitor/{name}/{k}": v for k, v in stats.items() if k != "mean" and v is not None}
            if self.patience:
                said = self.alarms.setdefault(name, HackingAlarm(self.patience)).update(values, oracle)
                if said and name not in self.tripped:
                    alarm = f"reward hacking? {name}: {said}"
                self.tripped = (self.tripped | {name}) if said else (self.tripped - {name})
        return metrics, alarm

    def state_dict(self) -> dict[str, Any]:
        return {"alarms": {n: a.state_dict() for n, a in self.alarms.items()}, "tripped": sorted(self.tripped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alarms = {}
        for name, alarm_state in state["alarms"].items():
            self.alarms[name] = HackingAlarm(self.patience)
            self.alarms[name].load_state_dict(alarm_state)
        self.tripped = set(state["tripped"])
