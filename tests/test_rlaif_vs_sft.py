"""The RLAIF-vs-SFT recipe on tiny-random: teacher answers, SFT on them, DPO with an AI critic and with the
verifier, one comparison table; a finished stage is not run again on resume."""

import json
import os
import signal
import subprocess
import sys

import pytest

from incentivize.config import load_settings, RlaifVsSftConfig
from incentivize.recipes.rlaif_vs_sft import RlaifVsSft, run_rlaif_vs_sft
from incentivize.tasks.base import Task, Verdict
from incentivize.trainers.interrupt import TrainingInterrupted
from incentivize.trainers.run import run


def _config(tmp_path, name="run"):
    return load_settings(RlaifVsSftConfig, None, [
        "model=tiny-random", "sft_teacher=oracle", "critic=tiny-random", "sft_examples=8", "sft_epochs=1",
        "rounds=1", "problems_per_round=4", "samples_per_problem=4", "max_completion_length=8", "eval_limit=2",
        "judge_confidence=0.5", "save_steps=1", "report_to=none", f"output_dir={tmp_path / name}",
    ])


def test_the_recipe_compares_sft_rlaif_and_the_oracle_critic_and_resumes_after_its_finished_stages(tmp_path, monkeypatch):
    # tiny-random never answers right; a verifier that calls every even-length completion right makes pairs
    monkeypatch.setattr(Task, "verify", lambda self, example, completion: Verdict(None, len(completion) % 2 == 0))
    said = []
    result = run_rlaif_vs_sft(_config(tmp_path), on_event=said.append)
    run_dir = result.run_dir
    assert set(result.summary["arms"]) == {"base", "sft", "rlaif", "oracle-critic"}
    assert all(0.0 <= v <= 1.0 for v in result.summary["arms"].values())
    table = (run_dir / "comparison.md").read_text()
    assert "(b) (a) + DPO, AI critic tiny-random" in table and "(c) (a) + DPO, the verifier as critic" in table
    for stage in ("sft", "rlaif", "oracle-critic"):
        assert (run_dir / stage / "final" / "model.safetensors").exists()
    # (b) and (c) start from (a)'s model
    for stage in ("rlaif", "oracle-critic"):
        config = json.loads((run_dir / stage / "summary.json").read_text())["config"]
        assert config["model"] == str(run_dir / "sft" / "final")
    assert json.loads((run_dir / "rlaif" / "summary.json").read_text())["config"]["labeller"] == "judge"

    # Ctrl-C after the SFT stage; --resume runs (b) and (c) only
    def interrupt(step, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run(RlaifVsSft(_config(tmp_path, "again")), _config(tmp_path, "again"), name="x", on_step=interrupt)
    sft_weights = (tmp_path / "again" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    said = []
    resumed = run_rlaif_vs_sft(_config(tmp_path, "again"), resume=True, on_event=said.append)
    assert not any("fine-tuning" in s for s in said)
    assert (tmp_path / "again" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == sft_weights
    assert set(resumed.summary["arms"]) == {"base", "sft", "rlaif", "oracle-critic"}


def test_teacher_and_critic_options_belong_to_the_recipe(tmp_path):
    result = subprocess.run([sys.executable, "-m", "incentivize.cli", "train", "sft", "--critic", "tiny-random",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--sft-teacher and --critic are for train rlaif-vs-sft" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_teacher_that_never_answers_stops_the_recipe_with_the_field_named(tmp_path):
    from incentivize.errors import IncentivizeError

    config = load_settings(RlaifVsSftConfig, None, ["model=tiny-random", "sft_teacher=tiny-random", "sft_examples=2",
                                                    "max_completion_length=4", "report_to=none",
                                                    f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(IncentivizeError, match="sft_teacher: tiny-random gave an empty answer to every one of the 2"):
        run_rlaif_vs_sft(config)


def test_sft_fine_tunes_on_a_teachers_prompt_completion_rows(tmp_path):
    from incentivize.config import SFTConfig
    from incentivize.errors import IncentivizeError
    from incentivize.trainers.sft import train_sft

    rows = [{"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}\nAnswer: {a + b}"}
            for a in range(10, 14) for b in range(20, 24)]
    data = tmp_path / "teacher.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = load_settings(SFTConfig, None, ["model=tiny-random", f"data={data}", "epochs=3", "batch_size=8",
                                               "learning_rate=1e-3", "eval_limit=1", "report_to=none",
                                               f"output_dir={tmp_path / 'sft'}"])
    said = []
    result = train_sft(settings, on_event=said.append)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("16 solutions" in s for s in said) and len(losses) == 6 and losses[-1] < losses[0]
    data.write_text('{"prompt": "q"}\n')
    with pytest.raises(IncentivizeError, match="teacher.jsonl:1: row has no field 'completion'"):
        train_sft(settings.model_copy(update={"output_dir": str(tmp_path / "bad")}))


def test_a_critic_too_unsure_to_label_any_pair_leaves_b_without_a_result_and_the_rest_runs(tmp_path, monkeypatch):
    from incentivize.rewards.judge import Judge

    monkeypatch.setattr(Task, "verify", lambda self, example, completion: Verdict(None, len(completion) % 2 == 0))
    monkeypatch.setattr(Judge, "compare", lambda self, questions, a, b: [0.5] * len(a))  # never prefers either
    config = _config(tmp_path).model_copy(update={"judge_confidence": 0.6})
    result = run_rlaif_vs_sft(config)
    assert result.summary["arms"]["rlaif"] is None and "judge preferred no completion" in result.summary["no_pairs"]
    assert result.summary["arms"]["oracle-critic"] is not None and result.summary["arms"]["sft"] is not None
    table = (result.run_dir / "comparison.md").read_text()
    assert "| (b) (a) + DPO, AI critic tiny-random | no pairs: round 1: the judge preferred no completion" in table
    assert "(c) (a) + DPO, the verifier as critic" in table
