"""The pure math: hand-computed values, loop-versus-vectorised equivalence, gradient identities."""

import math

import pytest
import torch

from incentivize.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, compute_advantages
from incentivize.algorithms.aggregate import AGGREGATIONS, global_normalizer, loss_type_to_aggregation
from incentivize.algorithms.kl import KL_ESTIMATORS, k1, k2, k3
from incentivize.algorithms.logprobs import entropy_from_logits, selective_log_softmax
from incentivize.algorithms.policy_loss import ppo_clip_loss, value_loss
from incentivize.errors import IncentivizeError


def _inputs(scores, lengths, group, **extra):
    T = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    return AdvantageInputs(scores=torch.tensor(scores, dtype=torch.float32), mask=mask, group_size=group, **extra)


# --- KL ---------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(k1(logp, ref), torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(k2(logp, ref), torch.tensor([[0.125, 0.5]]))
    expected = torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]])
    torch.testing.assert_close(k3(logp, ref), expected)
    assert (k3(torch.randn(50, 7), torch.randn(50, 7)) >= 0).all()
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]


def test_k3_gradient_identity_and_first_order_agreement_with_k2():
    logp = torch.tensor([-0.3, -2.0, -0.01], requires_grad=True)
    ref = torch.tensor([-0.5, -1.0, -0.0100001])
    k3(logp, ref).sum().backward()
    torch.testing.assert_close(logp.grad, 1 - torch.exp(ref - logp.detach()))
    near = torch.tensor([-1.0], requires_grad=True)
    k3(near, torch.tensor([-1.001])).sum().backward()
    g3 = near.grad.clone()
    near.grad = None
    k2(near, torch.tensor([-1.001])).sum().backward()
    torch.testing.assert_close(g3, near.grad, atol=1e-6, rtol=1e-3)


def test_k3_expectation_is_the_exact_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum()
    expectation = (p * k3(p.log(), q.log())).sum()
    torch.testing.assert_close(expectation, exact)


# --- advantages -------------------------------------------------------------------------------


def test_grpo_by_hand_with_bessel_std():
    inputs = _inputs([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], [2, 3, 1, 2, 3, 3, 1, 2], group=4)
    out = compute_advantages("grpo", inputs).advantages
    # group 1 rewards 1,0,0,1: mean .5, Bessel std sqrt(1/3)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert out[0, 0].item() == pytest.approx(a) and out[1, 2].item() == pytest.approx(-a)
    assert out[0, 2].item() == 0.0  # padding
    # group 2 rewards 1,1,0,0 the same way
    assert out[4, 0].item() == pytest.approx(a) and out[7, 1].item() == pytest.approx(-a)


def test_grpo_scales_and_dr_grpo():
    inputs = _inputs([3.0, 1.0, 2.0, 2.0], [1, 1, 1, 1], group=2)
    none = compute_advantages("grpo", inputs, scale="none").advantages[:, 0]
    torch.testing.assert_close(none, torch.tensor([1.0, -1.0, 0.0, 0.0]))
    torch.testing.assert_close(compute_advantages("dr_grpo", inputs).advantages[:, 0], none)
    batch = compute_advantages("grpo", inputs, scale="batch", eps=0.0).advantages[:, 0]
    torch.testing.assert_close(batch, none / torch.tensor([3.0, 1.0, 2.0, 2.0]).std())
    assert (compute_advantages("grpo", inputs).advantages[2:] == 0).all()  # all-equal group
    with pytest.raises(ValueError, match="scale"):
        compute_advantages("grpo", inputs, scale="sometimes")


def test_nan_scores_are_left_out():
    inputs = _inputs([1.0, float("nan"), 0.0, 0.5], [1, 1, 1, 1], group=4)
    out = compute_advantages("grpo", inputs, scale="none").advantages[:, 0]
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, -0.5, 0.0]))
    loo = compute_advantages("rloo", inputs).advantages[:, 0]
    torch.testing.assert_close(loo, torch.tensor([0.75, 0.0, -0.75, 0.0]))


def test_rloo_matches_a_loop_and_sums_to_zero():
    torch.manual_seed(0)
    scores = torch.rand(12)
    inputs = AdvantageInputs(scores=scores, mask=torch.ones(12, 3), group_size=4)
    out = compute_advantages("rloo", inputs).advantages[:, 0]
    for g in range(3):
        group = scores[4 * g : 4 * g + 4].tolist()
        for i in range(4):
            others = [r for j, r in enumerate(group) if j != i]
            assert out[4 * g + i].item() == pytest.approx(group[i] - sum(others) / 3, abs=1e-6)
        assert out[4 * g : 4 * g + 4].sum().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        compute_advantages("rloo", AdvantageInputs(scores=scores, mask=torch.ones(12, 3), group_size=1))


def test_kl_in_the_reward_for_sequence_estimators():
    inputs = _inputs([1.0, 1.0], [2, 1], group=2, kl=torch.tensor([[0.5, 0.5], [0.2, 9.0]]), beta=0.1)
    out = compute_advantages("rloo", inputs).advantages[:, 0]
    # scores become 1 - 0.1*1.0 = 0.9 and 1 - 0.1*0.2 = 0.98 (the masked 9.0 does not count)
    torch.testing.assert_close(out, torch.tensor([0.9 - 0.98, 0.98 - 0.9]))


def _reinforce_loop(scores, lengths, kl, beta, gamma):
    returns = []
    for score, n, row in zip(scores, lengths, kl):
        rewards = [-beta * row[t] for t in range(n)]
        rewards[-1] += score
        running, out = 0.0, [0.0] * n
        for t in reversed(range(n)):
            running = rewards[t] + gamma * running
            out[t] = running
        returns.append(out)
    flat = [v for row in returns for v in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))
    return [[(v - mean) / (std + 1e-8) for v in row] for row in returns]


def test_reinforce_pp_matches_a_loop():
    torch.manual_seed(1)
    lengths, scores = [3, 1, 4, 2], [1.0, 0.0, 0.5, 1.0]
    kl = torch.rand(4, 4)
    inputs = _inputs(scores, lengths, group=2, kl=kl, beta=0.2)
    out = compute_advantages("reinforce_pp", inputs, gamma=0.9).advantages
    expected = _reinforce_loop(scores, lengths, kl.tolist(), 0.2, 0.9)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i, :n], torch.tensor(expected[i]), atol=1e-5, rtol=1e-5)
        assert (out[i, n:] == 0).all()


def test_reinforce_pp_baseline_is_reinforce_pp_on_centered_scores():
    inputs = _inputs([1.0, 0.0, 0.0, 0.0], [2, 3, 1, 2], group=2)
    centered = _inputs([0.5, -0.5, 0.0, 0.0], [2, 3, 1, 2], group=2)
    torch.testing.assert_close(
        compute_advantages("reinforce_pp_baseline", inputs).advantages,
        compute_advantages("reinforce_pp", centered).advantages,
    )


def test_gae_matches_a_loop_and_reduces_to_reward_to_go():
    torch.manual_seed(2)
    lengths, scores = [3, 2], [1.0, -1.0]
    values = torch.rand(2, 3)
    inputs = _inputs(scores, lengths, group=1, values=values)
    out = compute_advantages("gae", inputs, gamma=0.9, lam=0.8, whiten=False)
    for i, n in enumerate(lengths):
        v = values[i, :n].tolist() + [0.0]
        r = [0.0] * n
        r[-1] = scores[i]
        adv, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            running = r[t] + 0.9 * v[t + 1] - v[t] + 0.9 * 0.8 * running
            adv[t] = running
        torch.testing.assert_close(out.advantages[i, :n], torch.tensor(adv))
        torch.testing.assert_close(out.returns[i, :n], torch.tensor(adv) + values[i, :n])
    plain = compute_advantages("gae", inputs, gamma=1.0, lam=1.0, whiten=False)
    # lambda = gamma = 1: the advantage is the reward-to-go minus the value
    torch.testing.assert_close(plain.advantages[0], torch.tensor([1.0, 1.0, 1.0]) - values[0])
    whitened = compute_advantages("gae", inputs).advantages
    valid = inputs.mask.bool()
    assert whitened[valid].mean().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", _inputs(scores, lengths, group=1))


def test_grpo_process_by_hand():
    # one group of two samples; sample 0 has steps ending at tokens 1 and 3, sample 1 one step at 2
    inputs = _inputs(
        [0.0, 0.0], [4, 3], group=2,
        step_scores=torch.tensor([[1.0, 0.0], [0.0, float("nan")]]), step_ends=torch.tensor([[1, 3], [2, 0]]),
    )
    out = compute_advantages("grpo_process", inputs, eps=0.0).advantages
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    hi, lo = (1 - mean) / std, (0 - mean) / std
    torch.testing.assert_close(out[0], torch.tensor([hi + lo, hi + lo, lo, lo]))
    torch.testing.assert_close(out[1], torch.tensor([lo, lo, lo, 0.0]))


def test_registry_lists_choices():
    assert set(ADVANTAGE_ESTIMATORS.names()) == {
        "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae", "grpo_process"}
    with pytest.raises(IncentivizeError, match="unknown advantage estimator 'grop'.*did you mean 'grpo'"):
        compute_advantages("grop", _inputs([1.0], [1], group=1))


# --- policy and value losses -------------------------------------------------------------------


def test_ppo_clip_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.1, 0.5, 0.9]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = ppo_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # ratio 1.5 A>0: clipped at 1.28; 1.1 inside; 0.5 A<0: clipped at 0.8 -> -min(-0.5,-0.8)=0.8; 0.9 inside
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -1.1, 0.8, 0.9]]))
    assert stats.clip_frac_high.item() == pytest.approx(0.25) and stats.clip_frac_low.item() == pytest.approx(0.25)
    far = torch.log(torch.tensor([[5.0]]))
    capped, _ = ppo_clip_loss(far, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1), dual_clip=3.0)
    torch.testing.assert_close(capped, torch.tensor([[3.0]]))  # without dual clip it would be 5


def test_sequence_level_ratio():
    logp = torch.tensor([[0.1, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_clip_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), mask, eps_high=10.0, ratio_level="sequence")
    expected = -math.exp(0.3)
    torch.testing.assert_close(loss[0, :2], torch.tensor([expected, expected]))
    assert stats.ratio_mean.item() == pytest.approx(math.exp(0.3))


def test_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: V clipped to 0.7: max((1-2)^2, (0.7-2)^2)/2 = 0.845; token 1: 0.5*0.25 = 0.125
    torch.testing.assert_close(loss, torch.tensor([[0.845, 0.125]]))
    assert stats.clip_frac.item() == pytest.approx(0.5)


# --- aggregation ------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_one_batch_equals_its_micro_batches(aggregation):
    torch.manual_seed(3)
    lengths = [5, 1, 3, 4, 2, 5, 0, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    logp = torch.randn(8, 5, requires_grad=True)
    adv = torch.randn(8, 5)
    normalizer = global_normalizer(aggregation, mask, max_completion_length=5)
    reduce = AGGREGATIONS.get(aggregation)
    full = reduce(ppo_clip_loss(logp, logp.detach(), adv, mask)[0], mask, normalizer)
    (full_grad,) = torch.autograd.grad(full, logp)
    total = 0.0
    for i in range(8):
        part = reduce(ppo_clip_loss(logp[i : i + 1], logp[i : i + 1].detach(), adv[i : i + 1], mask[i : i + 1])[0],
                      mask[i : i + 1], normalizer)
        total = total + part
    (micro_grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(micro_grad, full_grad)


def test_normalizers_and_loss_types():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert global_normalizer("token_mean", mask, 3).item() == 3
    assert global_normalizer("seq_mean_token_mean", mask, 3).item() == 3  # every row counts, as in TRL
    assert global_normalizer("seq_mean_token_sum_norm", mask, 64).item() == 192  # Dr. GRPO: sequences x L_max
    per_token = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0], [7.0, 7.0, 7.0]])
    assert AGGREGATIONS.get("seq_mean_token_mean")(per_token, mask, 2.0).item() == pytest.approx((2.0 + 5.0) / 2)
    assert AGGREGATIONS.get("token_mean")(per_token, mask, 3.0).item() == pytest.approx(3.0)
    assert loss_type_to_aggregation("dapo") == "token_mean" and loss_type_to_aggregation("grpo") == "seq_mean_token_mean"
    with pytest.raises(IncentivizeError, match="unknown loss_type 'dpo'"):
        loss_type_to_aggregation("dpo")


# --- log-probabilities ------------------------------------------------------------------------


def test_selective_log_softmax_and_entropy_match_the_naive_versions():
    torch.manual_seed(4)
    logits = torch.randn(5, 3, 11, requires_grad=True)
    index = torch.randint(0, 11, (5, 3))
    naive = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    chunked = selective_log_softmax(logits, index, chunk_size=2)
    torch.testing.assert_close(chunked, naive)
    (g_naive,) = torch.autograd.grad(naive.sum(), logits)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    torch.testing.assert_close(g_chunked, g_naive)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=3), -(p * p.log()).sum(-1))
    half = selective_log_softmax(logits.detach().bfloat16(), index)
    assert half.dtype == torch.float32
