"""Policy and value losses, loss aggregation (micro-batch invariance), chunked log-probs and entropy."""

import math

import pytest
import torch

from incentivize.algorithms.aggregate import (
    AGGREGATIONS,
    LOSS_TYPES,
    global_normalizer,
    loss_type_to_aggregation,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)
from incentivize.algorithms.kl import k3
from incentivize.algorithms.logprobs import entropy_from_logits, selective_log_softmax
from incentivize.algorithms.entropy import EntropyCoefficient
from incentivize.algorithms.policy_loss import (
    POLICY_LOSSES,
    PolicyLossStats,
    ValueLossStats,
    cispo_loss,
    gspo_loss,
    ppo_clip_loss,
    value_loss,
)
from incentivize.errors import IncentivizeError

AGGREGATION_NAMES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]

# --- PPO clip ---------------------------------------------------------------------------------

# ratios and advantages on both sides of the clip, eps_low 0.2, eps_high 0.28; the last token is masked
RATIOS = [1.5, 1.1, 0.5, 0.9, 1.3, 0.7, 3.0]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, -2.0, 2.0, 1.0]
MASK = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_ppo_clip_by_hand_on_both_sides_of_the_clip():
    logp = torch.log(torch.tensor([RATIOS], dtype=torch.float64)).requires_grad_()
    old, adv, mask = torch.zeros(1, 7, dtype=torch.float64), torch.tensor([ADVANTAGES]), torch.tensor([MASK])
    loss, stats = ppo_clip_loss(logp, old, adv.double(), mask.double(), eps_low=0.2, eps_high=0.28)
    # 1.5, A=+1: clipped at 1 + 0.28 (not 1.2) -> -1.28     1.1, A=+1: inside -> -1.1
    # 0.5, A=-1: -min(-0.5, -0.8) = 0.8 (clipped)         0.9, A=-1: inside -> 0.9
    # 1.3, A=-2: -min(-2.6, -2.56) = 2.6 (unclipped: the pessimistic side)
    # 0.7, A=+2: -min(1.4, 1.6) = -1.4 (unclipped)          masked -> 0
    expected = torch.tensor([[-1.28, -1.1, 0.8, 0.9, 2.6, -1.4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    # gradient: 0 where the clip binds, else d(-rho A)/d logp = -rho A
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.1, 0.0, 0.9, 2.6, -1.4, 0.0]], dtype=torch.float64))
    assert isinstance(stats, PolicyLossStats)
    assert stats.clip_frac_high.item() == pytest.approx(1 / 6)  # the masked ratio 3.0 does not count
    assert stats.clip_frac_low.item() == pytest.approx(1 / 6)
    assert stats.ratio_mean.item() == pytest.approx(1.0)  # (1.5 + 1.1 + 0.5 + 0.9 + 1.3 + 0.7) / 6
    assert stats.approx_kl.item() == pytest.approx(0.0653405146, rel=1e-6)  # mean of rho - 1 - log rho
    assert all(not s.requires_grad for s in stats)


def test_symmetric_clip_differs_from_clip_higher():
    logp = torch.log(torch.tensor([[1.5]]))
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    torch.testing.assert_close(loss, torch.tensor([[-1.2]]))
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), eps_low=0.5)
    torch.testing.assert_close(loss, torch.tensor([[1.5]]))  # A < 0 above 1 + eps_high: never clipped


def test_dual_clip_caps_negative_advantages_only():
    logp = torch.log(torch.tensor([[5.0, 2.0, 5.0]]))
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    plain, _ = ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3))
    torch.testing.assert_close(plain, torch.tensor([[5.0, 2.0, -1.2]]))
    capped, _ = ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), dual_clip=3.0)
    torch.testing.assert_close(capped, torch.tensor([[3.0, 2.0, -1.2]]))  # min(5, 3 * 1); 2 < 3 untouched
    with pytest.raises(ValueError, match="greater than 1"):
        ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), dual_clip=1.0)
    with pytest.raises(ValueError, match="ratio_level"):
        ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), ratio_level="tokens")


def test_sequence_level_ratio():
    logp = torch.tensor([[0.1, 0.2, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rho = math.exp(0.3)  # exp of the masked sum 0.1 + 0.2; the 9.0 on padding does not count
    loss, stats = ppo_clip_loss(logp, torch.zeros(1, 3), -torch.ones(1, 3), mask, ratio_level="sequence")
    torch.testing.assert_close(loss, torch.tensor([[rho, rho, 0.0]]))
    assert stats.ratio_mean.item() == pytest.approx(rho)
    # every token's loss depends on the whole sequence: d/d logp_t sum_s (rho A) = 2 * rho for each valid t
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[2 * rho, 2 * rho, 0.0]]))
    # A > 0: rho 1.35 is clipped at 1.2 for the whole sequence; per token (1.105, 1.221) only token 2 is
    seq, seq_stats = ppo_clip_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), mask, ratio_level="sequence")
    torch.testing.assert_close(seq, torch.tensor([[-1.2, -1.2, 0.0]]))
    assert seq_stats.clip_frac_high.item() == pytest.approx(1.0)
    tok, tok_stats = ppo_clip_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), mask)
    torch.testing.assert_close(tok, torch.tensor([[-math.exp(0.1), -1.2, 0.0]]))
    assert tok_stats.clip_frac_high.item() == pytest.approx(0.5)


def test_extreme_log_ratio_stays_finite():
    logp = torch.tensor([[200.0, 0.0]], requires_grad=True)
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), ratio_level="sequence")
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


# --- value loss -------------------------------------------------------------------------------


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.5, 0.2, 1.0, 3.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # t0: V_clip 0.7: max(1, 1.69)/2 = 0.845 (clip binds)   t1: V = V_old: 0.25/2 = 0.125
    # t2: V_clip 0.3: max(.04, .09)/2 = 0.045 (binds)      t3: V_clip 0.2: max(.25, .09)/2 = 0.125 (clip active,
    # not binding)   t4 masked
    torch.testing.assert_close(loss, torch.tensor([[0.845, 0.125, 0.045, 0.125, 0.0]]))
    (grad,) = torch.autograd.grad(loss.sum(), values)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]))  # V - R where unclipped
    assert isinstance(stats, ValueLossStats)
    assert stats.clip_frac.item() == pytest.approx(0.5)
    # 1 - Var(R - V) / Var(R) over the 4 valid tokens = 1 - 0.3825 / 0.671875
    assert stats.explained_variance.item() == pytest.approx(0.4306976744, rel=1e-5)


# --- aggregation ------------------------------------------------------------------------------


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert global_normalizer("token_mean", mask, 4).item() == 3  # valid tokens
    assert global_normalizer("seq_mean_token_mean", mask, 4).item() == 3  # every row counts
    assert global_normalizer("seq_mean_token_sum_norm", mask, 4).item() == 12  # rows x L_max
    assert token_mean(per_token, mask, 3.0).item() == pytest.approx(9 / 3)
    assert seq_mean_token_mean(per_token, mask, 3.0).item() == pytest.approx((2 + 5 + 0) / 3)
    assert seq_mean_token_sum_norm(per_token, mask, 12.0).item() == pytest.approx(9 / 12)
    assert AGGREGATIONS.names() == sorted(AGGREGATION_NAMES)
    with pytest.raises(IncentivizeError, match="unknown loss aggregation 'mean'"):
        global_normalizer("mean", mask, 4)


def test_loss_types_map_to_aggregations():
    assert LOSS_TYPES == {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "bnpo": "token_mean",
                          "dr_grpo": "seq_mean_token_sum_norm"}
    for alias, name in LOSS_TYPES.items():
        assert loss_type_to_aggregation(alias) == name
    assert loss_type_to_aggregation("token_mean") == "token_mean"
    with pytest.raises(IncentivizeError, match=r"unknown loss_type 'dpo' \(choices: bnpo, dapo, dr_grpo, grpo, seq_"):
        loss_type_to_aggregation("dpo")


def test_dr_grpo_normaliser_is_a_constant_without_length_bias():
    short, long = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2), torch.ones(2, 4)
    assert global_normalizer("seq_mean_token_sum_norm", short, 16).item() == 32
    assert global_normalizer("seq_mean_token_sum_norm", long, 16).item() == 32
    # every valid token gets the same gradient weight 1 / (B * L_max), whatever its sequence's length;
    # seq_mean_token_mean gives 1 / (B * |o_i|): tokens of short sequences weigh more
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    per_token = torch.zeros(2, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(seq_mean_token_sum_norm(per_token, mask, global_normalizer(
        "seq_mean_token_sum_norm", mask, 16)), per_token)
    torch.testing.assert_close(grad, mask / 32)
    (grad,) = torch.autograd.grad(seq_mean_token_mean(per_token, mask, 2.0), per_token)
    torch.testing.assert_close(grad, torch.tensor([[0.125] * 4, [0.5, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
def test_one_batch_of_8_equals_8_micro_batches_of_1(aggregation):
    torch.manual_seed(5)
    lengths = [5, 1, 3, 4, 2, 5, 0, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    logp = (torch.randn(8, 5) - 2).requires_grad_()
    old_logp, ref_logp = logp.detach() + 0.1 * torch.randn(8, 5), logp.detach() + 0.1 * torch.randn(8, 5)
    adv = torch.randn(8, 5)
    reduce = AGGREGATIONS.get(aggregation)

    def loss_of(rows, normalizer):
        per_token, _ = ppo_clip_loss(logp[rows], old_logp[rows], adv[rows], mask[rows], eps_high=0.28)
        per_token = per_token + 0.04 * k3(logp[rows], ref_logp[rows])  # GRPO's KL in the loss
        return reduce(per_token, mask[rows], normalizer)

    normalizer = global_normalizer(aggregation, mask, max_completion_length=5)
    full = loss_of(slice(0, 8), normalizer)
    (full_grad,) = torch.autograd.grad(full, logp)
    micro = sum(loss_of(slice(i, i + 1), normalizer) for i in range(8))
    (micro_grad,) = torch.autograd.grad(micro, logp)
    torch.testing.assert_close(micro, full)
    torch.testing.assert_close(micro_grad, full_grad)
    assert full_grad.abs().sum() > 0
    if aggregation == "token_mean":
        # the bug this guards against: a micro-batch normalised by its own token count gives another loss
        local = sum(loss_of(slice(i, i + 1), global_normalizer(aggregation, mask[i : i + 1], 5)) for i in range(8)) / 8
        assert not torch.isclose(local, full, rtol=1e-2)


# --- log-probabilities and entropy ------------------------------------------------------------


def test_selective_log_softmax_equals_the_naive_gather_with_gradient():
    torch.manual_seed(6)
    logits = torch.randn(5, 3, 11, requires_grad=True)
    index = torch.randint(0, 11, (5, 3))
    upstream = torch.randn(5, 3)
    naive = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    for chunk_size in (1, 2, 8):
        chunked = selective_log_softmax(logits, index, chunk_size=chunk_size)
        assert chunked.shape == (5, 3) and chunked.dtype == torch.float32
        torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-5)
        (g_naive,) = torch.autograd.grad((naive * upstream).sum(), logits, retain_graph=True)
        (g_chunked,) = torch.autograd.grad((chunked * upstream).sum(), logits)
        torch.testing.assert_close(g_chunked, g_naive, rtol=0, atol=1e-5)
    double = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, torch.tensor([[0, 4], [2, 2], [1, 3]]), 2),
                                    (double,))


def test_entropy_equals_the_naive_entropy_with_gradient():
    torch.manual_seed(7)
    logits = torch.randn(5, 3, 11, requires_grad=True)
    upstream = torch.randn(5, 3)
    p = torch.softmax(logits, -1)
    naive = -(p * torch.log_softmax(logits, -1)).sum(-1)
    chunked = entropy_from_logits(logits, chunk_size=2)
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-5)
    (g_naive,) = torch.autograd.grad((naive * upstream).sum(), logits)
    (g_chunked,) = torch.autograd.grad((chunked * upstream).sum(), logits)
    torch.testing.assert_close(g_chunked, g_naive, rtol=0, atol=1e-5)
    double = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, 2), (double,))
    # uniform over 4 -> log 4; a -inf logit is a zero-probability token, not a NaN
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
    masked = entropy_from_logits(torch.tensor([[[0.0, 0.0, -math.inf]]]))
    assert masked.item() == pytest.approx(math.log(2))


def test_bf16_logits_are_upcast_per_chunk_and_no_float32_copy_is_kept_for_backward():
    torch.manual_seed(8)
    vocab = 64
    logits = torch.randn(4, 3, vocab).bfloat16().requires_grad_()
    index = torch.randint(0, vocab, (4, 3))
    saved: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = selective_log_softmax(logits, index, chunk_size=2)
        entropy = entropy_from_logits(logits, chunk_size=2)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert not [s for s in saved if s[0] == torch.float32 and s[1][-1] == vocab]  # only (B, T) float32 stats
    reference = torch.log_softmax(logits.detach().float(), -1).gather(-1, index[..., None]).squeeze(-1)
    torch.testing.assert_close(logp, reference, rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(logp.sum() + entropy.sum(), logits)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


# --- GSPO, CISPO (ALGORITHMS.md sections 12, 13) ------------------------------------------------


def test_gspo_by_hand_the_section_12_example():
    # seq 1: log-ratios [3e-4, 9e-4, 3e-4], A = +1 -> s = 1.00050013, clipped at 1.0004: zero gradient
    # seq 2: log-ratios [-2e-4, -2e-4], A = -1 -> s = 0.99980002, inside: dloss/dlp = -(1/G) A s / |y| = +0.249950
    logp = torch.tensor([[3e-4, 9e-4, 3e-4], [-2e-4, -2e-4, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    advantages = torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, stats = POLICY_LOSSES.get("gspo")(logp, old, advantages, mask, eps_low=3e-4, eps_high=4e-4)
    total = seq_mean_token_mean(loss, mask, 2.0)
    assert float(total.detach()) == pytest.approx(-0.00029999, abs=1e-8)
    total.backward()
    torch.testing.assert_close(logp.grad[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(logp.grad[1, :2], torch.full((2,), 0.249950, dtype=torch.float64), atol=1e-6, rtol=0)
    assert logp.grad[1, 2] == 0  # masked
    assert float(stats.clip_frac_high) == pytest.approx(3 / 5)  # the 3 tokens of the clipped sequence


def test_gspo_token_form_equals_the_sequence_objective_in_value_and_gradient():
    # the sequence objective written with a loop: (1/G) sum_i -min(s_i A_i, clip(s_i) A_i), s_i the geometric mean ratio
    generator = torch.Generator().manual_seed(3)
    logp = (0.01 * torch.randn(4, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    old = 0.01 * torch.randn(4, 6, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]], dtype=torch.float64)
    advantage = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    eps_low, eps_high = 0.004, 0.005
    loss, _ = gspo_loss(logp, old, advantage[:, None].expand(4, 6), mask, eps_low=eps_low, eps_high=eps_high)
    vectorised = seq_mean_token_mean(loss, mask, 4.0)
    (grad_vectorised,) = torch.autograd.grad(vectorised, logp)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(4):
        n = int(mask[i].sum())
        s = torch.exp((logp[i, :n] - old[i, :n]).mean())
        total = total - torch.minimum(s * advantage[i], s.clamp(1 - eps_low, 1 + eps_high) * advantage[i])
    total = total / 4
    (grad_loop,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(vectorised, total)
    torch.testing.assert_close(grad_vectorised, grad_loop)


def test_cispo_by_hand_the_section_13_example_every_token_keeps_a_gradient():
    ratios = torch.tensor([[0.5, 1.0, 1.5, 6.0]], dtype=torch.float64)
    logp = torch.tensor([[-2.0, -1.0, -0.5, -0.1]], dtype=torch.float64, requires_grad=True)
    old = (logp - ratios.log()).detach()
    mask, advantages = torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    loss, stats = cispo_loss(logp, old, advantages, mask, eps_low=1.0, eps_high=4.0)  # weight in [0, 5]
    total = token_mean(loss, mask, 4.0)
    assert float(total.detach()) == pytest.approx(0.8125)
    total.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.125, -0.25, -0.375, -1.25]], dtype=torch.float64))
    assert float(stats.clip_frac_high) == pytest.approx(0.25)  # the ratio 6 > 5 with A > 0
    # PPO's clip (eps 0.2) zeroes the gradient of the two tokens outside [0.8, 1.2] that the min picks
    logp.grad = None
    token_mean(ppo_clip_loss(logp, old, advantages, mask)[0], mask, 4.0).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.125, -0.25, 0.0, 0.0]], dtype=torch.float64))


def test_cispo_loop_against_vectorised_with_masked_tokens():
    generator = torch.Generator().manual_seed(5)
    logp = (-torch.rand(3, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.8 * torch.randn(3, 5, generator=generator, dtype=torch.float64)
    advantages = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = (torch.rand(3, 5, generator=generator) > 0.3).double()
    loss, _ = cispo_loss(logp, old, advantages, mask, eps_low=0.2, eps_high=0.28)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for i in range(3):
        for t in range(5):
            if mask[i, t]:
                weight = min(max(math.exp(float(logp[i, t] - old[i, t])), 0.8), 1.28)
                expected[i, t] = -weight * advantages[i, t] * logp[i, t].detach()
    torch.testing.assert_close(loss.detach(), expected)


def test_the_policy_loss_registry_names_the_config_choices():
    from typing import get_args

    from incentivize.config import RLConfig

    assert POLICY_LOSSES.names() == sorted(get_args(RLConfig.model_fields["policy_loss"].annotation))
    with pytest.raises(IncentivizeError, match="unknown policy loss 'gspoo'.*did you mean 'gspo'"):
        POLICY_LOSSES.get("gspoo")


# --- the entropy bonus (ALGORITHMS.md section 15) ------------------------------------------------


def test_entropy_bonus_by_hand_and_its_gradient_raises_the_entropy():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.98, 0.01, 0.01]]], dtype=torch.float64)
    logits = probs.log().requires_grad_()
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, torch.tensor([[0.801819, 0.111902]], dtype=torch.float64), atol=1e-6, rtol=0)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss = 0.30 - 0.01 * (entropy * mask).sum() / mask.sum()
    assert float(loss.detach()) == pytest.approx(0.295431, abs=1e-6)
    loss.backward()
    stepped = entropy_from_logits((logits - 10.0 * logits.grad).detach())
    assert bool((stepped > entropy.detach()).all())  # a step down the loss flattens both distributions


def test_adaptive_entropy_coefficient_follows_the_controller_and_its_bounds():
    control = EntropyCoefficient(0.0, target=0.2, delta=0.005, maximum=0.012)
    applied = [control.update(h) for h in (0.1, 0.1, 0.1, 0.3, 0.2)]
    # rises by delta while at or below the target (capped at the maximum), falls above it and is not applied
    assert applied == pytest.approx([0.005, 0.010, 0.012, 0.0, 0.012])
    restored = EntropyCoefficient(0.0, target=0.2)
    restored.load_state_dict(control.state_dict())
    assert restored.value == pytest.approx(0.012) and restored.coefficient == pytest.approx(control.coefficient)
    fixed = EntropyCoefficient(0.01)
    assert [fixed.update(h) for h in (0.0, 9.0)] == [0.01, 0.01]
