"""Resuming a run continues exactly: the same samples, rewards and losses as a run never interrupted.

The interrupted runs are real processes: killed with SIGKILL between steps, at chosen moments inside
a step (mid-decode, mid-backward, mid-checkpoint; tests/fixtures/crash_driver.py), or stopped with
Ctrl-C. Every run has a reward that varies between completions, so the policy really moves and a
wrong restore of weights, optimizer or RNG changes later steps.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from incentivize.checkpoint import latest_checkpoint
from incentivize.config import load_config, load_run_config
from incentivize.errors import IncentivizeError
from incentivize.trainers.rl import train

COMPARED = ("reward_mean", "reward_std", "accuracy", "loss", "kl", "entropy", "grad_norm", "completion_length",
            "value_loss", "lr", "reward/length", "skipped_updates", "nonfinite_streak")
DRIVER = str(Path(__file__).parent / "fixtures" / "crash_driver.py")

# a reward that differs between completions, so that advantages, losses and updates are not zero;
# TEST_REWARD_DELAY slows a run down (wall time only) so that a signal surely lands mid-run
REWARD = """
import os
import time

def length(prompts, completions, **columns):
    time.sleep(float(os.environ.get("TEST_REWARD_DELAY", "0")))
    return [len(c) / 40.0 for c in completions]
"""


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "rewards.py"
    path.write_text(REWARD)
    return path


def _overrides(run_dir, algorithm="grpo", reward_file=None):
    extra = ["generation_batch_size=4", "critic_warmup_steps=1"] if algorithm == "ppo" else []
    rewards = [f"rewards=[{reward_file}:length]"] if reward_file else []
    return ["model=tiny-random", "max_steps=4", "num_generations=4", "generation_batch_size=8",
            "max_completion_length=8", "learning_rate=1e-3", "micro_batch_size=4", "beta=0.04", "eval_before=false",
            "eval_limit=2", "save_steps=1", "save_total_limit=2", f"output_dir={run_dir}", *rewards, *extra]


def _sets(run_dir, algorithm, reward_file, *extra):
    return [item for o in (*_overrides(run_dir, algorithm, reward_file), *extra) for item in ("--set", o)]


def _rows(run_dir, name="metrics.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _prompts_by_step(run_dir):
    """The training problem of each group, per step (a group's completions share one)."""
    rows, size = _rows(run_dir, "samples.jsonl"), load_run_config(run_dir).num_generations
    by_step: dict[int, list[str]] = {}
    for start in range(0, len(rows), size):
        group = rows[start : start + size]
        assert len({(r["step"], r["example_id"]) for r in group}) == 1, group
        by_step.setdefault(group[0]["step"], []).append(group[0]["example_id"])
    return by_step


def _assert_same_run(resumed_dir, reference_dir):
    resumed, reference = _rows(resumed_dir), _rows(reference_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == [1, 2, 3, 4]
    for a, b in zip(resumed, reference):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["step"], key)
    assert any(r.get("grad_norm") for r in reference)  # the policy moved: a wrong restore would show
    # the same completions with the same rewards, in the same data order
    assert _rows(resumed_dir, "samples.jsonl") == _rows(reference_dir, "samples.jsonl")
    # every step saw the problems it would have seen: none skipped, none repeated
    prompts = _prompts_by_step(resumed_dir)
    assert prompts == _prompts_by_step(reference_dir)
    seen = [p for step in sorted(prompts) for p in prompts[step]]
    assert len(seen) == 4 * load_run_config(resumed_dir).prompts_per_step and len(set(seen)) == len(seen)
    # no torn checkpoint left behind, and no finished run without its final model
    assert not [p for p in (resumed_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert (resumed_dir / "final" / "model.safetensors").exists()


def _cli(*args):
    return [sys.executable, "-m", "incentivize.cli", "train", *args]


# One thread: multi-threaded MKL matrix products on a CPU can differ in the last bit from run to run
# (their blocking follows memory alignment), and on tiny-random's near-uniform policy such a bit can flip
# a sampled token. With one thread two uninterrupted runs agree bit for bit, so a resumed one must too.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, reward_file):
    """Uninterrupted runs, one per algorithm, made on first use."""
    made = {}

    def get(algorithm):
        if algorithm not in made:
            run = tmp_path_factory.mktemp(f"reference-{algorithm}") / "run"
            done = subprocess.run(_cli(algorithm, *_sets(run, algorithm, reward_file)), env=ENV, capture_output=True,
                                  text=True)
            assert done.returncode == 0, done.stderr
            made[algorithm] = run
        return made[algorithm]

    return get


def _resume(run):
    result = subprocess.run(_cli("--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    return int(output.split("resuming after step ")[1].split()[0]) if "resuming after step" in output else -1


@pytest.mark.parametrize("algorithm,kill_after", [("grpo", 2), ("grpo", 3), ("ppo", 2)])
def test_resume_after_kill_9_continues_exactly(tmp_path, reference, reward_file, algorithm, kill_after):
    run = tmp_path / "run"
    expected = reference(algorithm)
    process = subprocess.Popen(_cli(algorithm, *_sets(run, algorithm, reward_file)), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    marker = run / "checkpoints" / f"step-{kill_after:06d}" / "trainer_state.json"
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-way through the next step (or through writing its checkpoint)
    process.wait()
    assert not (run / "final").exists()
    assert _resume(run) >= kill_after
    _assert_same_run(run, expected)


@pytest.mark.parametrize("moment,step,nth,resumes_after", [
    ("decode", 2, 2, 1),  # inside the rollout engine, after the 2nd token of step 2's completions
    ("backward", 3, 2, 2),  # inside step 3's 2nd backward pass, the 1st micro-batch's gradients accumulated
    ("checkpoint", 3, 1, 2),  # step 3's checkpoint half written: weights on disk, trainer state not, not renamed
])
def test_sigkill_at_a_chosen_moment_resumes_exactly(tmp_path, reference, reward_file, moment, step, nth, resumes_after):
    run = tmp_path / "run"
    crashed = subprocess.run([sys.executable, DRIVER, "train", "grpo", *_sets(run, "grpo", reward_file)],
                             env={**ENV, "CRASH_AT": f"{moment}:{step}:{nth}"}, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    checkpoints = run / "checkpoints"
    if moment == "checkpoint":
        assert [r["step"] for r in _rows(run)] == [1, 2, 3]  # step 3 itself finished and was logged
        torn = [p for p in checkpoints.iterdir() if p.name.startswith(f".step-{step:06d}.")]
        assert len(torn) == 1 and (torn[0] / "model.safetensors").stat().st_size > 0
        assert not (torn[0] / "trainer_state.pt").exists() and not (checkpoints / f"step-{step:06d}").exists()
    else:
        assert [r["step"] for r in _rows(run)] == list(range(1, step))  # it died inside `step`
    assert latest_checkpoint(checkpoints) == checkpoints / f"step-{resumes_after:06d}"
    assert _resume(run) == resumes_after
    _assert_same_run(run, reference("grpo"))


def test_ctrl_c_saves_a_checkpoint_stops_with_one_line_and_resumes_exactly(tmp_path, reference, reward_file):
    run = tmp_path / "run"
    # save_steps=0: the only checkpoint is the one Ctrl-C writes
    process = subprocess.Popen(_cli("grpo", *_sets(run, "grpo", reward_file, "save_steps=0")),
                               env={**ENV, "TEST_REWARD_DELAY": "0.5"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((run / "metrics.jsonl").exists() and _rows(run)):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1, stderr
    stopped_after = int(lines[0].split("interrupted after step ")[1].split(";")[0])
    checkpoint = run / "checkpoints" / f"step-{stopped_after:06d}"
    assert 1 <= stopped_after < 4 and [r["step"] for r in _rows(run)] == list(range(1, stopped_after + 1))
    assert f"checkpoint {checkpoint};" in lines[0] and lines[0].endswith(f"incentivize train --resume {run}")
    assert latest_checkpoint(run / "checkpoints") == checkpoint and not (run / "final").exists()
    assert _resume(run) == stopped_after
    _assert_same_run(run, reference("grpo"))


def test_resume_refuses_a_directory_without_checkpoints_or_with_new_settings(tmp_path):
    config = load_config("grpo", None, [*_overrides(tmp_path / "run"), "save_steps=0", "max_steps=1"])
    train(config)
    with pytest.raises(IncentivizeError, match="no complete checkpoint"):
        train(load_run_config(tmp_path / "run"), resume=True)
    with pytest.raises(IncentivizeError, match="not a run directory"):
        load_run_config(tmp_path / "nothing")
    result = subprocess.run(_cli("--resume", str(tmp_path / "run"), "--set", "beta=0"), capture_output=True, text=True)
    assert result.returncode == 2 and "drop --config, --set" in result.stdout + result.stderr
