"""The run lifecycle (`trainers/run.py`) that every trainer runs through: SFT, the reward models and the
verifier recipe resume exactly after kill -9, as RL does (tests/test_resume.py); runs with nothing to
learn stop with one line; every run ends with its report; trackers fail before anything is written.

The interrupted runs are real processes killed with SIGKILL once a chosen checkpoint is complete, with
one CPU thread so that an uninterrupted run is reproducible bit for bit.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

SFT = ["sft", "--model", "tiny-random", "--set", "num_examples=12", "--set", "epochs=2", "--set", "batch_size=4",
       "--set", "micro_batch_size=2", "--set", "learning_rate=3e-3", "--set", "eval_limit=2", "--set", "save_steps=1"]
ORM = ["orm", "--model", "tiny-random", "--set", "num_problems=8", "--set", "samples_per_problem=2",
       "--set", "max_completion_length=8", "--set", "batch_size=4", "--set", "epochs=2", "--set", "learning_rate=1e-3",
       "--set", "lm_loss_weight=0.5", "--set", "validation_share=0.25", "--set", "save_steps=1"]


def _cli(*args, env=ENV, cwd=None):
    return subprocess.run([sys.executable, "-m", "incentivize.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kill_after_checkpoint(args, run, step, inside=""):
    """Start `incentivize train ARGS --output-dir RUN` and SIGKILL it once checkpoint `step` of RUN (or of its
    stage `inside`) is complete."""
    process = subprocess.Popen([sys.executable, "-m", "incentivize.cli", "train", *args, "--output-dir", str(run)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / inside / "checkpoints" / f"step-{step:06d}" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not marker.exists() and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert marker.exists() and not (run / "summary.json").exists(), "the run ended before it could be interrupted"


def _assert_same_run(resumed, reference, keys):
    a, b = _rows(resumed / "metrics.jsonl"), _rows(reference / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(b) + 1))
    for x, y in zip(a, b):
        for key in keys:
            assert x[key] == y[key], (x["step"], key)
    assert len({r["loss"] for r in b}) > 1  # the model moved: a wrong restore would show
    weights = [load_file(run / "final" / "model.safetensors") for run in (resumed, reference)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[1])
    assert not [p for p in (resumed / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args,kill_after,keys", [
    (SFT, 2, ("epoch", "loss", "grad_norm")),
    (ORM, 3, ("epoch", "loss", "lm_loss", "grad_norm")),
])
def test_sft_and_reward_model_resume_after_kill_9_exactly(tmp_path, args, kill_after, keys):
    reference = tmp_path / "reference"
    done = _cli("train", *args, "--output-dir", reference)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    _kill_after_checkpoint(args, run, kill_after)
    resumed = _cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after step {kill_after}" in resumed.stdout + resumed.stderr
    assert "sampling" not in resumed.stderr  # the reward model trains on the solutions it sampled before
    _assert_same_run(run, reference, keys)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, reference)]
    assert summaries[0]["after"] == summaries[1]["after"] and summaries[0]["before"] == summaries[1]["before"]
    finished = _cli("train", "--resume", run)
    assert finished.returncode == 2 and "is finished" in finished.stderr


RECIPE = ["verifier", "--model", "tiny-random", "--set", "sft_epochs=1", "--set", "sft_examples=48",
          "--set", "num_problems=4", "--set", "samples_per_problem=2", "--set", "max_completion_length=8",
          "--set", "eval_samples=4", "--set", "eval_limit=2", "--set", "save_steps=1"]


@pytest.fixture(scope="module")
def recipe_reference(tmp_path_factory):
    reference = tmp_path_factory.mktemp("recipe") / "reference"
    done = _cli("train", *RECIPE, "--output-dir", reference)
    assert done.returncode == 0, done.stderr
    return reference


def test_the_verifier_recipe_resumes_after_its_finished_stages(tmp_path, recipe_reference):
    run = tmp_path / "run"
    _kill_after_checkpoint(RECIPE, run, 1)  # the generator stage is finished, the verifier's under way or not begun
    generator = (run / "generator" / "final" / "model.safetensors").stat().st_mtime_ns
    resumed = _cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1/4" not in resumed.stderr and "stage 2/4" in resumed.stderr  # process verifier: stage 3
    assert (run / "generator" / "final" / "model.safetensors").stat().st_mtime_ns == generator  # not trained again
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, recipe_reference)]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]


def test_the_verifier_recipe_resumes_inside_its_first_stage(tmp_path, recipe_reference):
    run = tmp_path / "run"
    _kill_after_checkpoint(RECIPE, run, 1, inside="generator")  # the generator's first step is checkpointed
    resumed = _cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 1" in resumed.stderr  # the generator's run continued from its checkpoint
    _assert_same_run(run / "generator", recipe_reference / "generator", ("loss", "grad_norm"))
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, recipe_reference)]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]


def test_a_run_with_nothing_to_learn_warns_once_then_stops_with_one_line(tmp_path):
    # tiny-random cut off at 8 tokens never reaches an answer: every reward is 0 in every group
    result = _cli("train", "grpo", "--model", "tiny-random", "--set", "max_steps=6", "--set", "num_generations=4",
                  "--set", "generation_batch_size=8", "--set", "max_completion_length=8", "--set", "eval_before=false",
                  "--set", "eval_limit=2", "--set", "max_zero_signal_steps=3", "--output-dir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "nothing to learn from" in line]
    assert len(warnings) == 1 and "max_completion_length (8)" in warnings[0] and warnings[0].startswith("warning:")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step 3: nothing to learn in 3 steps in a row (max_zero_signal_steps)" in errors[0]
    assert [r["step"] for r in _rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_every_run_ends_with_its_report_and_tensorboard_events(tmp_path):
    result = _cli("train", *SFT[:-2], "--set", "epochs=1", "--output-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    report = tmp_path / "run" / "report.html"
    assert f"report {report}" in result.stderr and report.stat().st_size > 0
    assert list((tmp_path / "run").glob("**/events.out.tfevents.*"))


def test_a_missing_tracker_package_is_one_line_before_anything_is_written(tmp_path):
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "wandb.py").write_text("raise ImportError('no wandb here')\n")  # as if it were not installed
    env = {**ENV, "PYTHONPATH": f"{fake}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    result = _cli("train", "grpo", "--model", "tiny-random", "--set", "report_to=[tensorboard, wandb]",
                  "--output-dir", tmp_path / "run", env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install wandb" in errors[0]
    assert not (tmp_path / "run").exists()


EPISODES = ["grpo", "--model", "tiny-random", "--set", "environment=self_correction", "--set", "max_turns=2",
            "--set", "max_steps=3", "--set", "num_generations=2", "--set", "generation_batch_size=4",
            "--set", "max_completion_length=6", "--set", "eval_limit=2", "--set", "save_steps=1",
            "--set", "report_to=none"]


def test_a_multi_turn_run_resumes_after_kill_9_with_the_same_episodes(tmp_path):
    reference = tmp_path / "reference"
    done = _cli("train", *EPISODES, "--output-dir", reference)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    _kill_after_checkpoint(EPISODES, run, 1)
    resumed = _cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 1" in resumed.stdout + resumed.stderr
    a, b = _rows(run / "metrics.jsonl"), _rows(reference / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("completion_length", "reward/turn_1", "reward/turn_2", "accuracy", "loss"):
            assert x[key] == y[key], (x["step"], key)
    samples = [[(r["step"], r["completion"]) for r in _rows(r / "samples.jsonl")] for r in (run, reference)]
    assert samples[0] == samples[1]  # the same episodes, turn for turn, after the restart
    weights = [load_file(r / "final" / "model.safetensors") for r in (run, reference)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[1])
