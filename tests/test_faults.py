"""Faults during training: failing and hanging reward functions, NaN losses, a full disk, checkpoint pruning."""

import errno
import json
import sys
import time
import zlib

import pytest
import torch

from incentivize.checkpoint import (
    complete_checkpoints, latest_checkpoint, load_checkpoint, remove_partial_checkpoints, save_checkpoint,
)
from incentivize.config import load_config, load_run_config
from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.trainers import rl

# Which completion fails how follows a hash of its text, so each step mixes good, raising and hanging samples.
REWARDS = """
import time
import zlib

def flaky(prompts, completions, **columns):
    out = []
    for c in completions:
        kind = zlib.crc32(c.encode()) % 4
        if kind == 0:
            raise ValueError("flaky failed")
        if kind == 1:
            time.sleep(1000)
        while kind == 2:
            pass
        out.append(len(c) / 40.0)
    return out


def length(prompts, completions, **columns):
    return [len(c) / 40.0 for c in completions]
"""


def _overrides(tmp_path, *extra):
    (tmp_path / "rewards.py").write_text(REWARDS)
    return ["model=tiny-random", "max_steps=2", "num_generations=4", "generation_batch_size=8",
            "max_completion_length=8", "learning_rate=1e-3", "micro_batch_size=4", "eval_before=false",
            "eval_limit=2", f"rewards=[{tmp_path}/rewards.py:flaky]", "reward_timeout_s=0.3",
            f"output_dir={tmp_path}/run", *extra]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_cli(monkeypatch, capsys, overrides):
    """`incentivize train grpo --set ...` in this process: (exit status, the lines starting with 'error:')."""
    from incentivize import cli

    monkeypatch.setattr(sys, "argv", ["incentivize", "train", "grpo", *[i for o in overrides for i in ("--set", o)]])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    stderr = capsys.readouterr().err
    return exited.value.code, [line for line in stderr.splitlines() if line.startswith("error:")]


def test_raising_and_hanging_rewards_cost_only_their_samples_and_are_counted(tmp_path):
    started = time.monotonic()
    result = rl.train(load_config("grpo", None, _overrides(tmp_path, "max_steps=3")))
    assert time.monotonic() - started < 300  # a sleeping sample alone would take 1000 s: the time limit cut it
    rows, samples = _rows(result.run_dir / "metrics.jsonl"), _rows(result.run_dir / "samples.jsonl")
    kinds = [zlib.crc32(s["completion"].encode()) % 4 for s in samples]
    assert set(kinds) == {0, 1, 2, 3}  # raising, sleeping, spinning and good samples
    for row in rows:
        step_kinds = [k for k, s in zip(kinds, samples) if s["step"] == row["step"]]
        assert row["reward_errors"] == sum(k <= 2 for k in step_kinds)
        assert row["reward_timeouts"] == sum(k in (1, 2) for k in step_kinds)
    for kind, sample in zip(kinds, samples):
        assert (sample["reward"] is None) == (kind <= 2)  # no reward: left out of the advantages and the loss
    assert (result.run_dir / "final").exists()


def test_on_reward_error_raise_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    status, errors = _run_cli(monkeypatch, capsys, _overrides(tmp_path, "on_reward_error=raise"))
    assert status == 2 and len(errors) == 1
    assert "reward function flaky failed on" in errors[0]
    assert "ValueError: flaky failed" in errors[0] or "timed out after 0.3 s" in errors[0]


def test_nan_losses_skip_updates_then_stop_the_run_with_the_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    nan_steps, current = {2, 4, 5}, {"step": 0}
    collect, clip_loss = rl._collect, rl.POLICY_LOSSES.get("ppo")

    def tracking_collect(*args, **kwargs):
        current["step"] = args[-1]
        return collect(*args, **kwargs)

    def poisoned_loss(*args, **kwargs):  # NaN in the loss itself, hence in every gradient
        per_token, stats = clip_loss(*args, **kwargs)
        return (per_token * torch.nan if current["step"] in nan_steps else per_token), stats

    monkeypatch.setattr(rl, "_collect", tracking_collect)
    monkeypatch.setattr(rl.POLICY_LOSSES, "get", lambda name: poisoned_loss)
    status, errors = _run_cli(monkeypatch, capsys, _overrides(
        tmp_path, "max_steps=6", "max_nonfinite_steps=2", "save_steps=1", "save_total_limit=10",
        f"rewards=[{tmp_path}/rewards.py:length]",
    ))
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    assert status == 2 and len(errors) == 1
    assert "step 5: the loss or gradient was NaN or infinite in 2 steps in a row" in errors[0]
    assert str(checkpoints / "step-000004") in errors[0]
    rows = _rows(run / "metrics.jsonl")
    assert [r["nonfinite_streak"] for r in rows] == [0, 1, 0, 1, 2]  # a good step ends a streak
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 3]
    assert [r["loss"] is None for r in rows] == [False, True, False, True, True]
    assert [p.name for p in complete_checkpoints(checkpoints)] == [f"step-{s:06d}" for s in (1, 2, 3, 4)]
    assert not (run / "final").exists()
    # the newest checkpoint loads, holds finite weights, and a skipped step left the weights as they were
    weights = {}
    for step in (1, 2, 3, 4):
        model, _ = load("tiny-random")
        state, info = load_checkpoint(checkpoints / f"step-{step:06d}", model)
        assert info["step"] == step and state["nonfinite_streak"] == rows[step - 1]["nonfinite_streak"]
        weights[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        assert all(torch.isfinite(p).all() for p in weights[step].values())
    for before, skipped in ((1, 2), (3, 4)):
        assert all(torch.equal(weights[before][n], weights[skipped][n]) for n in weights[before])
    assert not all(torch.equal(weights[2][n], weights[3][n]) for n in weights[2])  # step 3 did update


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_stops_clearly(tmp_path, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".step-000002." in str(f):
            with open(f, "wb") as handle:
                handle.write(b"\0" * 1000)  # some bytes made it, then the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    config = load_config("grpo", None, _overrides(tmp_path, "max_steps=3", "save_steps=1",
                                                  f"rewards=[{tmp_path}/rewards.py:length]"))
    monkeypatch.setattr(torch, "save", full_disk)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(IncentivizeError) as failed:
        rl.train(config)
    message = str(failed.value)
    assert "step 2: writing its checkpoint failed (OSError: [Errno 28] No space left on device)" in message
    assert f"the newest complete checkpoint {checkpoints / 'step-000001'} is intact" in message and "\n" not in message
    assert [p.name for p in checkpoints.iterdir()] == ["step-000001"]  # nothing torn left, nothing taken as newer
    monkeypatch.setattr(torch, "save", real_save)
    model, _ = load("tiny-random")
    assert load_checkpoint(checkpoints / "step-000001", model)[1]["step"] == 1
    rl.train(load_run_config(tmp_path / "run"), resume=True)  # space freed: the run continues from step 1
    assert [r["step"] for r in _rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_save_total_limit_keeps_the_newest_complete_checkpoints(tmp_path, tiny):
    model, tokenizer = tiny
    torn = tmp_path / ".step-000005.x1y2"  # a checkpoint whose writing was killed
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\0" * 10)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, tokenizer, {"x": torch.zeros(1)}, {}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000004"
    assert remove_partial_checkpoints(tmp_path) == [torn] and not torn.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003", "step-000004"]


def test_out_of_memory_stops_with_one_line_naming_the_checkpoint_and_the_remedy(tmp_path, monkeypatch):
    real_step = rl.Learner.step

    def step_then_run_out(self, data, train_actor=True):
        if int(self.scheduler.last_epoch) == 2:  # the third step's update does not fit
            raise torch.OutOfMemoryError("CPU out of memory (tried to allocate 4.00 GiB)")
        return real_step(self, data, train_actor)

    config = load_config("grpo", None, _overrides(tmp_path, "max_steps=3", "save_steps=1"))
    monkeypatch.setattr(rl.Learner, "step", step_then_run_out)
    with pytest.raises(IncentivizeError) as failed:
        rl.train(config)
    message = str(failed.value)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert message.startswith("step 3: out of memory;") and "\n" not in message
    assert f"the newest checkpoint is {checkpoints / 'step-000002'}" in message
    assert "lower micro_batch_size" in message and f"incentivize train --resume {tmp_path / 'run'}" in message
    model, _ = load("tiny-random")
    assert load_checkpoint(checkpoints / "step-000002", model)[1]["step"] == 2
