"""SFT on reference solutions, and Cobbe et al.'s verifier recipe end to end (tiny-random)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from incentivize.config import SFTConfig, load_settings
from incentivize.trainers.sft import train_sft


def test_sft_lowers_the_loss_on_reference_solutions_and_saves_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = load_settings(SFTConfig, None, ["model=tiny-random", "num_examples=16", "epochs=4", "learning_rate=3e-3",
                                             "batch_size=8", "eval_limit=2", f"output_dir={tmp_path / 'sft'}"])
    result = train_sft(config)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8  # 2 batches x 4 epochs
    assert losses[-1] < 0.8 * losses[0]
    assert set(result.before) >= {"greedy_accuracy"} and set(result.after) >= {"greedy_accuracy"}
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "final")
    assert model.config.num_hidden_layers == 2


def test_verifier_recipe_runs_end_to_end_from_one_command(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    result = subprocess.run(
        [sys.executable, "-m", "incentivize.cli", "train", "verifier", "--model", "tiny-random", "--output-dir", str(out),
         "--set", "sft_epochs=1", "--set", "sft_examples=8", "--set", "num_problems=4", "--set", "samples_per_problem=2",
         "--set", "max_completion_length=8", "--set", "eval_samples=4", "--set", "eval_limit=2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "generator" / "final" / "config.json").is_file()
    assert (out / "verifier" / "final" / "incentivize_verifier.json").is_file()
    process = json.loads((out / "process-verifier" / "final" / "incentivize_verifier.json").read_text())
    assert process["kind"] == "prm"  # trained on the outcome verifier's solutions, not sampled again
    config = yaml.safe_load((out / "process-verifier" / "config.yaml").read_text())
    assert config["data"] == str(out / "verifier" / "solutions.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    for name in ("select/majority", "select/orm", "select/weighted:orm", "select/top3:orm", "select/prm",
                 "select/weighted:prm", "select/top3:prm"):
        assert 0.0 <= summary["metrics"][name] <= 1.0
    sweep = json.loads((out / "eval" / "sweep.json").read_text())["accuracy"]
    assert set(sweep["orm"]) == set(sweep["prm"]) == {"1", "2", "4"}
    assert (out / "eval" / "sweep.svg").read_text().startswith("<svg")
    assert "| orm |" in result.stderr
