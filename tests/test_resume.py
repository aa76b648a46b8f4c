"""Resuming a run continues exactly: the same samples, rewards and losses as a run never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from incentivize.config import load_config, load_run_config
from incentivize.errors import IncentivizeError
from incentivize.trainers.rl import train

COMPARED = ("reward_mean", "reward_std", "accuracy", "loss", "kl", "entropy", "grad_norm", "completion_length",
            "value_loss", "lr")


def _overrides(run_dir, algorithm="grpo"):
    extra = ["generation_batch_size=4", "critic_warmup_steps=1"] if algorithm == "ppo" else []
    return ["model=tiny-random", "max_steps=4", "num_generations=4", "generation_batch_size=8",
            "max_completion_length=8", "learning_rate=1e-3", "micro_batch_size=4", "beta=0.04", "eval_before=false",
            "eval_limit=2", "save_steps=1", "save_total_limit=2", f"output_dir={run_dir}", *extra]


def _rows(run_dir, name="metrics.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _assert_same_run(resumed_dir, reference_dir):
    resumed, reference = _rows(resumed_dir), _rows(reference_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == [1, 2, 3, 4]
    for a, b in zip(resumed, reference):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["step"], key)
    # the same completions with the same rewards, in the same data order
    assert _rows(resumed_dir, "samples.jsonl") == _rows(reference_dir, "samples.jsonl")


def _cli(*args):
    return [sys.executable, "-m", "incentivize.cli", "train", *args]


# One thread: multi-threaded MKL matrix products on a CPU can differ in the last bit from run to run
# (their blocking follows memory alignment), and on tiny-random's near-uniform policy such a bit can flip
# a sampled token. With one thread two uninterrupted runs agree bit for bit, so a resumed one must too.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize("algorithm,kill_after", [("grpo", 2), ("grpo", 3), ("ppo", 2)])
def test_resume_after_kill_9_continues_exactly(tmp_path, algorithm, kill_after):
    reference, run = tmp_path / "reference", tmp_path / "run"
    sets = [item for pair in (("--set", o) for o in _overrides(run, algorithm)) for item in pair]
    done = subprocess.run(_cli(algorithm, *[s.replace(str(run), str(reference)) for s in sets]), env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(_cli(algorithm, *sets), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    marker = run / "checkpoints" / f"step-{kill_after:06d}" / "trainer_state.json"
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-way through the next step (or through writing its checkpoint)
    process.wait()
    assert not (run / "final").exists()
    result = subprocess.run(_cli("--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    resumed_from = int(output.split("resuming after step ")[1].split()[0]) if "resuming after step" in output else -1
    assert resumed_from >= kill_after, output
    _assert_same_run(run, reference)


def test_resume_refuses_a_directory_without_checkpoints_or_with_new_settings(tmp_path):
    config = load_config("grpo", None, [*_overrides(tmp_path / "run"), "save_steps=0", "max_steps=1"])
    train(config)
    with pytest.raises(IncentivizeError, match="no complete checkpoint"):
        train(load_run_config(tmp_path / "run"), resume=True)
    with pytest.raises(IncentivizeError, match="not a run directory"):
        load_run_config(tmp_path / "nothing")
    result = subprocess.run(_cli("--resume", str(tmp_path / "run"), "--set", "beta=0"), capture_output=True, text=True)
    assert result.returncode == 2 and "drop --config, --set" in result.stdout + result.stderr
