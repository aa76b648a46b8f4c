"""Experiment trackers: the metrics, config and a few sampled completions of a run, sent to TensorBoard,
Weights & Biases, MLflow or Trackio (`report_to`, TRL's name for the choice).

TensorBoard is the default and needs no network: its event files go into the run directory itself, so
`tensorboard --logdir runs/` lists every run under its directory name. The other backends are used
only when their package is installed, and each reads its own environment variables (`WANDB_MODE`,
`WANDB_PROJECT`, `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME`, `TRACKIO_DIR`, ...).
"""

from __future__ import annotations

import difflib
import html
import importlib
import json
import math
import numbers
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args

import yaml
from pydantic import BeforeValidator

from incentivize.atomic import write_text
from incentivize.errors import IncentivizeError, describe

ReportTo = Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
PROJECT = "incentivize"
MAX_SAMPLES = 4
_IDS_FILE = "trackers.json"  # in the run directory: the wandb / mlflow run ids a resumed run continues


def report_to_names(value: str | Sequence[str] | None) -> list[str]:
    """The backends named by `value` (a name, "a,b", or a list), checked; [] for "none". Raises ValueError.

    >>> report_to_names("tensorboard,wandb"), report_to_names("none"), report_to_names(["mlflow"])
    (['tensorboard', 'wandb'], [], ['mlflow'])
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    for name in names:
        if name not in REPORT_TO:
            close = difflib.get_close_matches(name, REPORT_TO, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown tracker {name!r}{hint} (choices: {', '.join(REPORT_TO)})")
    if "none" in names and len(set(names)) > 1:
        raise ValueError(f"'none' cannot be combined with other trackers (got {', '.join(names)})")
    return [name for i, name in enumerate(names) if name != "none" and name not in names[:i]]


# A config field: `report_to: ReportToList = ["tensorboard"]` accepts a list, one name or "a,b".
ReportToList = Annotated[list[ReportTo], BeforeValidator(report_to_names)]


class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None: ...
    def log_text(self, tag: str, text: str, step: int) -> None: ...
    def close(self) -> None: ...


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of `metrics` as floats, without None and NaN."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, numbers.Real) and not math.isnan(value):
            out[name] = float(value)
    return out


class TensorBoardTracker:
    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops the events of steps >= resume_step written before the resume
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step)

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        for name, value in _numbers(metrics).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # a live `tensorboard` sees every step as it happens

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], run_name: str, run_id: str, resume: bool) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run_name, dir=str(run_dir),
                              config=config, id=run_id, resume="allow" if resume else None)

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        self.run.log(_numbers(metrics), step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.run.log({tag: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, config: dict[str, Any], run_name: str, run_id: str | None) -> None:
        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT)
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        try:
            if run_id is None:  # a resumed run has its parameters already; mlflow refuses to change one
                params = [(_mlflow_name(k), str(v)[:500]) for k, v in flatten(config).items()]
                for i in range(0, len(params), 100):  # mlflow takes at most 100 parameters a call
                    mlflow.log_params(dict(params[i:i + 100]))
        except BaseException:
            mlflow.end_run("FAILED")
            raise

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        self.mlflow.log_metrics({_mlflow_name(k): v for k, v in _numbers(metrics).items()}, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.mlflow.log_text(text, f"{_mlflow_name(tag)}/step-{step:06d}.md")

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioTracker:
    def __init__(self, config: dict[str, Any], run_name: str, resume: bool) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT") or PROJECT, name=run_name, config=config,
                                resume="allow" if resume else "never")

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        self.run.log(_numbers(metrics), step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.run.log({tag: self.trackio.Markdown(text)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every chosen backend behind one object: each call goes to all of them.

    With `on_error`, a backend that fails while logging (a lost connection) is reported there once and
    dropped, so that the run goes on with `metrics.jsonl` and the other backends; without it the error
    is raised."""

    def __init__(self, trackers: Sequence[Tracker] = (), on_error: Callable[[str], None] | None = None) -> None:
        self.trackers = list(trackers)
        self.on_error = on_error

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        self._each(lambda tracker: tracker.log_metrics(metrics, step))

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._each(lambda tracker: tracker.log_text(tag, text, step))

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as err:  # any backend's failure: it is reported, the run goes on
                if self.on_error is None:
                    raise
                self.trackers.remove(tracker)
                self.on_error(f"{type(tracker).__name__} stopped logging ({describe(err)}); metrics.jsonl has "
                              "every step")

    def log_config(self, config: Mapping[str, Any], step: int = 0) -> None:
        self.log_text("config", render_config(config), step)

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if self.trackers and samples:
            self.log_text("samples", render_samples(samples), step)

    def close(self) -> None:
        """Close every backend (the last one opened first), even when one fails; raise the first failure."""
        trackers, self.trackers = self.trackers, []
        failure: BaseException | None = None
        for tracker in reversed(trackers):
            try:
                tracker.close()
            except Exception as err:  # the others still get closed
                failure = failure or err
        if failure is not None and self.on_error is not None:
            self.on_error(f"a tracker failed to close ({describe(failure)})")
        elif failure is not None:
            raise failure

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_trackers(report_to: str | Sequence[str] | None, run_dir: Path, config: Mapping[str, Any], *,
                  run_name: str, resume_step: int | None = None,
                  on_error: Callable[[str], None] | None = None) -> Trackers:
    """Open the backends named by `report_to` for the run in `run_dir`, and log `config` to them.

    `resume_step` is None for a new run; for a resumed one it is the first step the run logs again:
    TensorBoard drops what was logged at that step and later, wandb and mlflow continue the same run
    (their ids are kept in `run_dir/trackers.json`), and the config is not logged a second time.
    """
    try:
        names = report_to_names(report_to)
    except ValueError as err:
        raise IncentivizeError(f"report_to: {err}") from None
    plain = json.loads(json.dumps(dict(config), default=str))
    resume = resume_step is not None
    ids_path = run_dir / _IDS_FILE
    ids = json.loads(ids_path.read_text(encoding="utf-8")) if resume and ids_path.exists() else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    trackers = Trackers(on_error=on_error)
    try:
        for name in names:
            trackers.trackers.append(_open(name, run_dir, plain, run_name, resume_step, ids))
    except BaseException:
        trackers.close()
        raise
    if "wandb" in names or "mlflow" in names:
        write_text(ids_path, json.dumps(ids) + "\n")
    if not resume:
        trackers.log_config(plain)
    return trackers


def require_packages(report_to: str | Sequence[str] | None) -> None:
    """Import the package of every optional backend in `report_to` now, so that a missing one is said before
    a run loads anything or writes its directory."""
    for name in report_to_names(report_to):
        if name != "tensorboard":
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise _import_error(name, err) from None


def _import_error(name: str, err: ImportError) -> IncentivizeError:
    if err.name not in (name, None) and not str(err.name).startswith(f"{name}."):
        return IncentivizeError(f"report_to: {name} could not be imported: {describe(err)}")
    return IncentivizeError(f"report_to: {name} needs the {name} package: pip install {name} (or drop it from report_to)")


def _open(name: str, run_dir: Path, config: dict[str, Any], run_name: str, resume_step: int | None,
          ids: dict[str, str]) -> Tracker:
    try:
        if name == "tensorboard":
            return TensorBoardTracker(run_dir, resume_step)
        if name == "wandb":
            resume = resume_step is not None and "wandb" in ids
            ids["wandb"] = ids["wandb"] if resume else uuid.uuid4().hex[:12]
            return WandbTracker(run_dir, config, run_name, ids["wandb"], resume)
        if name == "mlflow":
            run_id = ids.get("mlflow") if resume_step is not None else None
            tracker = MlflowTracker(config, run_name, run_id)
            ids["mlflow"] = tracker.run.info.run_id
            return tracker
        return TrackioTracker(config, run_name, resume_step is not None)
    except ImportError as err:
        raise _import_error(name, err) from None
    except IncentivizeError:
        raise
    except Exception as err:
        hint = {"wandb": " (run `wandb login`, or set WANDB_MODE=offline)",
                "mlflow": " (check MLFLOW_TRACKING_URI: an mlflow server, or sqlite:///mlflow.db with full mlflow)"}
        raise IncentivizeError(f"report_to: {name} could not start: {describe(err)}{hint.get(name, '')}") from None


def render_config(config: Mapping[str, Any]) -> str:
    """The config as YAML in a markdown code block (indented, so every markdown renderer keeps it verbatim)."""
    text = yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)), sort_keys=False)
    return _code(text)


def render_samples(samples: Sequence[Mapping[str, Any]], limit: int = MAX_SAMPLES) -> str:
    """A few sampled completions as markdown: wrong and right ones in turn, each with its reward and answers."""
    wrong = [s for s in samples if not s.get("correct")]
    right = [s for s in samples if s.get("correct")]
    chosen = [s for pair in zip(wrong, right) for s in pair] + wrong[len(right):] + right[len(wrong):]
    parts = []
    for i, sample in enumerate(chosen[:limit], 1):
        reward = sample.get("reward")
        fields = [f"reward {reward:.3f}" if isinstance(reward, (int, float)) else "reward -",
                  f"correct {'yes' if sample.get('correct') else 'no'}"]
        fields += [f"{key} `{sample[key]}`" for key in ("gold", "extracted") if sample.get(key) is not None]
        completion = str(sample.get("completion", ""))
        if len(completion) > 2000:
            completion = completion[:2000] + " [...]"
        parts.append(f"**{i}.** " + " | ".join(fields) + "\n\n" + _code(completion))
    return "\n\n".join(parts)


def _code(text: str) -> str:
    return "\n".join("    " + line for line in (text.rstrip("\n") or " ").split("\n"))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (an empty mapping stays a value).

    >>> flatten({"a": 1, "b": {"c": [2], "d": {}}})
    {'a': 1, 'b.c': [2], 'b.d': {}}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _mlflow_name(name: str) -> str:
    """`name` with the characters mlflow refuses in a metric or parameter name replaced by `_`."""
    clean = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name).strip("/")
    return "/".join(part for part in clean.split("/") if part not in ("", ".", "..")) or "_"
