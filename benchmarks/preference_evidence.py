"""Tables from the runs of benchmarks/preference_evidence.sh (and benchmarks/monitor_evidence.sh): each preference
loss's implicit-reward accuracy and margin, first epoch against last, on training and validation pairs; and
held-out accuracy, wall time and peak memory of whole runs.

    python benchmarks/preference_evidence.py runs/preference-evidence
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LOSSES = ["pairs", "ipo", "cdpo", "robust", "hinge", "simpo", "kto"]
WHOLE_RUNS = ["onpolicy-dpo", "grpo"]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def resources(out: Path, name: str) -> tuple[float, float]:
    """Wall-clock minutes and peak resident memory (GiB) from /usr/bin/time -v."""
    text = (out / f"{name}.time").read_text()
    clock = re.search(r"Elapsed \(wall clock\) time.*: (.+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    parts = [float(p) for p in clock.group(1).split(":")] if clock else [float("nan")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return seconds / 60, (int(rss.group(1)) / 2**20) if rss else float("nan")


def loss_table(out: Path) -> None:
    print("| loss | steps | train acc, first epoch -> last | train margin, first -> last | "
          "validation acc, before -> after | validation margin, before -> after | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name in LOSSES:
        run = out / name
        if not (run / "summary.json").exists():
            continue
        summary = json.loads((run / "summary.json").read_text())
        metrics = rows(run)
        kto = name == "kto"
        acc, margin = ("rewards/desirable", "rewards/undesirable") if kto else ("rewards/accuracies", "rewards/margins")
        first = [r for r in metrics if r.get("epoch", 1) == metrics[0].get("epoch", 1)]
        last = [r for r in metrics if r.get("epoch", 1) == metrics[-1].get("epoch", 1)]
        if kto:  # unpaired: desirable and undesirable implicit rewards, not an accuracy
            train = f"desirable {mean([r[acc] for r in first]):+.3f} -> {mean([r[acc] for r in last]):+.3f}"
            gap = f"undesirable {mean([r[margin] for r in first]):+.3f} -> {mean([r[margin] for r in last]):+.3f}"
        else:
            train = f"{mean([r[acc] for r in first]):.2f} -> {mean([r[acc] for r in last]):.2f}"
            gap = f"{mean([r[margin] for r in first]):+.3f} -> {mean([r[margin] for r in last]):+.3f}"
        before, after = summary.get("before") or {}, summary.get("after") or {}
        key_acc, key_margin = f"validation/{acc}", f"validation/{margin}"
        validation = (f"{before.get(key_acc, float('nan')):.2f} -> {after.get(key_acc, float('nan')):.2f}"
                      if not kto else "-")
        validation_margin = (f"{before.get(key_margin, float('nan')):+.3f} -> {after.get(key_margin, float('nan')):+.3f}"
                             if not kto else "-")
        label = "sigmoid (DPO)" if name == "pairs" else name
        print(f"| {label} | {len(metrics)} | {train} | {gap} | {validation} | {validation_margin} | "
              f"{resources(out, name)[0]:.1f} |")


def whole_table(out: Path, names: list[str]) -> None:
    print("| run | held-out greedy accuracy, before -> after | wall time (min) | peak memory (GiB) |")
    print("|---|---|---|---|")
    for name in names:
        run = out / name
        if not (run / "summary.json").exists():
            continue
        summary = json.loads((run / "summary.json").read_text())
        before, after = summary["before"]["greedy_accuracy"], summary["after"]["greedy_accuracy"]
        minutes, gib = resources(out, name)
        print(f"| {name} | {before:.2f} -> {after:.2f} | {minutes:.1f} | {gib:.2f} |")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/preference-evidence")
    if (out / "pairs").exists():
        loss_table(out)
        print()
    whole_table(out, [n for n in WHOLE_RUNS + ["grpo-prm", "grpo-prm-hardened"] if (out / n).exists()])
