"""Rollout workers on Ray (`incentivize.distributed`): the same groups and the same learning whatever the
number of workers, a killed worker restarted and its round sampled again, and no Ray at all without them.

Each run is a real `incentivize train` process with a local Ray of its own and one CPU thread per process,
so that runs are reproducible bit for bit.
"""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
COMPARED = ("reward_mean", "reward_std", "accuracy", "loss", "grad_norm", "entropy", "completion_length",
            "reward/length")

# a reward that differs between completions, so that the policy moves; with KILL_ONCE set, the first worker
# process to score a group of step 2 kills itself (kill -9)
REWARD = """
import os
import signal

def length(prompts, completions, **columns):
    marker, run = os.environ.get("KILL_ONCE"), os.environ.get("KILL_RUN", "")
    if marker and not os.path.exists(marker) and os.path.isdir(os.path.join(run, "checkpoints", "step-000001")):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process scoring a group of step 2
    return [len(c) / 40.0 for c in completions]
"""


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "rewards.py"
    path.write_text(REWARD)
    return path


def _train(run, workers, reward_file, env=ENV, *extra):
    args = ["model=tiny-random", "max_steps=3", "num_generations=4", "generation_batch_size=16",
            "max_completion_length=12", "learning_rate=1e-3", "eval_before=false", "eval_limit=2",
            "report_to=none", "save_steps=1", f"rewards=[{reward_file}:length]", f"num_rollout_workers={workers}",
            *extra]
    return subprocess.run([sys.executable, "-m", "incentivize.cli", "train", "grpo", "--output-dir", str(run),
                           *[item for a in args for item in ("--set", a)]],
                          env=env, capture_output=True, text=True, timeout=600)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same(a, b):
    """The same completions and rewards, token for token; the same learning to float rounding (a worker's
    batch holds other prompts than one process's, so the sampling log-probabilities differ in the last bits)."""
    assert _rows(a / "samples.jsonl") == _rows(b / "samples.jsonl")
    for x, y in zip(_rows(a / "metrics.jsonl"), _rows(b / "metrics.jsonl"), strict=True):
        for key in COMPARED:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)


def test_the_groups_and_the_learning_do_not_depend_on_the_number_of_rollout_workers(tmp_path, reward_file):
    runs = {}
    for workers in (0, 1, 2):
        runs[workers] = tmp_path / f"workers-{workers}"
        done = _train(runs[workers], workers, reward_file)
        assert done.returncode == 0, done.stderr
    assert "2 rollout workers ready" in done.stderr
    assert len({r["completion"] for r in _rows(runs[2] / "samples.jsonl")}) > 8  # really sampled
    assert any(r["grad_norm"] for r in _rows(runs[2] / "metrics.jsonl"))  # the policy moved: the workers followed
    _assert_same(runs[1], runs[0])
    _assert_same(runs[2], runs[0])
    assert all("time/weight_sync" in r for r in _rows(runs[2] / "metrics.jsonl"))


def test_a_killed_rollout_worker_is_restarted_and_its_round_sampled_again(tmp_path, reward_file):
    reference = tmp_path / "reference"
    assert _train(reference, 2, reward_file).returncode == 0
    marker = tmp_path / "killed"
    done = _train(tmp_path / "run", 2, reward_file, {**ENV, "KILL_ONCE": str(marker), "KILL_RUN": str(tmp_path / "run")})
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # a worker really died
    _assert_same(tmp_path / "run", reference)


def test_without_workers_no_ray_is_imported(tmp_path):
    code = ("import sys\nfrom incentivize.cli import main\nsys.argv = ['incentivize', 'train', 'grpo', '--model', "
            "'tiny-random', '--set', 'max_steps=1', '--set', 'generation_batch_size=8', '--set', 'num_generations=4', "
            "'--set', 'max_completion_length=4', '--set', 'eval_limit=1', '--set', 'report_to=none', '--output-dir', "
            f"{str(tmp_path / 'run')!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nprint('no ray')")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr


def test_a_ray_address_nobody_answers_is_one_line_within_seconds(tmp_path, reward_file):
    done = _train(tmp_path / "run", 1, reward_file, ENV, "ray_address=127.0.0.1:9")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ray_address 127.0.0.1:9: no Ray cluster answers there" in errors[0]
    assert not (tmp_path / "run").exists()
