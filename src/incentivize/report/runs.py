"""Reading a run directory for the report, and refusing one that cannot be reported on.

What is read (all optional except that a run needs `metrics.jsonl` with at least one step, or
sub-runs): `config.yaml`, `metrics.jsonl`, `samples.jsonl`, `eval-*/results.json`, `summary.json`,
`sweep.json` at most two levels down, and sub-runs: immediate subdirectories with their own
`metrics.jsonl`, as the verifier recipe's stages `generator/` and `verifier/`.

JSON-lines files are checked line by line. A line that is not a JSON object is an error naming the
file and the line, except the last line when it has no newline at its end: that is a write torn by a
crash or by a run still writing, and is left out with a warning. When a step appears twice (a resumed
run logged it again), its last row counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from incentivize.errors import IncentivizeError

SAMPLES_PER_STEP = 20  # the sample browser keeps the first this many completions of each step
MAX_TEXT = 2000  # characters of a completion (and of a prompt) kept in the report


@dataclass
class Samples:
    """The kept samples of a run: ``rows`` (dicts with the fields the browser shows; ``prompt`` is an
    index into ``prompts``), and how many the file held."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    total: int = 0


@dataclass
class RunData:
    """Everything the report shows of one run directory."""

    path: Path
    name: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]]  # one row per step, in step order
    samples: Samples | None  # None: no samples.jsonl
    evals: dict[str, dict[str, Any]]  # "before", "step-N", "after", "eval" -> the metrics of results.json
    summary: dict[str, Any] | None  # None: no summary.json (interrupted, or still running)
    sweeps: dict[str, dict[str, dict[int, float]]]  # where (relative path) -> selector -> N -> accuracy
    parts: list[RunData]  # sub-runs of a recipe
    warnings: list[str]

    @property
    def steps(self) -> int:
        return int(self.metrics[-1]["step"]) if self.metrics else 0


def read_run(path: Path, name: str | None = None) -> RunData:
    """Read and check the run directory ``path``; an :class:`IncentivizeError` names what is wrong."""
    if not path.exists():
        raise IncentivizeError(f"{path}: no such directory")
    if not path.is_dir():
        raise IncentivizeError(f"{path} is a file, not a run directory; give the directory that `incentivize train` wrote")
    metrics_path, config_path = path / "metrics.jsonl", path / "config.yaml"
    parts = [read_run(sub, sub.name) for sub in sorted(p for p in path.iterdir() if (p / "metrics.jsonl").is_file())]
    sweeps = _read_sweeps(path)
    if not metrics_path.exists() and not parts and not sweeps:
        if config_path.exists():
            raise IncentivizeError(f"{metrics_path}: missing; the run has not logged a step yet")
        raise IncentivizeError(
            f"{path} is not a run directory: it holds no metrics.jsonl or config.yaml; give the directory that "
            "`incentivize train` wrote"
        )
    warnings: list[str] = []
    metrics: list[dict[str, Any]] = []
    if metrics_path.exists():
        rows = _read_jsonl(metrics_path, warnings)
        if not rows:
            raise IncentivizeError(f"{metrics_path}: empty; the run has not logged a step yet")
        by_step: dict[int, dict[str, Any]] = {}
        for number, row in rows:
            by_step[_step(row, metrics_path, number)] = row
        metrics = [by_step[step] for step in sorted(by_step)]
    samples_path = path / "samples.jsonl"
    return RunData(
        path=path,
        name=name or path.resolve().name,
        config=_read_config(config_path) if config_path.exists() else {},
        metrics=metrics,
        samples=_read_samples(samples_path, warnings) if metrics_path.exists() and samples_path.exists() else None,
        evals=_read_evals(path),
        summary=_read_json(path / "summary.json") if (path / "summary.json").exists() else None,
        sweeps=sweeps,
        parts=parts,
        warnings=warnings + [w for part in parts for w in part.warnings],
    )


def _read_jsonl(path: Path, warnings: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``path``; see the module docstring for torn lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise IncentivizeError(f"{path}: cannot read it ({err})") from None
    lines = text.split("\n")  # the piece after the last newline is "" when the file ends with one
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
        except ValueError as err:
            row, problem = None, f"not a JSON object ({err})"
        if problem is None:
            rows.append((number, row))
        elif number == len(lines):  # the last line, and no newline after it: torn by a crash or a live writer
            warnings.append(f"{path}:{number}: ignored an incomplete last line (a write torn by a crash, or a run "
                            "still writing)")
        else:
            raise IncentivizeError(f"{path}:{number}: {problem}; fix or delete that line")
    return rows


def _step(row: dict[str, Any], path: Path, number: int) -> int:
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
        raise IncentivizeError(f"{path}:{number}: no integer \"step\" (got {step!r}); every line needs one")
    return int(step)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise IncentivizeError(f"{path}: not valid JSON ({err}); fix or delete the file") from None
    if not isinstance(value, dict):
        raise IncentivizeError(f"{path}: a JSON {type(value).__name__}, not an object; fix or delete the file")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise IncentivizeError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IncentivizeError(f"{path}: not a mapping of config keys")
    return value


def _read_evals(path: Path) -> dict[str, dict[str, Any]]:
    """The metrics of `eval-before/`, `eval-step-N/` (by N), `eval-after/` and a recipe's `eval/`."""
    found = {}
    for directory in path.iterdir():
        results = directory / "results.json"
        if not (directory.name == "eval" or directory.name.startswith("eval-")) or not results.is_file():
            continue
        metrics = _read_json(results).get("metrics")
        if not isinstance(metrics, dict):
            raise IncentivizeError(f"{results}: no \"metrics\" object")
        found[directory.name.removeprefix("eval-")] = metrics
    return {label: found[label] for label in sorted(found, key=_eval_order)}


def _eval_order(label: str) -> tuple[int, int]:
    if label == "before":
        return (0, 0)
    if label.startswith("step-") and label[5:].isdigit():
        return (1, int(label[5:]))
    return (2, 0) if label == "after" else (3, 0)


def eval_step(label: str, last_step: int) -> int | None:
    """The training step an evaluation label stands for: before 0, step-N N, after the last step."""
    if label == "before":
        return 0
    if label.startswith("step-") and label[5:].isdigit():
        return int(label[5:])
    return last_step if label == "after" else None


def _read_sweeps(path: Path) -> dict[str, dict[str, dict[int, float]]]:
    sweeps = {}
    for file in sorted([*path.glob("sweep.json"), *path.glob("*/sweep.json"), *path.glob("*/*/sweep.json")]):
        accuracy = _read_json(file).get("accuracy")
        problem = f"{file}: \"accuracy\" is not a table of selector -> N -> accuracy"
        if not isinstance(accuracy, dict):
            raise IncentivizeError(problem)
        try:
            table = {str(name): {int(n): float(a) for n, a in row.items()} for name, row in accuracy.items()}
        except (AttributeError, TypeError, ValueError):
            raise IncentivizeError(problem) from None
        sweeps[file.parent.relative_to(path).as_posix()] = table
    return sweeps


def _read_samples(path: Path, warnings: list[str]) -> Samples:
    """Up to SAMPLES_PER_STEP samples of each step, texts cut at MAX_TEXT characters, prompts stored once."""
    samples = Samples()
    per_step: dict[int, int] = {}
    prompt_index: dict[str, int] = {}
    for number, row in _read_jsonl(path, warnings):
        step = _step(row, path, number)
        samples.total += 1
        if per_step.get(step, 0) >= SAMPLES_PER_STEP:
            continue
        per_step[step] = per_step.get(step, 0) + 1
        prompt = row.get("prompt", row.get("question"))  # RL samples keep the problem's question
        if isinstance(prompt, str):
            prompt = prompt_index.setdefault(_cut(prompt), len(prompt_index))
        reward = row.get("reward")
        rewards = row.get("rewards")
        samples.rows.append({
            "step": step,
            "id": _text(row.get("example_id")),
            "prompt": prompt if isinstance(prompt, int) else None,
            "completion": _cut(_text(row.get("completion")) or ""),
            "gold": _text(row.get("gold")),
            "extracted": _text(row.get("extracted")),
            "reward": _number(reward),
            "correct": bool(row.get("correct")),
            "finish": _text(row.get("finish_reason")),
            "rewards": {str(k): _number(v) for k, v in rewards.items()} if isinstance(rewards, dict) else None,
        })
    samples.prompts = list(prompt_index)
    return samples


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" [... {len(text) - MAX_TEXT} more characters]"
