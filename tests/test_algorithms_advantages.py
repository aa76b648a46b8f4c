"""Advantage estimators: hand-computed values, loop-versus-vectorised equivalence, NaN and edge cases."""

import math

import pytest
import torch

from incentivize.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    compute_advantages,
)
from incentivize.errors import IncentivizeError

NAN = float("nan")


def _mask(lengths, width=None):
    width = max(lengths) if width is None else width
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])


def _inputs(scores, lengths, group, **extra):
    return AdvantageInputs(scores=torch.tensor(scores, dtype=torch.float32), mask=_mask(lengths),
                           group_size=group, **extra)


# --- GRPO -------------------------------------------------------------------------------------


def test_grpo_two_groups_by_hand_with_bessel_std():
    # group 1 rewards 1, 0, 0: mean 1/3, Bessel std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    # group 2 rewards 2, 4, 9: mean 5, Bessel std sqrt((9 + 1 + 16) / 2) = sqrt(13)
    inputs = _inputs([1.0, 0.0, 0.0, 2.0, 4.0, 9.0], [2, 3, 1, 3, 2, 1], group=3)
    out = compute_advantages("grpo", inputs)
    assert isinstance(out, AdvantageOutput) and out.returns is None
    per_row = torch.tensor([1.1545005730, -0.5772502865, -0.5772502865, -0.8320272181, -0.2773424060, 1.1093696241])
    torch.testing.assert_close(out.advantages, per_row[:, None] * inputs.mask, rtol=1e-6, atol=1e-6)
    assert out.advantages[2, 1:].eq(0).all() and out.advantages[5, 1:].eq(0).all()  # padding stays 0
    # with the population std (N, not N - 1) group 1's first advantage would be 1.414; Bessel gives 1.1545
    assert out.advantages[0, 0].item() == pytest.approx(1.1545006, abs=1e-5)


def test_grpo_batch_and_none_scales():
    inputs = _inputs([1.0, 0.0, 0.0, 2.0, 4.0, 9.0], [1] * 6, group=3)
    centered = torch.tensor([2 / 3, -1 / 3, -1 / 3, -3.0, -1.0, 4.0])
    none = compute_advantages("grpo", inputs, scale="none").advantages[:, 0]
    torch.testing.assert_close(none, centered)
    # batch std of all six rewards (Bessel): 3.4448028
    batch = compute_advantages("grpo", inputs, scale="batch").advantages[:, 0]
    torch.testing.assert_close(batch, centered / (3.4448028487 + 1e-4))
    with pytest.raises(ValueError, match="scale"):
        compute_advantages("grpo", inputs, scale="sometimes")


def test_dr_grpo_is_grpo_without_scaling():
    torch.manual_seed(0)
    inputs = AdvantageInputs(scores=torch.randn(12), mask=_mask([3, 1, 4, 2] * 3), group_size=4)
    torch.testing.assert_close(compute_advantages("dr_grpo", inputs).advantages,
                               compute_advantages("grpo", inputs, scale="none").advantages, rtol=0, atol=0)


def test_all_equal_group_gets_zero_and_one_scored_member_gets_zero():
    inputs = _inputs([0.7, 0.7, 0.7, 1.0, NAN, NAN], [2, 2, 2, 2, 2, 2], group=3)
    for name in ("grpo", "dr_grpo", "rloo"):
        out = compute_advantages(name, inputs).advantages
        assert out.eq(0).all(), name
    # in float32, 7 * 0.7 / 7 != 0.7: a plain mean would leave 6e-8, which the group std guard (eps 1e-4)
    # would blow up to a 6e-4 advantage. Equal scores must give exactly 0.
    seven = _inputs([0.7] * 7 + [1 / 3] * 7, [1] * 14, group=7)
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        assert compute_advantages(name, seven).advantages.eq(0).all(), name
    # the same for the whitening of REINFORCE++ and GAE (every return 0.7) and a group's PRM step scores
    sevens = _inputs([0.7] * 7, [1] * 7, group=7, values=torch.zeros(7, 1), step_scores=torch.full((7, 2), 0.7),
                     step_ends=torch.zeros(7, 2, dtype=torch.long))
    for name in ("reinforce_pp", "gae", "grpo_process"):
        assert compute_advantages(name, sevens).advantages.eq(0).all(), name


def test_eps_zero_gives_zero_not_nan_for_a_group_of_equal_scores():
    # group 1 rewards 1, 1: std 0, advantages 0 (0 / 0 would be NaN). Group 2 rewards 0, 1: mean 0.5,
    # Bessel std sqrt((0.25 + 0.25) / 1) = sqrt(0.5): advantages -0.5 / sqrt(0.5) = -0.7071068 and +0.7071068
    inputs = _inputs([1.0, 1.0, 0.0, 1.0], [2, 1, 2, 2], group=2)
    out = compute_advantages("grpo", inputs, eps=0.0).advantages
    a = 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.0, 0.0], [-a, -a], [a, a]]))
    # the same with the default eps, 1e-4: -0.5 / (0.7071068 + 1e-4)
    default = compute_advantages("grpo", inputs).advantages
    torch.testing.assert_close(default[2:, 0], torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-4))
    assert default[:2].eq(0).all()
    # every score equal: the batch std, the REINFORCE++ / GAE whitening std and a group's step std are 0 too
    # (one token per completion, so that every return and every GAE advantage is 1 as well)
    equal = _inputs([1.0] * 4, [1] * 4, group=2, values=torch.zeros(4, 1), step_scores=torch.ones(4, 1),
                    step_ends=torch.zeros(4, 1, dtype=torch.long))
    for name, params in [("grpo", {"scale": "batch"}), ("reinforce_pp", {}), ("reinforce_pp_baseline", {}),
                         ("gae", {}), ("grpo_process", {})]:
        assert compute_advantages(name, equal, eps=0.0, **params).advantages.eq(0).all(), name


def test_nan_scores_are_excluded_and_get_exactly_zero():
    inputs = _inputs([1.0, NAN, 0.0, 0.5], [2, 2, 2, 2], group=4)
    # valid rewards 1, 0, 0.5: mean 0.5, Bessel std 0.5
    grpo = compute_advantages("grpo", inputs, eps=0.0).advantages[:, 0]
    torch.testing.assert_close(grpo, torch.tensor([1.0, 0.0, -1.0, 0.0]))
    # leave-one-out over the remaining valid members: 1 - (0 + .5)/2, 0 - (1 + .5)/2, .5 - (1 + 0)/2
    loo = compute_advantages("rloo", inputs).advantages[:, 0]
    torch.testing.assert_close(loo, torch.tensor([0.75, 0.0, -0.75, 0.0]))
    # every estimator: the NaN row is exactly 0 and nothing is NaN
    extra = dict(values=torch.rand(4, 2), step_scores=torch.tensor([[1.0], [0.0], [0.5], [0.2]]),
                 step_ends=torch.ones(4, 1, dtype=torch.long))
    full = _inputs([1.0, NAN, 0.0, 0.5], [2, 2, 2, 2], group=2, **extra)
    for name in ADVANTAGE_ESTIMATORS.names():
        out = compute_advantages(name, full)
        assert not out.advantages.isnan().any(), name
        assert out.advantages[1].eq(0).all(), name


def test_kl_in_the_reward_is_sequence_level_for_outcome_estimators():
    kl = torch.tensor([[0.5, 0.5, 7.0], [0.2, 9.0, 9.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    inputs = _inputs([1.0, 1.0, 0.0, 0.0], [2, 1, 3, 3], group=2, kl=kl, beta=0.1)
    # masked KL does not count: scores become 1 - 0.1*1.0 = 0.9, 1 - 0.1*0.2 = 0.98, 0 - 0.3, 0
    loo = compute_advantages("rloo", inputs).advantages[:, 0]
    torch.testing.assert_close(loo, torch.tensor([0.9 - 0.98, 0.98 - 0.9, -0.3, 0.3]))
    none = compute_advantages("grpo", inputs, scale="none").advantages[:, 0]
    torch.testing.assert_close(none, torch.tensor([-0.04, 0.04, -0.15, 0.15]))


# --- RLOO -------------------------------------------------------------------------------------


def test_rloo_matches_a_loop_and_sums_to_zero_per_group():
    torch.manual_seed(1)
    scores = torch.rand(12)
    inputs = AdvantageInputs(scores=scores, mask=_mask([3, 2, 1, 3] * 3), group_size=4)
    out = compute_advantages("rloo", inputs).advantages
    for g in range(3):
        group = scores[4 * g : 4 * g + 4].tolist()
        for i in range(4):
            others = [r for j, r in enumerate(group) if j != i]
            assert out[4 * g + i, 0].item() == pytest.approx(group[i] - sum(others) / 3, abs=1e-6)
        assert out[4 * g : 4 * g + 4, 0].sum().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        compute_advantages("rloo", AdvantageInputs(scores=scores, mask=torch.ones(12, 3), group_size=1))


def test_batch_must_be_whole_groups():
    with pytest.raises(ValueError, match="whole number of groups"):
        compute_advantages("grpo", _inputs([1.0, 0.0, 1.0], [1, 1, 1], group=2))


# --- REINFORCE++ ------------------------------------------------------------------------------


def test_reinforce_pp_by_hand():
    # returns (gamma 1, no KL): row 0 -> [1, 1], row 1 -> [0]; tokens 1, 1, 0: mean 2/3, Bessel std sqrt(1/3)
    out = compute_advantages("reinforce_pp", _inputs([1.0, 0.0], [2, 1], group=2)).advantages
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(out, torch.tensor([[(1 / 3) / s, (1 / 3) / s], [-(2 / 3) / s, 0.0]]))


def _reinforce_loop(scores, mask, kl, beta, gamma, eps=1e-8):
    """Per sequence over its trained token positions only; then normalise over all trained tokens."""
    returns = [[0.0] * len(row) for row in mask]
    for i, (score, row) in enumerate(zip(scores, mask)):
        positions = [t for t, m in enumerate(row) if m > 0]
        if not positions or math.isnan(score):
            continue
        rewards = {t: -beta * kl[i][t] for t in positions}
        rewards[positions[-1]] += score
        running = 0.0
        for t in reversed(positions):
            running = rewards[t] + gamma * running
            returns[i][t] = running
    flat = [returns[i][t] for i, row in enumerate(mask) for t, m in enumerate(row)
            if m > 0 and not math.isnan(scores[i])]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))
    return [[(v - mean) / (std + eps) if m > 0 and not math.isnan(scores[i]) else 0.0 for v, m in zip(row, mask[i])]
            for i, row in enumerate(returns)]


def test_reinforce_pp_with_kl_matches_a_loop():
    torch.manual_seed(2)
    scores = [1.0, 0.0, 0.5, NAN, -1.0, 1.0]
    mask = _mask([3, 1, 5, 2, 4, 5])
    mask[2, 1] = 0.0  # a tool-output token inside row 2: skipped, the return passes through it
    kl = torch.rand(6, 5)
    inputs = AdvantageInputs(scores=torch.tensor(scores), mask=mask, group_size=2, kl=kl, beta=0.2)
    out = compute_advantages("reinforce_pp", inputs, gamma=0.9).advantages
    expected = torch.tensor(_reinforce_loop(scores, mask.tolist(), kl.tolist(), 0.2, 0.9))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out[mask.bool() & ~torch.isnan(torch.tensor(scores))[:, None]].std().item() == pytest.approx(1.0, abs=1e-5)


def test_reinforce_pp_baseline_is_reinforce_pp_on_group_centered_scores():
    torch.manual_seed(3)
    kl = torch.rand(4, 3)
    inputs = _inputs([1.0, 0.0, 3.0, NAN], [2, 3, 1, 2], group=2, kl=kl, beta=0.1)
    centered = _inputs([0.5, -0.5, 0.0, NAN], [2, 3, 1, 2], group=2, kl=kl, beta=0.1)
    for gamma in (1.0, 0.7):
        torch.testing.assert_close(
            compute_advantages("reinforce_pp_baseline", inputs, gamma=gamma).advantages,
            compute_advantages("reinforce_pp", centered, gamma=gamma).advantages,
        )
    # and it is not reinforce_pp on the raw scores
    assert not torch.allclose(compute_advantages("reinforce_pp_baseline", inputs).advantages,
                              compute_advantages("reinforce_pp", inputs).advantages, atol=1e-3)


# --- GAE --------------------------------------------------------------------------------------


def _gae_loop(scores, mask, values, kl, beta, gamma, lam):
    advantages = [[0.0] * len(row) for row in mask]
    for i, row in enumerate(mask):
        positions = [t for t, m in enumerate(row) if m > 0]
        if not positions:
            continue
        rewards = {t: -beta * kl[i][t] for t in positions}
        rewards[positions[-1]] += scores[i]
        running, next_value = 0.0, 0.0
        for t in reversed(positions):
            delta = rewards[t] + gamma * next_value - values[i][t]
            running = delta + gamma * lam * running
            advantages[i][t] = running
            next_value = values[i][t]
    return advantages


def test_gae_matches_a_loop_and_returns_are_advantages_plus_values():
    torch.manual_seed(4)
    scores = [1.0, -1.0, 0.5]
    mask = _mask([4, 2, 3])
    mask[0, 1] = 0.0  # a hole: skipped like verl does
    values, kl = torch.rand(3, 4), torch.rand(3, 4)
    inputs = AdvantageInputs(scores=torch.tensor(scores), mask=mask, group_size=1, values=values, kl=kl, beta=0.05)
    out = compute_advantages("gae", inputs, gamma=0.9, lam=0.8, whiten=False)
    expected = torch.tensor(_gae_loop(scores, mask.tolist(), values.tolist(), kl.tolist(), 0.05, 0.9, 0.8))
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, (expected + values) * mask)
    # whitened: same returns, advantages with masked mean 0 and Bessel std 1
    whitened = compute_advantages("gae", inputs, gamma=0.9, lam=0.8)
    torch.testing.assert_close(whitened.returns, out.returns)
    valid = whitened.advantages[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-5)
    assert whitened.advantages[~mask.bool()].eq(0).all()


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    inputs = _inputs([1.0, 2.0], [3, 2], group=1, values=values)
    out = compute_advantages("gae", inputs, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.9, 0.8, 0.7], [1.6, 1.5, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", _inputs([1.0], [1], group=1))


# --- process supervision ----------------------------------------------------------------------


def test_grpo_process_by_hand():
    # one group of two samples. Sample 0: steps ending at tokens 1 and 3 scored 1 and 0; sample 1: one
    # step ending at token 2 scored 0. Steps 1, 0, 0: mean 1/3, Bessel std sqrt(1/3);
    # normalised hi = (2/3)/sqrt(1/3) = 1.1547, lo = -(1/3)/sqrt(1/3) = -0.57735.
    inputs = _inputs([0.0, 0.0], [4, 3], group=2, step_scores=torch.tensor([[1.0, 0.0], [0.0, NAN]]),
                     step_ends=torch.tensor([[1, 3], [2, 0]]))
    out = compute_advantages("grpo_process", inputs, eps=0.0).advantages
    hi, lo = 1.1547005384, -0.5773502692
    torch.testing.assert_close(out, torch.tensor([[hi + lo, hi + lo, lo, lo], [lo, lo, lo, 0.0]]))
    with pytest.raises(ValueError, match="step_scores"):
        compute_advantages("grpo_process", _inputs([0.0, 0.0], [1, 1], group=2))


def test_grpo_process_normalises_per_group():
    # two groups with one step per sample: each group is normalised on its own
    inputs = _inputs([0.0] * 4, [2] * 4, group=2, step_scores=torch.tensor([[1.0], [0.0], [10.0], [30.0]]),
                     step_ends=torch.tensor([[1], [1], [1], [1]]))
    out = compute_advantages("grpo_process", inputs, eps=0.0).advantages
    a = 0.5 / math.sqrt(0.5)  # deviation 0.5 (or 10) over Bessel std sqrt(0.5) (or 10 sqrt 2)
    torch.testing.assert_close(out[:, 0], torch.tensor([a, -a, -a, a]))


# --- registry ---------------------------------------------------------------------------------


def test_registry_contents_and_unknown_name():
    assert ADVANTAGE_ESTIMATORS.names() == sorted(
        ["dr_grpo", "gae", "grpo", "grpo_process", "reinforce_pp", "reinforce_pp_baseline", "rloo"])
    with pytest.raises(IncentivizeError, match=r"unknown advantage estimator 'grop' \(choices: dr_grpo, gae, grpo.*"
                                               r"did you mean 'grpo'"):
        compute_advantages("grop", _inputs([1.0], [1], group=1))
