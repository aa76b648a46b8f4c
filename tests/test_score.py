"""`incentivize train score`: SCoRe's two stages on self-correction episodes."""

import json

import yaml

from test_cli import _assert_one_line_error, _cli


def test_score_runs_stage_one_then_stage_two_from_its_model(tmp_path):
    out = tmp_path / "score"
    result = _cli("train", "score", "--output-dir", out, "--set", "model=tiny-random", "--set", "stage1_steps=1",
                  "--set", "stage2_steps=1", "--set", "num_generations=2", "--set", "generation_batch_size=4",
                  "--set", "max_completion_length=4", "--set", "eval_limit=2", "--set", "report_to=none")
    assert result.returncode == 0, result.stderr
    stage1 = yaml.safe_load((out / "stage1" / "config.yaml").read_text())
    stage2 = yaml.safe_load((out / "stage2" / "config.yaml").read_text())
    assert stage1["model"] == "tiny-random" and stage2["model"] == str(out / "stage1" / "final")
    assert stage1["train_first_turn"] is False and stage1["first_turn_beta"] == 0.1 and stage1["beta"] == 0.01
    assert stage1["episode_reward"] == "last" and stage2["episode_reward"] == "shaped"
    assert stage2["train_first_turn"] is True and stage2["first_turn_beta"] is None
    models = json.loads((out / "summary.json").read_text())["models"]
    assert set(models) == {"base", "stage1", "stage2"}
    for metrics in models.values():
        assert {"accuracy@t1", "accuracy@t2", "delta", "delta_i_to_c", "delta_c_to_i", "unchanged"} <= set(metrics)
    table = (out / "comparison.md").read_text()
    assert "after stage I " in table and "after stage II" in table and "base tiny-random" in table


def test_score_keys_are_checked_with_the_field_named(tmp_path):
    result = _cli("train", "score", "--output-dir", tmp_path / "x", "--set", "stage2_steps=0")
    _assert_one_line_error(result, "stage2_steps")
    assert not (tmp_path / "x").exists()
