"""Scale-out (`incentivize.distributed`): rollout workers give the same groups and the same learning whatever
their number, a killed worker is restarted and its round sampled again, and there is no Ray at all
without them; data-parallel learners take the steps of one learner, and a killed one stops the run cleanly.

Each run is a real `incentivize train` process with a local Ray of its own and one CPU thread per process,
so that runs are reproducible bit for bit.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from incentivize.checkpoint import latest_checkpoint

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


def _learn(run, learners, reward_file, algorithm="grpo", *extra, wait=True):
    args = ["model=tiny-random", "max_steps=2", "num_generations=4", "generation_batch_size=16",
            "max_completion_length=12", "learning_rate=1e-3", "beta=0.04", "eval_before=false", "eval_limit=2",
            "report_to=none", f"rewards=[{reward_file}:length]", f"num_learners={learners}", *extra]
    if algorithm == "ppo":
        args += ["num_generations=1", "generation_batch_size=4", "critic_warmup_steps=0"]
    command = [sys.executable, "-m", "incentivize.cli", "train", algorithm, "--output-dir", str(run),
               *[item for a in args for item in ("--set", a)]]
    if not wait:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_two_learners_take_the_same_steps_as_one(tmp_path, reward_file, algorithm):
    """Each of 2 learners trains on half of the groups; with the gradients summed over the process group and
    the loss normalised by the whole batch, the loss, the gradient norm and the weights after 2 steps are
    those of one learner on the same batches (the reference log-probabilities, and PPO's critic values,
    gathered from both)."""
    from safetensors.torch import load_file

    runs = [tmp_path / f"learners-{n}" for n in (1, 2)]
    for n, run in zip((1, 2), runs):
        done = _learn(run, n, reward_file, algorithm)
        assert done.returncode == 0, done.stderr
    assert "2 learners in one process group" in done.stderr
    one, two = (_rows(run / "metrics.jsonl") for run in runs)
    for x, y in zip(one, two, strict=True):
        for key in ("loss", "grad_norm", "kl", "entropy", "value_loss"):
            if key in x:
                # PPO's policy loss sums whitened advantages to about 0: float32 terms of order 1e-2 cancel to
                # 1e-7, where the order of the sums (one process or two) decides the last bits
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert one[-1]["grad_norm"] > 0
    weights = [load_file(run / "final" / "model.safetensors") for run in runs]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_learners_that_do_not_divide_the_groups_are_one_line(tmp_path, reward_file):
    done = _learn(tmp_path / "run", 3, reward_file)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "num_learners (3) must divide the groups" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_killed_learner_stops_the_run_with_one_line_and_its_checkpoint_intact(tmp_path, reward_file):
    run = tmp_path / "run"
    process = _learn(run, 2, reward_file, "grpo", "max_steps=6", "save_steps=1", wait=False)
    marker = run / "checkpoints" / "step-000001" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not marker.exists() and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1]
    subprocess.run(["pkill", "-9", "-f", "ray::LearnerActor"], check=False)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    assert time.monotonic() - started < 150  # no hang
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "learner" in errors[0] and "--resume" in errors[0], stderr
    assert latest_checkpoint(run / "checkpoints") is not None and not (run / "final").exists()
    resumed = subprocess.run([sys.executable, "-m", "incentivize.cli", "train", "--resume", str(run)], env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == list(range(1, 7))
