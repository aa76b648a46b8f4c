import pytest

from incentivize.config import PRESETS, load_config
from incentivize.errors import IncentivizeError


def test_presets_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.1\nnum_generations: 4\ntask_options:\n  num_ops: 3\n")
    config = load_config("grpo", path, ["beta=0.0", "task_options.digits=2", "lora_target_modules=[q_proj, v_proj]"])
    assert config.beta == 0.0 and config.num_generations == 4
    assert config.task_options == {"num_ops": 3, "digits": 2}
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.advantage == "grpo" and config.kl_estimator == "k3"
    assert load_config("grpo").beta == 0.0 and load_config("rloo").beta == 0.05
    assert load_config("ppo").advantage == "gae" and load_config("ppo").kl_in == "reward"
    assert load_config("dapo").clip_high == 0.28 and load_config("grpo").clip_high == 0.2


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        assert load_config(name).algorithm == name


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["bta=0.1"], "unknown config key 'bta'; did you mean 'beta'"),
        (["num_generations=5"], "multiple of num_generations"),
        (["learning_rate=fast"], "learning_rate"),
        (["beta"], "expected key=value"),
        (["scale_rewards=sometimes"], "scale_rewards"),
        (["advantage=rloo", "num_generations=1", "generation_batch_size=4"], "num_generations must be >= 2"),
    ],
)
def test_bad_overrides_are_clear(overrides, match):
    with pytest.raises(IncentivizeError, match=match):
        load_config("grpo", None, overrides)


def test_bad_files_are_clear(tmp_path):
    with pytest.raises(IncentivizeError, match="does not exist"):
        load_config("grpo", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.1\nlr: [1, 2\n")
    with pytest.raises(IncentivizeError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config("grpo", bad)
    other = tmp_path / "other.yaml"
    other.write_text("algorithm: ppo\n")
    with pytest.raises(IncentivizeError, match="trains 'grpo'"):
        load_config("grpo", other)
    with pytest.raises(IncentivizeError, match="unknown algorithm 'grp'"):
        load_config("grp")
