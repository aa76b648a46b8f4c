"""The RL loop end to end on tiny-random: a few CPU steps each."""

import json

import pytest
import torch

from incentivize.config import load_config
from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.trainers.rl import train

LENGTH_REWARD = '''
def length(prompts, completions, **columns):
    return [len(c) / 40.0 for c in completions]

def constant(prompts, completions, **columns):
    return [1.0 for c in completions]
'''


def _config(tmp_path, algorithm="grpo", *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "rewards.py").write_text(LENGTH_REWARD)
    return load_config(algorithm, None, [
        "model=tiny-random", "max_steps=2", "num_generations=4", "generation_batch_size=8",
        "max_completion_length=8", "eval_limit=4", "learning_rate=1e-3", "micro_batch_size=4",
        f"rewards=[{tmp_path}/rewards.py:length]", "reward_weights=[0.0, 1.0]",
        f"output_dir={tmp_path}/run", *extra,
    ])


def _initial_weights():
    model, _ = load("tiny-random")
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_grpo_changes_every_trained_parameter_and_logs_each_step(tmp_path):
    result = train(_config(tmp_path, "grpo", "beta=0.04"))
    initial = _initial_weights()
    trained, _ = load(result.run_dir / "final")
    for name, parameter in trained.named_parameters():
        assert not torch.equal(parameter, initial[name]), f"{name} did not change"
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ["loss", "reward_mean", "reward_std", "accuracy", "kl", "entropy", "clip_frac_low", "clip_frac_high",
                "completion_length", "completion_length_incorrect", "zero_variance_groups", "time/generate", "time/score",
                "time/learn", "tokens_per_second", "grad_norm"]:
        assert key in rows[0], key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout is sampled by the reference itself
    assert rows[1]["kl"] > 0
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "samples.jsonl").exists()
    assert result.before is not None and "greedy_accuracy" in result.after


def test_the_final_model_loads_in_transformers_and_lora_trains_adapters_only(tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(_config(tmp_path, "grpo", "use_peft=true", "lora_r=4", "learning_rate=1e-2", "beta=0.04"))
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "final")
    assert "quantization_config" not in model.config.to_dict()
    initial = _initial_weights()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, initial[name])}
    assert changed and all("proj" in name for name in changed)  # merged adapters touch only linear layers
    assert not any("embed" in name or "norm" in name for name in changed)


def test_micro_batching_does_not_change_the_gradient(tmp_path):
    from incentivize.rewards import load_reward_function
    from incentivize.tasks import load_task
    from incentivize.trainers.policy import build_models
    from incentivize.trainers.rl import Learner, _collect
    from incentivize.trainers.sampler import PromptSampler
    from incentivize.rewards.scoring import Scorer

    config = _config(tmp_path, "grpo", "micro_batch_size=8", "beta=0.04")
    task = load_task("arithmetic")
    examples = task.examples("train", 20)
    scorer = Scorer(task, [load_reward_function(f"{tmp_path}/rewards.py:length")], [0.0, 1.0])
    models = build_models(config)
    data = _collect(config, models, task, examples, PromptSampler(len(examples), 0), scorer, {}, step=1)
    assert len(data.rollouts) == 8
    gradients = []
    for micro in (8, 3, 1):
        fresh = build_models(config.model_copy(update={"micro_batch_size": micro}))
        learner = Learner(config.model_copy(update={"micro_batch_size": micro}), fresh)
        seen: dict[str, torch.Tensor] = {}
        # the learner frees gradients after its update: read them just before it
        learner.optimizer.register_step_pre_hook(
            lambda *_: seen.update({n: p.grad.clone() for n, p in fresh.policy.named_parameters()}))
        learner.step(data)
        gradients.append(seen)
    for other in gradients[1:]:
        for name, grad in gradients[0].items():
            torch.testing.assert_close(other[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_ppo_warms_up_the_critic_with_the_actor_frozen(tmp_path):
    result = train(_config(tmp_path, "ppo", "critic_warmup_steps=1", "save_steps=1", "save_total_limit=3",
                           "generation_batch_size=4"))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "loss" not in rows[0] and "value_loss" in rows[0]
    assert "loss" in rows[1] and "value_loss" in rows[1]
    initial = _initial_weights()
    after_warmup, _ = load(result.run_dir / "checkpoints" / "step-000001")
    for name, parameter in after_warmup.named_parameters():
        assert torch.equal(parameter, initial[name]), f"{name} moved during critic warm-up"
    state = torch.load(result.run_dir / "checkpoints" / "step-000001" / "trainer_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "critic_optimizer", "rng"} <= set(state)


@pytest.mark.parametrize("algorithm", ["dr_grpo", "rloo", "reinforce_pp_baseline", "reinforce_pp"])
def test_other_estimators_run_a_step(tmp_path, algorithm):
    extra = ["generation_batch_size=4", "num_generations=1"] if algorithm == "reinforce_pp" else []
    result = train(_config(tmp_path, algorithm, "max_steps=1", "eval_before=false", *extra))
    row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and row["grad_norm"] > 0


def test_dynamic_sampling_gives_up_with_a_clear_error(tmp_path):
    config = _config(tmp_path, "dapo", f"rewards=[{tmp_path}/rewards.py:constant]", "max_resample_rounds=2",
                     "eval_before=false")
    with pytest.raises(IncentivizeError, match="dynamic sampling found only 0 of 2 groups"):
        train(config)


def test_an_existing_run_is_not_overwritten(tmp_path):
    config = _config(tmp_path, "grpo", "max_steps=1", "eval_before=false")
    train(config)
    with pytest.raises(IncentivizeError, match="already holds a run"):
        train(config)
