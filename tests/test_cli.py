"""The command line as a user runs it: exit codes, one-line errors, files written."""

import json
import subprocess
import sys

import pytest


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "incentivize.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in " ".join(lines), result.stderr


def test_eval_writes_metrics_and_every_sample(tmp_path):
    out = tmp_path / "run"
    result = _cli("eval", "--model", "tiny-random", "--limit", 3, "--samples", 2, "--max-new-tokens", 8, "--output", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    for key in ["greedy_accuracy", "pass@1", "pass@2", "maj@2", "greedy_mean_length", "sample_parsed", "greedy_parsed"]:
        assert key in metrics
    assert metrics["problems"] == 3 and results["settings"]["samples"] == 2
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * (1 + 2)
    assert {r["mode"] for r in rows} == {"greedy", "sample"}
    assert {"prompt", "completion", "extracted", "correct", "gold"} <= set(rows[0])
    assert "greedy_accuracy" in result.stdout


REWARDS = '''
def picky(prompts, completions, expression, **columns):
    if expression[0] == "85 + 30":
        raise ValueError("I do not like this one")
    return [float(len(c)) for c in completions]

def broken(prompts, completions, **columns):
    raise RuntimeError("always broken")
'''


def test_a_reward_function_failing_on_one_sample_keeps_the_others(tmp_path):
    (tmp_path / "rewards.py").write_text(REWARDS)
    out = tmp_path / "run"
    result = _cli("eval", "--model", "tiny-random", "--limit", 3, "--samples", 2, "--max-new-tokens", 4,
                  "--reward", f"{tmp_path}/rewards.py:picky", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "failed on 3 of 9 samples" in result.stderr and "I do not like this one" in result.stderr
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    bad = [r for r in rows if "85 + 30" in r["prompt"]]
    good = [r for r in rows if "85 + 30" not in r["prompt"]]
    assert len(bad) == 3 and all(r["rewards"]["picky"] is None for r in bad)
    assert all(r["rewards"]["picky"] == float(len(r["completion"])) for r in good)


def test_a_reward_function_that_always_fails_is_an_error_but_results_are_kept(tmp_path):
    (tmp_path / "rewards.py").write_text(REWARDS)
    out = tmp_path / "run"
    result = _cli("eval", "--model", "tiny-random", "--limit", 2, "--samples", 0, "--max-new-tokens", 4,
                  "--reward", f"{tmp_path}/rewards.py:broken", "--output", out)
    _assert_one_line_error(result, "broken failed on 2 of 2 samples", "RuntimeError: always broken")
    assert (out / "samples.jsonl").exists() and (out / "results.json").exists()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--task", "arithmatic"], ["unknown task 'arithmatic'", "did you mean 'arithmetic'"]),
        (["--model", "nope-model"], ["unknown model 'nope-model'"]),
        (["--task", "gsm8k"], ["needs --data"]),
        (["--task", "gsm8k", "--data", "{tmp}/bad.jsonl"], ["bad.jsonl:2: not valid JSON"]),
        (["--task", "jsonl", "--data", "{tmp}/noanswer.jsonl"], ["noanswer.jsonl:1: row has no field 'answer'", "--answer-field"]),
        (["--reward", "{tmp}/missing.py:f"], ["missing.py"]),
        (["--reward", "{tmp}/rewards.py:nothere"], ["nothere", "picky"]),
        (["--temperature", "-1"], ["--temperature"]),
        (["--num-ops", "0"], ["num_ops and digits must be at least 1"]),
        (["--split", "validation"], ["splits 'train' and 'test'"]),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, fragments):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    (tmp_path / "noanswer.jsonl").write_text('{"prompt": "What is 1 + 1?", "label": 2}\n')
    (tmp_path / "rewards.py").write_text(REWARDS)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = _cli("eval", "--model", "tiny-random", "--limit", 1, "--samples", 0, *args, "--output", tmp_path / "o")
    _assert_one_line_error(result, *fragments)


def test_train_smoke_run_as_in_the_readme(tmp_path):
    result = _cli("train", "grpo", "--model", "tiny-random", "--task", "arithmetic", "--set", "max_steps=2",
                  "--set", "generation_batch_size=8", "--set", "max_completion_length=8", "--set", "eval_limit=4",
                  "--output-dir", "runs/smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "smoke"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "final" / "config.json").exists() and (run / "final" / "model.safetensors").exists()
    assert "greedy_accuracy" in result.stdout and "before" in result.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["grpo", "--set", "bta=0.1"], ["unknown config key 'bta'", "did you mean 'beta'"]),
        (["grpo", "--set", "num_generations=3"], ["multiple of num_generations"]),
        (["grpoo"], ["unknown algorithm 'grpoo'"]),
        (["grpo", "--config", "missing.yaml"], ["missing.yaml does not exist"]),
    ],
)
def test_train_bad_config_is_one_clear_line(tmp_path, args, fragments):
    _assert_one_line_error(_cli("train", *args, cwd=tmp_path), *fragments)
