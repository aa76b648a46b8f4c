"""The run lifecycle every trainer shares: one place for what happens around the training steps.

`run(trainer, config)` owns the run directory and everything in it. A trainer supplies only its
setup, its `step`, and its `state_dict` / `load_state_dict` (plus optional hooks with defaults:
held-out evaluation, the model a checkpoint holds, the final model). The run then:

- refuses an `output_dir` that holds another run, and creates the directory only once the trainer's
  setup (models, data, reward functions) has loaded, so bad input leaves nothing behind;
- seeds Python's and torch's RNGs from `config.seed` before the setup;
- writes the resolved `config.yaml`, one `metrics.jsonl` row per step and the step's samples to
  `samples.jsonl`, and sends the same metrics to the trackers of `report_to` (TensorBoard by default);
- evaluates before the first step (`eval_before`), every `eval_steps` steps and after the last;
- writes atomic checkpoints every `save_steps` steps (the trainer's model in Hugging Face format,
  its state, the RNG states), keeps the newest `save_total_limit`, and resumes from the newest
  complete one: the steps after it sample, log and learn exactly as an uninterrupted run would;
- handles Ctrl-C (finish the step, checkpoint, stop with one line), out-of-memory, a full disk while
  checkpointing, and `max_nonfinite_steps` steps in a row whose update was skipped for a NaN;
- ends with `final/`, `summary.json` and `report.html`.

Directory layout: `config.yaml`, `metrics.jsonl`, `samples.jsonl`, TensorBoard's `events.out.tfevents.*`,
`eval-before/`, `eval-step-N/`, `eval-after/`, `checkpoints/step-NNNNNN/`, `final/`, `summary.json`,
`report.html`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from incentivize.atomic import require_directory_path, write_text
from incentivize.checkpoint import (
    latest_checkpoint, load_checkpoint, remove_partial_checkpoints, restore_rng, rng_state, save_checkpoint,
)
from incentivize.config import LifecycleSettings
from incentivize.errors import IncentivizeError, describe
from incentivize.trackers import open_trackers, require_packages
from incentivize.trainers.interrupt import StopRequest, TrainingInterrupted

Say = Callable[[str], None]
Progress = Callable[..., None]  # (stage, done, total, status="")


def counter(progress: Progress, stage: str, total: int) -> Callable[[int], None]:
    """A callback that adds each call's count to a running total and reports `stage` progress."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, done, total)

    return advance


@dataclass
class StepOutput:
    """What one training step reports.

    `nonfinite`: True when an update of this step was skipped because its loss or gradient was NaN or
    infinite, False when its updates were applied, None when it made no update.
    `no_signal`: None when the step had something to learn from; else why it had not (e.g. every
    reward of the step was equal), in words that point at the likely cause.
    """

    metrics: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    nonfinite: bool | None = False
    no_signal: str | None = None
    stop: str | None = None  # why the run must stop after this step (it is logged first), in words


@dataclass
class RunContext:
    """What a trainer's setup may use: where the run lives, whether it resumes, how to talk."""

    run_dir: Path
    resuming: bool
    say: Say
    progress: Progress


class Trainer:
    """The part of training that differs between methods. Subclasses implement the first four."""

    #: optimizer steps of the whole run; set by `setup`
    total_steps: int = 0

    def setup(self, context: RunContext) -> None:
        """Load models, data and everything else the steps need. Nothing may be written yet."""
        raise NotImplementedError

    def step(self, step: int) -> StepOutput:
        """Run training step `step` (1-based)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model weights that the next step depends on (optimizer, scheduler,
        data position, counters): tensors and plain values only."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ optional hooks

    def start(self, run_dir: Path) -> None:
        """Called once when a new run's directory has been created (not on resume): write inputs worth keeping."""

    def evaluate(self, label: str, directory: Path) -> dict[str, Any] | None:
        """Held-out metrics of the model now (`label`: before, step-N, after), files under `directory`; None: none."""
        return None

    def checkpoint_model(self) -> tuple[Any, Any] | None:
        """(model, tokenizer) a checkpoint saves in Hugging Face format; None: nothing to save."""
        return None

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """Further modules a checkpoint holds as safetensors (a critic)."""
        return {}

    def save_final(self, directory: Path) -> None:
        """Write the trained model to `directory` (`final/`)."""

    def summary(self) -> dict[str, Any]:
        """Extra entries for `summary.json`."""
        return {}

    def status(self, metrics: Mapping[str, Any]) -> str:
        """A few words for the progress bar after a step."""
        loss = metrics.get("loss")
        return f"loss {loss:.4f}" if isinstance(loss, float) else ""

    def close(self) -> None:
        """Release what setup started (worker processes); called however the run ends."""

    def trackers(self, report_to: list[str]) -> list[str]:
        """The trackers of `report_to` this run logs to itself (a recipe whose stages are runs of their own
        leaves wandb and mlflow to them: those open one run per process at a time)."""
        return report_to

    def memory_advice(self) -> str:
        """What to lower when a step runs out of memory."""
        return "micro_batch_size (it changes memory, not the math)"


@dataclass
class RunResult:
    run_dir: Path
    before: dict[str, Any] | None  # held-out metrics before training (None: not measured)
    after: dict[str, Any] | None
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def run(trainer: Trainer, config: LifecycleSettings, *, name: str, resume: bool = False, on_event: Say | None = None,
        on_progress: Progress | None = None, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> RunResult:
    """Train `trainer` under `config` from start to end (or, with `resume`, from the newest checkpoint of
    `config.output_dir`). `name` prefixes a default run directory, `runs/<name>-<time>`."""
    say = on_event or (lambda text: None)
    progress = on_progress or (lambda stage, done, total, status="": None)
    started = time.perf_counter()
    run_dir = _resume_dir(config) if resume else _new_run_dir(config, name)
    require_packages(config.report_to)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    try:
        trainer.setup(RunContext(run_dir, resume, say, progress))
        return _run_steps(trainer, config, run_dir, resume, say, progress, on_step, started)
    finally:
        trainer.close()


def _run_steps(trainer: Trainer, config: LifecycleSettings, run_dir: Path, resume: bool, say: Say, progress: Progress,
               on_step: Callable[[int, dict[str, Any]], None] | None, started: float) -> RunResult:
    lifecycle = _Lifecycle(trainer, config, run_dir, say, started)
    done = lifecycle.restore() if resume else lifecycle.create()
    if resume:
        say(f"resuming after step {done}")
    with lifecycle.open_logs(first_step=done + 1) as logs:
        before = lifecycle.read_eval("before") if resume else (lifecycle.evaluate("before") if config.eval_before else None)
        with StopRequest(lambda: say("interrupt: finishing this step, then saving a checkpoint (Ctrl-C again to "
                                     "stop at once, without one)")) as stop:
            for step in range(done + 1, trainer.total_steps + 1):
                metrics = lifecycle.step(step, logs)
                progress("train", step, trainer.total_steps, trainer.status(metrics))
                if on_step is not None:
                    on_step(step, metrics)
                stopping = stop.requested  # read once: a Ctrl-C from here on is handled after the next step
                if lifecycle.checkpoint_due(step) or stopping:
                    checkpoint = lifecycle.save(step)
                if stopping:
                    raise TrainingInterrupted(f"interrupted after step {step}; checkpoint {checkpoint}; continue with: "
                                              f"incentivize train --resume {run_dir}", step, checkpoint)
    trainer.save_final(run_dir / "final")  # first: whatever happens in the evaluation, the training is kept
    after = lifecycle.evaluate("after")
    seconds = lifecycle.seconds()
    summary = {"before": before, "after": after, "seconds": seconds, **trainer.summary(),
               "config": config.model_dump(mode="json")}
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    _write_report(run_dir, say)
    return RunResult(run_dir, before, after, seconds, summary)


class _Lifecycle:
    """The run directory of one trainer: its logs, evaluations, checkpoints and failure counters."""

    def __init__(self, trainer: Trainer, config: LifecycleSettings, run_dir: Path, say: Say, started: float) -> None:
        self.trainer, self.config, self.run_dir, self.say = trainer, config, run_dir, say
        self.started, self.earlier_seconds = started, 0.0  # this session's start; the sessions' before it
        self.skipped_steps = 0  # steps with an update skipped for a NaN or infinite loss or gradient
        self.nonfinite_streak = 0  # such steps in a row, up to the last one
        self.zero_signal_streak = 0  # steps in a row with nothing to learn from
        self.warned_zero_signal = False

    # ------------------------------------------------------------------ start and resume

    def create(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.yaml", config_text(self.config))
        self.trainer.start(self.run_dir)
        if self.state_only():  # a trainer whose state is all it has (a recipe): resumable from its start
            self.save(0)
        return 0

    def seconds(self) -> float:
        """The run's training time so far, over all its sessions."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def restore(self) -> int:
        """Load the newest complete checkpoint; drop the log rows of later steps; its step."""
        root = self.run_dir / "checkpoints"
        remove_partial_checkpoints(root)  # torn by the interruption: never loaded, now gone
        checkpoint = latest_checkpoint(root)
        assert checkpoint is not None  # checked before the setup (_resume_dir)
        model = self.trainer.checkpoint_model()
        try:
            state, info = load_checkpoint(checkpoint, model[0] if model else None, self.trainer.checkpoint_modules())
            self.trainer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
            raise IncentivizeError(f"cannot resume from {checkpoint}: {describe(err)}") from None
        restore_rng(state["rng"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.zero_signal_streak = int(state.get("zero_signal_streak", 0))
        self.earlier_seconds = float(state.get("seconds", 0.0))
        step = int(info["step"])
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(self.run_dir / name, step)
        return step

    def open_logs(self, first_step: int) -> _Logs:
        return _Logs(self.run_dir, self.config, self.trainer.trackers(list(self.config.report_to)), self.say,
                     resume_step=first_step if first_step > 1 else None)

    # ------------------------------------------------------------------ steps

    def step(self, step: int, logs: _Logs) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            output = self.trainer.step(step)
        except (MemoryError, torch.OutOfMemoryError):
            raise IncentivizeError(
                f"step {step}: out of memory; {self.newest_checkpoint_text()}; lower {self.trainer.memory_advice()}, "
                f"then continue with: incentivize train --resume {self.run_dir}"
            ) from None
        if output.nonfinite:
            self.skipped_steps += 1
            self.nonfinite_streak += 1
        elif output.nonfinite is False:
            self.nonfinite_streak = 0
        metrics = {"step": step, **output.metrics, "skipped_steps": float(self.skipped_steps),
                   "nonfinite_streak": float(self.nonfinite_streak)}
        metrics.setdefault("time/step", time.perf_counter() - t0)
        if self.config.eval_steps and step % self.config.eval_steps == 0 and step < self.trainer.total_steps:
            held_out = self.evaluate(f"step-{step}") or {}
            metrics |= {f"eval/{k}": v for k, v in held_out.items() if isinstance(v, float)}
        logs.write(step, metrics, output.samples)
        self.check_signal(step, output.no_signal)
        if output.stop is not None:
            raise IncentivizeError(f"step {step}: {output.stop}; {self.newest_checkpoint_text()}")
        if self.nonfinite_streak >= self.config.max_nonfinite_steps:
            raise IncentivizeError(
                f"step {step}: the loss or gradient was NaN or infinite in {self.nonfinite_streak} steps in a row "
                f"(max_nonfinite_steps), so their updates were skipped and the run stopped; "
                f"{self.newest_checkpoint_text()}; lower learning_rate or check the rewards"
            )
        return metrics

    def check_signal(self, step: int, no_signal: str | None) -> None:
        """Warn at the first step with nothing to learn from; stop after `max_zero_signal_steps` in a row."""
        self.zero_signal_streak = 0 if no_signal is None else self.zero_signal_streak + 1
        if no_signal is None:
            return
        limit = self.config.max_zero_signal_steps
        if limit and self.zero_signal_streak >= limit:
            raise IncentivizeError(
                f"step {step}: nothing to learn in {self.zero_signal_streak} steps in a row (max_zero_signal_steps): "
                f"{no_signal}; {self.newest_checkpoint_text()}"
            )
        if not self.warned_zero_signal:
            self.warned_zero_signal = True
            self.say(f"warning: step {step} had nothing to learn from: {no_signal}")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, label: str) -> dict[str, Any] | None:
        directory = self.run_dir / f"eval-{label}"
        shutil.rmtree(directory, ignore_errors=True)  # what an interrupted session left there is out of date
        metrics = self.trainer.evaluate(label, directory)
        if metrics is not None and not (directory / "results.json").exists():
            write_text(directory / "results.json", json.dumps({"metrics": metrics}, indent=2) + "\n")
        return metrics

    def read_eval(self, label: str) -> dict[str, Any] | None:
        path = self.run_dir / f"eval-{label}" / "results.json"
        try:
            metrics = json.loads(path.read_text())["metrics"] if path.exists() else None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # torn by the interruption: the summary says "not measured"
        return metrics if isinstance(metrics, dict) else None

    # ------------------------------------------------------------------ checkpoints

    def state_only(self) -> bool:
        """Whether a checkpoint holds only the trainer's state (no model): cheap enough after every step."""
        return self.trainer.checkpoint_model() is None and not self.trainer.checkpoint_modules()

    def checkpoint_due(self, step: int) -> bool:
        return self.state_only() or (bool(self.config.save_steps) and step % self.config.save_steps == 0)

    def save(self, step: int) -> Path:
        """Checkpoint `step`; a failed write (a full disk) leaves the previous checkpoint and stops with one line."""
        root = self.run_dir / "checkpoints"
        model, tokenizer = self.trainer.checkpoint_model() or (None, None)
        state = self.trainer.state_dict() | {"rng": rng_state(), "skipped_steps": self.skipped_steps,
                                             "nonfinite_streak": self.nonfinite_streak,
                                             "zero_signal_streak": self.zero_signal_streak, "seconds": self.seconds()}
        try:
            info = {"total_steps": self.trainer.total_steps, "config": self.config.model_dump(mode="json")}
            return save_checkpoint(root, step, model, tokenizer, state, info, self.config.save_total_limit,
                                   modules=self.trainer.checkpoint_modules())
        except OSError as err:
            previous = latest_checkpoint(root)
            kept = (f"the newest complete checkpoint {previous} is intact; free space, then continue with: "
                    f"incentivize train --resume {self.run_dir}") if previous else "no earlier checkpoint exists"
            raise IncentivizeError(f"step {step}: writing its checkpoint failed ({describe(err)}); {kept}") from None

    def newest_checkpoint_text(self) -> str:
        previous = latest_checkpoint(self.run_dir / "checkpoints")
        return f"the newest checkpoint is {previous}" if previous else "no checkpoint was written (set save_steps)"


class _Logs:
    """metrics.jsonl, samples.jsonl and the trackers of `report_to`, open for the steps of one session."""

    def __init__(self, run_dir: Path, config: LifecycleSettings, report_to: list[str], say: Say,
                 resume_step: int | None) -> None:
        self.trackers = open_trackers(report_to, run_dir, config.model_dump(mode="json"), run_name=run_dir.name,
                                      resume_step=resume_step, on_error=lambda text: say(f"warning: {text}"))
        self.metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.samples = (run_dir / "samples.jsonl").open("a", encoding="utf-8")

    def __enter__(self) -> _Logs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.metrics.close()
        self.samples.close()
        self.trackers.close()

    def write(self, step: int, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        plain = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        self.metrics.write(json.dumps(plain) + "\n")
        self.metrics.flush()
        for sample in samples:
            self.samples.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")
        self.samples.flush()
        self.trackers.log_metrics(plain, step)
        if samples:
            self.trackers.log_samples(step, samples)


# ---------------------------------------------------------------------------------------------- run directories


def _new_run_dir(config: LifecycleSettings, name: str) -> Path:
    """Where a new run will go (created once the setup has loaded); a directory holding another run is refused."""
    if not config.output_dir:
        stem = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        return next(p for p in (stem, *(Path(f"{stem}-{i}") for i in range(2, 1000))) if not p.exists())
    run_dir = Path(config.output_dir)
    require_directory_path(run_dir, "--output-dir")
    for marker in ("metrics.jsonl", "final", "summary.json"):
        if (run_dir / marker).exists():
            raise IncentivizeError(
                f"{run_dir} already holds a run ({marker}); choose another --output-dir so nothing is overwritten"
            )
    existing = run_dir / "config.yaml"
    if existing.exists() and existing.read_text(encoding="utf-8", errors="replace") != config_text(config):
        raise IncentivizeError(
            f"{run_dir} already holds another run's {existing.name}; choose another --output-dir so nothing is overwritten"
        )
    return run_dir


def _resume_dir(config: LifecycleSettings) -> Path:
    """The run to continue, checked before anything loads: its config.yaml is still the config its newest
    checkpoint was written with (but for the keys `RESUMABLE` allows to change), it has a complete
    checkpoint, and it is not finished (unless `max_steps` or `epochs` grew)."""
    if not config.output_dir or not (Path(config.output_dir) / "config.yaml").exists():
        raise IncentivizeError(f"cannot resume {config.output_dir}: it holds no run (config.yaml missing)")
    run_dir = Path(config.output_dir)
    now = config.model_dump(mode="json")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    saved = _read_json(checkpoint / "trainer_state.json").get("config") if checkpoint else None
    if isinstance(saved, dict):
        changed = [k for k in now if k in saved and k not in config.RESUMABLE and saved[k] != now[k]]
        if changed:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed[:3])
            raise IncentivizeError(
                f"cannot resume {run_dir}: its config.yaml differs from the config of {checkpoint} ({diff}); "
                "put the old values back, or start a new run with the new ones"
            )
    if checkpoint is None:
        raise IncentivizeError(f"cannot resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} (set "
                               "save_steps to write them)")
    finished = _read_json(run_dir / "summary.json")
    if isinstance(finished.get("config"), dict) and all(finished["config"].get(k) == now.get(k) for k in GROWING):
        raise IncentivizeError(_finished_message(run_dir))
    return run_dir


GROWING = ("max_steps", "epochs")  # keys that extend a finished run when raised


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when it is missing or unreadable (the caller reports what that means)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finished_message(run_dir: Path) -> str:
    holds = f", {run_dir / 'final'} holds its model" if (run_dir / "final").exists() else ""
    return (f"{run_dir} is finished (summary.json written{holds}); to train further, raise max_steps (or epochs) in "
            f"{run_dir / 'config.yaml'} and resume again")


def config_text(config: LifecycleSettings) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step` (and drop a torn last line), written atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the interruption
    write_text(path, "".join(f"{line}\n" for line in kept))


def _write_report(run_dir: Path, say: Say) -> None:
    """`report.html`; the run's results are already on disk, so a failure here is a warning, not an error."""
    from incentivize.report import write_report

    try:
        started = time.perf_counter()
        path = write_report([run_dir], on_warning=lambda text: say(f"warning: {text}"))
    except (IncentivizeError, OSError, ValueError) as err:
        say(f"warning: could not write the run report ({describe(err)}); try: incentivize report {run_dir}")
        return
    say(f"report {path} ({time.perf_counter() - started:.1f}s)")
