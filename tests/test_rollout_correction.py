"""Sampling in another precision: the importance weights (ALGORITHMS.md section 14), the bfloat16 rollout copy,
the learner's own pi_old, the mismatch alarm, and the refusals."""

import json
import math

import pytest
import torch

from incentivize.algorithms.rollout_correction import MODES, check_mode, rollout_weights
from incentivize.errors import IncentivizeError
from incentivize.models import load, precision

LOG_RHO = torch.tensor([[0.9, -0.2, 0.1]])  # rho = 2.459603, 0.818731, 1.105171
ONES = torch.ones(1, 3)


@pytest.mark.parametrize(("mode", "cap", "cap_low", "expected"), [
    ("token_truncate", 2.0, None, [2.0, 0.818731, 1.105171]),
    ("token_mask", 2.0, 0.5, [0.0, 0.818731, 1.105171]),
    ("sequence_truncate", 2.0, None, [2.0, 2.0, 2.0]),  # rho_seq = e^0.8 = 2.225541
    ("sequence_mask", 2.0, None, [0.0, 0.0, 0.0]),  # above C = 2: the sequence is dropped
    ("sequence_mask", 3.0, None, [2.225541] * 3),  # TRL's default C = 3 keeps it
])
def test_the_section_14_example_in_every_mode(mode, cap, cap_low, expected):
    weights, _ = rollout_weights(LOG_RHO, torch.zeros(1, 3), ONES, mode, cap=cap, cap_low=cap_low)
    torch.testing.assert_close(weights, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_weights_loop_against_vectorised_with_masked_tokens_and_stats_by_hand():
    generator = torch.Generator().manual_seed(0)
    train = -torch.rand(4, 6, generator=generator, dtype=torch.float64) * 3
    rollout = train + 0.6 * torch.randn(4, 6, generator=generator, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=generator) > 0.25).double()
    cap, low = 1.5, 0.6
    for mode in MODES:
        weights, stats = rollout_weights(train, rollout, mask, mode, cap=cap, cap_low=low)
        corrected, tokens = 0, 0
        for i in range(4):
            valid = [t for t in range(6) if mask[i, t]]
            sequence = math.exp(sum(float(train[i, t] - rollout[i, t]) for t in valid))
            for t in range(6):
                rho = sequence if mode.startswith("sequence") else math.exp(float(train[i, t] - rollout[i, t]))
                if mode.endswith("truncate"):
                    expected, out = min(max(rho, low), cap), not low <= rho <= cap
                else:
                    out = not low <= rho <= cap
                    expected = 0.0 if out else rho
                if not mask[i, t]:
                    expected = 0.0
                else:
                    corrected, tokens = corrected + out, tokens + 1
                assert float(weights[i, t]) == pytest.approx(expected, rel=1e-5), (mode, i, t)
        assert float(stats.corrected_share) == pytest.approx(corrected / tokens)
    log_rho = (train - rollout) * mask
    assert float(stats.mean_abs_log_ratio) == pytest.approx(float(log_rho.abs().sum() / mask.sum()), rel=1e-5)
    k3 = (torch.exp(log_rho) - 1 - log_rho) * mask
    assert float(stats.kl) == pytest.approx(float(k3.sum() / mask.sum()), rel=1e-5)
    assert not weights.requires_grad


def test_the_mismatch_kl_is_the_kl_of_the_two_distributions():
    # tokens drawn from pi_rollout over a small vocabulary: mean k3 of pi_old / pi_rollout -> KL(pi_rollout || pi_old)
    rollout_probs, old_probs = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.45, 0.35, 0.2])
    draws = torch.multinomial(rollout_probs, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    _, stats = rollout_weights(old_probs.log()[draws][None], rollout_probs.log()[draws][None], torch.ones(1, len(draws)),
                               cap=10.0)
    exact = float((rollout_probs * (rollout_probs / old_probs).log()).sum())
    assert float(stats.kl) == pytest.approx(exact, rel=0.05)


def test_bad_modes_and_caps_are_refused_with_the_fix():
    with pytest.raises(IncentivizeError, match="unknown rollout_correction 'token'"):
        check_mode("token", 2.0)
    with pytest.raises(IncentivizeError, match="must be at least 1"):
        check_mode("token_truncate", 0.5)


# --- precision ---------------------------------------------------------------------------------------


def test_rollout_copy_is_bfloat16_and_follows_the_trained_weights():
    model, _ = load("tiny-random")
    copy = precision.RolloutCopy(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    copy.sync()
    for (name, mine), theirs in zip(copy.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(mine, theirs.to(torch.bfloat16), msg=name)


def test_check_precision_refuses_what_cannot_run_or_should_not(monkeypatch):
    model, _ = load("tiny-random")
    model.config.torch_dtype = torch.bfloat16
    monkeypatch.setattr(precision, "device_runs", lambda dtype, device: True)
    with pytest.raises(IncentivizeError, match="trained in bfloat16.*allow_fp16=true"):
        precision.check_precision(model, "rollout_dtype", "float16")
    precision.check_precision(model, "rollout_dtype", "float16", allow_fp16=True)  # forced: no error
    monkeypatch.setattr(precision, "device_runs", lambda dtype, device: dtype == torch.float32)
    with pytest.raises(IncentivizeError, match="no native bfloat16 arithmetic.*set rollout_dtype=float32"):
        precision.check_precision(model, "rollout_dtype", "bfloat16")


def test_config_refusals_name_the_fix():
    from incentivize.config import load_config

    with pytest.raises(IncentivizeError, match="policy_loss gspo.*set loss_type=grpo"):
        load_config("gspo", None, ["loss_type=dapo"])
    with pytest.raises(IncentivizeError, match="unbiased_kl.*beta > 0"):
        load_config("grpo", None, ["unbiased_kl=true", "beta=0"])


# --- the learner ---------------------------------------------------------------------------------------


def _config(tmp_path, algorithm="grpo", *extra):
    from incentivize.config import load_config

    tmp_path.mkdir(parents=True, exist_ok=True)  # a reward that varies within a group on the random model
    (tmp_path / "rewards.py").write_text("def length(prompts, completions, **columns):\n"
                                         "    return [len(c) / 40.0 for c in completions]\n")
    return load_config(algorithm, None, [
        f"rewards=[{tmp_path}/rewards.py:length]", "reward_weights=[0.0, 1.0]", "model=tiny-random", "max_steps=2", "num_generations=4", "generation_batch_size=8", "max_completion_length=8",
        "eval_limit=4", "learning_rate=1e-3", "micro_batch_size=4", "eval_before=false", f"output_dir={tmp_path}/run",
        *extra,
    ])


def _step_data(config):
    from incentivize.tasks import load_task
    from incentivize.trainers.collect import build_scorer
    from incentivize.trainers.policy import build_models
    from incentivize.trainers.rl import _collect
    from incentivize.trainers.sampler import PromptSampler

    task = load_task("arithmetic")
    examples = task.examples("train", 20)
    models = build_models(config)
    if models.rollout is not None:
        models.rollout.sync()
    data = _collect(config, models, task, examples, PromptSampler(len(examples), 0), build_scorer(config, task), {},
                    step=1)
    return models, data


def test_bfloat16_rollouts_are_sampled_by_the_copy_and_corrected(tmp_path):
    from incentivize.trainers.policy import Batch, token_logprobs
    from incentivize.trainers.rl import Learner

    config = _config(tmp_path, "grpo", "rollout_dtype=bfloat16", "num_iterations=2")
    assert config.correction_mode == "token_truncate"
    models, data = _step_data(config)
    assert models.sampler is models.rollout.model and next(models.sampler.parameters()).dtype == torch.bfloat16
    # pi_old in training precision differs from the engine's bfloat16 log-probs
    train_logp, _ = token_logprobs(models.policy, Batch.from_rollouts(data.rollouts), config.temperature, grad=False)
    mask = data.rollouts.completion_mask.float()
    gap = float(((train_logp - data.rollouts.logprobs).abs() * mask).sum() / mask.sum())
    assert gap > 0
    stats = Learner(config, models).step(data)
    assert stats["mismatch/mean_abs_log_ratio"] == pytest.approx(gap, rel=1e-3)
    assert 0 <= stats["mismatch/corrected_share"] <= 1 and stats["mismatch/kl"] >= 0
    # the first update is on-policy for the trained weights: the ratio is 1 exactly, nothing is clipped
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["clip_frac_high"] == 0


def test_the_correction_in_float32_weighs_every_token_one(tmp_path):
    from incentivize.trainers.rl import Learner

    config = _config(tmp_path, "grpo", "rollout_correction=token_mask")
    models, data = _step_data(config)
    stats = Learner(config, models).step(data)
    # the engine samples with the trained weights in float32: pi_old = pi_rollout up to batching's rounding
    assert stats["mismatch/mean_abs_log_ratio"] < 1e-4
    assert stats["mismatch/corrected_share"] == 0 and stats["mismatch/weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_a_training_run_in_bfloat16_logs_the_mismatch_and_stops_when_it_explodes(tmp_path):
    from incentivize.trainers.rl import train

    result = train(_config(tmp_path / "a", "grpo", "rollout_dtype=bfloat16", "learner_dtype=bfloat16"))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("mismatch/kl" in r and "time/weight_sync" in r for r in rows)
    with pytest.raises(IncentivizeError, match="sampler's log-probs differ.*for 2 steps.*rollout_dtype=float32"):
        train(_config(tmp_path / "b", "grpo", "rollout_dtype=bfloat16", "max_rollout_mismatch=1e-9",
                      "mismatch_patience=2", "max_steps=3"))


@pytest.mark.parametrize("algorithm", ["gspo", "cispo"])
def test_gspo_and_cispo_presets_train(tmp_path, algorithm):
    from incentivize.trainers.rl import train

    result = train(_config(tmp_path, algorithm, "max_steps=1"))
    row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["grad_norm"] > 0 and row["ratio_mean"] > 0


def test_entropy_bonus_and_unbiased_kl_in_a_run(tmp_path):
    from incentivize.trainers.rl import train

    result = train(_config(tmp_path, "grpo", "entropy_coef=0.01", "entropy_target=100", "beta=0.04",
                           "unbiased_kl=true", "save_steps=1"))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # below the (unreachable) target the coefficient rises by delta each step
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.01, 0.015])
    state = torch.load(result.run_dir / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert state["entropy"]["coefficient"] == pytest.approx(0.02)
