"""Choosing one answer among N sampled completions, and how that choice scales with N.

A selector sees one problem's samples: their extracted answers (None where none could be parsed)
and, for the verifier-based ones, one score per sample, higher is better. It returns the index of
the sample it picks (None when there is nothing to pick); the pick is right when that sample is.
Voting groups answers as :func:`incentivize.inference.voting.majority_vote` does: numbers by value
(``"1,000"`` votes with ``"1000.0"``), ties to the answer seen first.

- :func:`majority`: self-consistency, the most common answer (Wang et al. 2022).
- :func:`best_of_n`: the sample the verifier scores highest (Cobbe et al. 2021; Lightman et al.
  2023 compare ORM and PRM verifiers this way).
- :func:`weighted_vote`: each answer weighs the sum of its samples' scores, which must be
  probabilities of being correct, in [0, 1] (Li et al. 2023, "verifier-weighted voting").
- :func:`top_k_vote`: a majority vote among the k best-scored samples; Cobbe et al. found voting
  among the verifier's top 3 to 5 of 100 better than taking the single best.
- :func:`pass_at_1`: the expected accuracy of one random sample, the baseline.

:func:`sweep` estimates each selector's accuracy with only N of the N_max samples available, for
N = 1, 2, 4, ..., N_max, and :func:`plot_sweep` draws the result. Pure Python, no torch.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from incentivize.errors import IncentivizeError
from incentivize.inference.voting import majority_vote, pass_at_k, vote_key

__all__ = [
    "Problem",
    "SelectSpec",
    "Selector",
    "best_of_n",
    "build_selectors",
    "majority",
    "parse_select",
    "pass_at_1",
    "plot_sweep",
    "sweep",
    "sweep_markdown",
    "sweep_sizes",
    "top_k_vote",
    "weighted_vote",
]


# ---------------------------------------------------------------------------------------------
# Selectors: one problem's samples in, the index of the chosen sample out.


def majority(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample of the most common answer; None when no sample has an answer.

    >>> majority(["3", "4", "4.0", None, "3"])  # "3" and "4" have two votes each; "3" came first
    0
    >>> majority(["5", "1,000", "1000"]), majority([None, " "])
    (1, None)
    """
    winner = majority_vote(answers)
    return None if winner is None else list(answers).index(winner)


def best_of_n(scores: Sequence[float]) -> int | None:
    """Index of the highest score (the first of equal ones); None for no samples.

    >>> best_of_n([0.2, 0.9, 0.9, 0.1]), best_of_n([])
    (1, None)
    """
    _check_scores(scores, len(scores))
    if not scores:
        return None
    return max(range(len(scores)), key=scores.__getitem__)


def weighted_vote(answers: Sequence[str | None], scores: Sequence[float]) -> int | None:
    """Index of the first sample of the answer with the largest summed score; None if no answer.

    Scores are the verifier's probabilities that a sample is correct, in [0, 1]: a sum of
    probabilities is an expected number of correct votes, while unbounded scores (a reward model's
    logits) could outvote with a single sample or vote against with negative weight.

    >>> weighted_vote(["3", "4", "4"], [0.9, 0.3, 0.4])  # 0.9 for "3" beats 0.3 + 0.4 for "4"
    0
    >>> weighted_vote(["3", "4", "4"], [0.6, 0.3, 0.4]), weighted_vote([None], [1.0])
    (1, None)
    """
    _check_scores(scores, len(answers), probabilities=True)
    weights: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (answer, score) in enumerate(zip(answers, scores)):
        if answer is None or not answer.strip():
            continue
        key = vote_key(answer)
        weights[key] = weights.get(key, 0.0) + score
        first.setdefault(key, i)
    if not weights:
        return None
    return first[max(weights, key=weights.__getitem__)]  # max keeps the first of equal weights


def top_k_vote(answers: Sequence[str | None], scores: Sequence[float], k: int) -> int | None:
    """Keep the k best-scored samples (the earlier of equal scores), then :func:`majority` among them.

    >>> answers, scores = ["3", "4", "4", "5", "4"], [0.9, 0.8, 0.7, 0.95, 0.1]
    >>> top_k_vote(answers, scores, 1), top_k_vote(answers, scores, 3), top_k_vote(answers, scores, 4)
    (3, 0, 1)
    """
    if k < 1:
        raise ValueError(f"top-k voting needs k >= 1, got {k}")
    _check_scores(scores, len(answers))
    kept = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])
    winner = majority([answers[i] for i in kept])
    return None if winner is None else kept[winner]


def pass_at_1(correct: Sequence[bool]) -> float:
    """The expected accuracy of one sample drawn at random: the share of correct samples.

    >>> pass_at_1([True, False, False, True])
    0.5
    """
    if not correct:
        raise ValueError("pass@1 needs at least one sample")
    return sum(map(bool, correct)) / len(correct)


def _check_scores(scores: Sequence[float], n: int, *, probabilities: bool = False) -> None:
    if len(scores) != n:
        raise ValueError(f"got {len(scores)} scores for {n} samples")
    for score in scores:
        if not math.isfinite(score):
            raise ValueError(f"scores must be finite numbers, got {score}")
        if probabilities and not 0.0 <= score <= 1.0:
            raise ValueError(f"verifier-weighted voting needs scores that are probabilities in [0, 1], got {score}")


METHODS = ("majority", "best", "weighted", "top")


@dataclass(frozen=True)
class Selector:
    """One way of choosing: ``method`` is ``majority``, ``best`` (best-of-N), ``weighted`` or ``top``
    (top-k, then vote); ``verifier`` names the scores it reads (none for majority); ``k`` is top's k.

    >>> Selector("best", "orm").name, Selector("weighted", "prm").name, Selector("top", "orm", k=3).name
    ('orm', 'weighted:prm', 'top3:orm')
    >>> Selector("top", "orm", k=2).choose(["1", "2", "2"], {"orm": [0.9, 0.5, 0.8]})
    0
    """

    method: str
    verifier: str | None = None
    k: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown selection method {self.method!r}; use one of {', '.join(METHODS)}")
        if (self.method == "majority") != (self.verifier is None):
            raise ValueError(f"{self.method} {'takes no' if self.method == 'majority' else 'needs a'} verifier")
        if (self.method == "top") != (self.k >= 1):
            raise ValueError("k (>= 1) goes with top-k voting only")

    @property
    def name(self) -> str:
        if self.method == "majority":
            return "majority"
        if self.method == "best":
            return str(self.verifier)
        prefix = f"top{self.k}" if self.method == "top" else self.method
        return f"{prefix}:{self.verifier}"

    def choose(self, answers: Sequence[str | None], scores: Mapping[str, Sequence[float]]) -> int | None:
        """Index of the chosen sample; ``scores`` maps verifier names to one score per sample."""
        if self.method == "majority":
            return majority(answers)
        assert self.verifier is not None
        if self.verifier not in scores:
            raise ValueError(f"selector {self.name} needs scores from verifier {self.verifier!r}")
        own = scores[self.verifier]
        if self.method == "best":
            _check_scores(own, len(answers))
            return best_of_n(own)
        if self.method == "weighted":
            return weighted_vote(answers, own)
        return top_k_vote(answers, own, self.k)


# ---------------------------------------------------------------------------------------------
# The --select option: "majority,orm:DIR,prm:DIR,weighted:DIR,top3:DIR".

SELECT_HELP = (
    "comma-separated ways to choose one answer among the --samples completions: majority (vote); "
    "orm:DIR, prm:DIR or rm:DIR (best-of-N by the verifier that `incentivize train orm|prm|rm` wrote to DIR); "
    "judge:MODEL (best-of-N by an AI judge's grade); "
    "weighted:DIR (votes weighted by an orm/prm verifier's probabilities); topK:DIR, e.g. top3:DIR "
    "(vote among the K best-scored). Example: --select majority,orm:runs/orm/final,top3:runs/orm/final"
)
_VERIFIER_KINDS = ("orm", "prm", "rm", "judge")
_PROBABILITY_KINDS = ("orm", "prm", "judge")  # kinds whose scores are probabilities of being correct
_TOP = re.compile(r"top(?P<k>\d+)")


@dataclass(frozen=True)
class SelectSpec:
    """One item of ``--select``: a method, and for the verifier-based ones the verifier's directory
    and, for ``orm:``/``prm:``/``rm:``, the kind of verifier the directory must hold."""

    method: str
    path: str | None = None
    kind: str | None = None
    k: int = 0


def parse_select(text: str) -> list[SelectSpec]:
    """The items of a ``--select`` value, in order, without repeats; raises IncentivizeError.

    >>> [(s.method, s.path, s.kind, s.k) for s in parse_select("majority, orm:runs/o,top3:runs/o")]
    [('majority', None, None, 0), ('best', 'runs/o', 'orm', 0), ('top', 'runs/o', None, 3)]
    >>> parse_select("best:x")
    Traceback (most recent call last):
    ...
    incentivize.errors.IncentivizeError: --select: unknown selector 'best:x'; use majority, orm:DIR, prm:DIR, rm:DIR, judge:MODEL, weighted:DIR or topK:DIR (e.g. top3:DIR)
    """
    specs: list[SelectSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, colon, path = (part.strip() for part in item.partition(":"))
        top = _TOP.fullmatch(name)
        if name == "majority":
            if colon:
                raise IncentivizeError(f"--select: majority takes no verifier, got {item!r}")
            spec = SelectSpec("majority")
        elif name in _VERIFIER_KINDS or name == "weighted" or top:
            if not path:
                what = "a judge model: judge:MODEL" if name == "judge" else f"a verifier directory: {name}:DIR"
                raise IncentivizeError(f"--select: {name} needs {what}")
            if top:
                if int(top["k"]) < 1:
                    raise IncentivizeError(f"--select: top-k voting needs k >= 1, got {item!r}")
                spec = SelectSpec("top", path, k=int(top["k"]))
            elif name == "weighted":
                spec = SelectSpec("weighted", path)
            else:
                spec = SelectSpec("best", path, kind=name)
        else:
            raise IncentivizeError(
                f"--select: unknown selector {item!r}; use majority, orm:DIR, prm:DIR, rm:DIR, judge:MODEL, "
                "weighted:DIR or topK:DIR (e.g. top3:DIR)"
            )
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise IncentivizeError(f"--select: no selector in {text!r}; e.g. --select majority,orm:DIR")
    return specs


def build_selectors(specs: Sequence[SelectSpec], kinds: Mapping[str, str]) -> tuple[list[Selector], dict[str, str]]:
    """The selectors, and a name for each verifier directory, given each directory's verifier kind.

    A verifier is named by its kind (``orm``), or ``kind:DIR`` when two directories hold the same
    kind. ``orm:DIR`` must name an ORM (likewise prm, rm), and weighted voting needs probabilities.

    >>> specs = parse_select("majority,prm:p,weighted:o,top3:o")
    >>> selectors, names = build_selectors(specs, {"p": "prm", "o": "orm"})
    >>> [s.name for s in selectors], names
    (['majority', 'prm', 'weighted:orm', 'top3:orm'], {'p': 'prm', 'o': 'orm'})
    >>> build_selectors(parse_select("orm:p"), {"p": "prm"})
    Traceback (most recent call last):
    ...
    incentivize.errors.IncentivizeError: --select orm:p: p holds a prm verifier, not an orm; write prm:p
    """
    paths = list(dict.fromkeys(spec.path for spec in specs if spec.path is not None))
    missing = [path for path in paths if path not in kinds]
    if missing:
        raise ValueError(f"no verifier kind given for {', '.join(missing)}")
    shared = {kind for kind in kinds.values() if sum(kinds[p] == kind for p in paths) > 1}
    names = {path: f"{kinds[path]}:{path}" if kinds[path] in shared else kinds[path] for path in paths}
    selectors: list[Selector] = []
    for spec in specs:
        if spec.path is None:
            selectors.append(Selector("majority"))
            continue
        kind = kinds[spec.path]
        if spec.kind is not None and spec.kind != kind:
            raise IncentivizeError(
                f"--select {spec.kind}:{spec.path}: {spec.path} holds {_a(kind)} verifier, not {_a(spec.kind)}; "
                f"write {kind}:{spec.path}"
            )
        if spec.method == "weighted" and kind not in _PROBABILITY_KINDS:
            raise IncentivizeError(
                f"--select weighted:{spec.path}: weighted voting needs probabilities of being correct, and {spec.path} "
                f"holds {_a(kind)} verifier with unbounded scores; use an orm or prm verifier, or top3:{spec.path}"
            )
        selectors.append(Selector(spec.method, names[spec.path], spec.k))
    return selectors, names


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" or kind in ("orm", "rm") else f"a {kind}"


# ---------------------------------------------------------------------------------------------
# The N sweep.


@dataclass(frozen=True)
class Problem:
    """One problem's N_max samples: extracted answers, whether each is correct, and per verifier
    name one score per sample."""

    answers: Sequence[str | None]
    correct: Sequence[bool]
    scores: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.correct):
            raise ValueError(f"got {len(self.answers)} answers and {len(self.correct)} correctness flags")
        for name, values in self.scores.items():
            if len(values) != len(self.answers):
                raise ValueError(f"verifier {name}: got {len(values)} scores for {len(self.answers)} samples")


def sweep_sizes(n_max: int) -> list[int]:
    """N = 1, 2, 4, ... up to n_max, and n_max itself.

    >>> sweep_sizes(8), sweep_sizes(6), sweep_sizes(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    if n_max < 1:
        raise ValueError(f"a sweep needs at least one sample per problem, got {n_max}")
    return sorted({2**i for i in range(n_max.bit_length()) if 2**i <= n_max} | {n_max})


def sweep(
    problems: Sequence[Problem],
    selectors: Sequence[Selector],
    *,
    sizes: Sequence[int] | None = None,
    trials: int = 200,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Accuracy of each selector when only N of each problem's N_max samples are available.

    For each N in ``sizes`` (default :func:`sweep_sizes`) and each problem, every selector chooses
    among the same subsets of N samples (kept in their original order): all C(N_max, N) subsets
    when there are at most ``trials`` of them (so N = N_max is exact: the one subset of all
    samples), else ``trials`` subsets drawn at random with ``seed``. Returns
    ``{name: {N: accuracy}}`` with the rows ``pass@1`` (one random sample, the same for every N),
    each selector by :attr:`Selector.name`, and ``pass@N`` (some sample of the N is correct: what a
    perfect verifier would reach), all exact but the sampled subsets.

    >>> problems = [Problem(["1", "2", "2"], [True, False, False], {"orm": [0.9, 0.2, 0.3]})]
    >>> table = sweep(problems, [Selector("majority"), Selector("best", "orm")])
    >>> {name: [round(acc, 3) for acc in row.values()] for name, row in table.items()}
    {'pass@1': [0.333, 0.333, 0.333], 'majority': [0.333, 0.667, 0.0], 'orm': [0.333, 0.667, 1.0], 'pass@N': [0.333, 0.667, 1.0]}
    """
    if not problems:
        raise ValueError("a sweep needs at least one problem")
    n_max = len(problems[0].answers)
    if any(len(p.answers) != n_max for p in problems):
        raise ValueError("every problem needs the same number of samples for a sweep")
    sizes = sorted(set(sizes)) if sizes is not None else sweep_sizes(n_max)
    if not sizes or sizes[0] < 1 or sizes[-1] > n_max:
        raise ValueError(f"sweep sizes must lie in 1..{n_max}, got {sizes}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    names = [s.name for s in selectors]
    if len(set(names)) != len(names) or {"pass@1", "pass@N"} & set(names):
        raise ValueError(f"selector names must be distinct, got {names}")

    rng = random.Random(seed)
    totals = {name: dict.fromkeys(sizes, 0.0) for name in names}
    for problem in problems:
        # Canonical answers vote exactly as the originals do, and cost less to compare again.
        answers = [None if a is None or not a.strip() else vote_key(a) for a in problem.answers]
        for size in sizes:
            subsets: Sequence[tuple[int, ...]]
            if math.comb(n_max, size) <= trials:
                subsets = list(combinations(range(n_max), size))
            else:
                subsets = [tuple(sorted(rng.sample(range(n_max), size))) for _ in range(trials)]
            hits = dict.fromkeys(names, 0)
            for subset in subsets:
                sub_answers = [answers[i] for i in subset]
                sub_scores = {name: [values[i] for i in subset] for name, values in problem.scores.items()}
                for selector in selectors:
                    chosen = selector.choose(sub_answers, sub_scores)
                    hits[selector.name] += chosen is not None and bool(problem.correct[subset[chosen]])
            for name in names:
                totals[name][size] += hits[name] / len(subsets)

    table: dict[str, dict[int, float]] = {}
    table["pass@1"] = dict.fromkeys(sizes, sum(pass_at_1(p.correct) for p in problems) / len(problems))
    for name in names:
        table[name] = {size: total / len(problems) for size, total in totals[name].items()}
    table["pass@N"] = {
        size: sum(pass_at_k(n_max, sum(map(bool, p.correct)), size) for p in problems) / len(problems) for size in sizes
    }
    return table


def sweep_markdown(table: Mapping[str, Mapping[int, float]]) -> str:
    """The sweep as a markdown table: a row per selector, a column per N.

    >>> print(sweep_markdown({"pass@1": {1: 0.5, 2: 0.5}, "majority": {1: 0.5, 2: 0.625}}))
    | selector | N=1 | N=2 |
    |---|---:|---:|
    | pass@1 | 0.500 | 0.500 |
    | majority | 0.500 | 0.625 |
    """
    sizes = sorted({n for row in table.values() for n in row})
    lines = ["| selector | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name, row in table.items():
        cells = [f"{row[n]:.3f}" if n in row else "" for n in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The plot: the report's line plot (matplotlib, as SVG).


def plot_sweep(table: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "accuracy vs samples") -> None:
    """Write an SVG line chart of ``table`` (from :func:`sweep`) to ``path``: accuracy (0 to 1)
    against N on a log2 axis, one line per row, the ``pass@`` baselines dashed grey, and a legend."""
    from incentivize.plots import sweep_svg  # matplotlib loads only when a sweep is drawn

    Path(path).write_text(sweep_svg(table, title=title) + "\n", encoding="utf-8")
