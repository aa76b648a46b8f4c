"""Inference-time compute: choosing one answer among N sampled completions (voting, best-of-N by a
verifier, verifier-weighted voting, top-k voting) and the accuracy-vs-N sweep. Pure Python."""

from incentivize.inference.selection import (
    Problem,
    SelectSpec,
    Selector,
    best_of_n,
    build_selectors,
    majority,
    parse_select,
    pass_at_1,
    plot_sweep,
    sweep,
    sweep_markdown,
    sweep_sizes,
    top_k_vote,
    weighted_vote,
)

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
