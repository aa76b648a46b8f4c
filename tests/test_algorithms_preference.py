"""Preference losses (DPO family, KTO): the worked example of ALGORITHMS.md section 17, gradients, batching, errors."""

import math

import pytest
import torch

from incentivize.algorithms.preference import (
    PREFERENCE_LOSSES,
    implicit_rewards,
    kto_loss,
    kto_reference_point,
    nll_loss,
)
from incentivize.errors import IncentivizeError

# The worked example: summed log-probs chosen -10 over 5 tokens, rejected -12 over 4 tokens, reference
# -11 and -11, beta 0.1. D_w = 1, D_l = -1, h = 2, beta h = 0.2.
CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED = -10.0, -12.0, -11.0, -11.0
CHOSEN_LEN, REJECTED_LEN = 5, 4
BETA = 0.1
SIGMOID = math.log1p(math.exp(-0.2))  # -log sig(0.2) = 0.598139
FLIPPED = math.log1p(math.exp(0.2))  # -log sig(-0.2) = 0.798139


def _t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def _example(name, beta=BETA, **params):
    lengths = {"chosen_lengths": torch.tensor([CHOSEN_LEN]), "rejected_lengths": torch.tensor([REJECTED_LEN])}
    return PREFERENCE_LOSSES.get(name)(_t(CHOSEN), _t(REJECTED), _t(REF_CHOSEN), _t(REF_REJECTED), beta,
                                       **lengths, **params)


def test_registry_holds_the_paired_losses():
    assert PREFERENCE_LOSSES.names() == ["cdpo", "hinge", "ipo", "robust", "sigmoid", "simpo"]


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("sigmoid", {}, 0.598139),
    ("hinge", {}, 0.8),  # 1 - 0.1 * 2
    ("cdpo", {"label_smoothing": 0.1}, 0.618139),  # 0.9 * 0.598139 + 0.1 * 0.798139
    ("robust", {"label_smoothing": 0.1}, 0.573139),  # (0.9 * 0.598139 - 0.1 * 0.798139) / 0.8
    ("ipo", {}, 20.7025),  # h_avg = 1/5 - (-1/4) = 0.45; (0.45 - 1/(2 * 0.1))^2 = (0.45 - 5)^2
])
def test_worked_example_table(name, params, expected):
    loss = _example(name, **params)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_worked_example_closed_forms():
    assert _example("sigmoid").item() == pytest.approx(SIGMOID, rel=1e-12)
    assert _example("cdpo", label_smoothing=0.1).item() == pytest.approx(0.9 * SIGMOID + 0.1 * FLIPPED, rel=1e-12)
    assert _example("robust", label_smoothing=0.1).item() == pytest.approx((0.9 * SIGMOID - 0.1 * FLIPPED) / 0.8,
                                                                          rel=1e-12)
    # with label smoothing 0 both smoothed variants are plain DPO
    assert _example("cdpo").item() == pytest.approx(SIGMOID, rel=1e-12)
    assert _example("robust").item() == pytest.approx(SIGMOID, rel=1e-12)
    # the paper's summed IPO would give (2 - 5)^2 = 9: the per-token average is what is implemented
    assert _example("ipo").item() != pytest.approx(9.0)


def test_simpo_worked_example_ignores_the_reference():
    # beta 2.5, gamma 1.375: average lp -2 and -3, -log sig(2.5 * 1 - 1.375) = -log sig(1.125)
    expected = math.log1p(math.exp(-1.125))
    assert expected == pytest.approx(0.281150, abs=1e-6)
    assert _example("simpo", beta=2.5, gamma=1.375).item() == pytest.approx(expected, rel=1e-12)
    lengths = {"chosen_lengths": torch.tensor([5]), "rejected_lengths": torch.tensor([4])}
    without = PREFERENCE_LOSSES.get("simpo")(_t(CHOSEN), _t(REJECTED), None, None, 2.5, gamma=1.375, **lengths)
    assert without.item() == pytest.approx(expected, rel=1e-12)
    # gamma defaults to 0: -log sig(2.5)
    assert _example("simpo", beta=2.5).item() == pytest.approx(math.log1p(math.exp(-2.5)), rel=1e-12)


def test_rpo_is_sigmoid_plus_length_normalised_nll():
    nll = nll_loss(_t(CHOSEN), torch.tensor([CHOSEN_LEN]))
    assert nll.item() == pytest.approx(2.0)  # 10 / 5
    assert (_example("sigmoid") + 1.0 * nll).item() == pytest.approx(2.598139, abs=1e-6)


def test_kto_worked_example():
    # r = 1 (desirable): 1 - sig(0.1 * (1 - 0.3)) = 1 - sig(0.07)
    # r = -1 (undesirable): 1 - sig(0.1 * (0.3 + 1)) = 1 - sig(0.13)
    loss = kto_loss(_t(-10.0, -12.0), _t(-11.0, -11.0), torch.tensor([True, False]), BETA,
                    kl_estimate=torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(loss, _t(0.482507, 0.467546), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, _t(1 - 1 / (1 + math.exp(-0.07)), 1 - 1 / (1 + math.exp(-0.13))))
    weighted = kto_loss(_t(-10.0, -12.0), _t(-11.0, -11.0), torch.tensor([True, False]), BETA, kl_estimate=0.3,
                        desirable_weight=2.0, undesirable_weight=0.5)
    torch.testing.assert_close(weighted, loss * _t(2.0, 0.5))


# --- gradients ----------------------------------------------------------------------------------


def test_sigmoid_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = _t(CHOSEN).requires_grad_(), _t(REJECTED).requires_grad_()
    loss = PREFERENCE_LOSSES.get("sigmoid")(chosen, rejected, _t(REF_CHOSEN), _t(REF_REJECTED), BETA)
    grad_chosen, grad_rejected = torch.autograd.grad(loss.sum(), (chosen, rejected))
    # d/dlp_w -log sig(beta h) = -beta sig(-beta h): DPO's weight, larger when the pair is ranked wrongly
    weight = BETA / (1 + math.exp(0.2))
    assert grad_chosen.item() == pytest.approx(-weight, rel=1e-12)  # descent raises lp_w
    assert grad_rejected.item() == pytest.approx(weight, rel=1e-12)  # and lowers lp_l


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "cdpo", "robust", "hinge", "simpo"])
def test_every_loss_pushes_chosen_up_and_rejected_down(name):
    chosen, rejected = _t(CHOSEN).requires_grad_(), _t(REJECTED).requires_grad_()
    params = {"label_smoothing": 0.1} if name in ("cdpo", "robust") else {}
    loss = PREFERENCE_LOSSES.get(name)(chosen, rejected, _t(REF_CHOSEN), _t(REF_REJECTED), BETA,
                                       chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([4]),
                                       **params)
    grad_chosen, grad_rejected = torch.autograd.grad(loss.sum(), (chosen, rejected))
    assert grad_chosen.item() < 0 < grad_rejected.item()


def test_hinge_has_no_gradient_past_its_margin():
    chosen = _t(0.0).requires_grad_()
    loss = PREFERENCE_LOSSES.get("hinge")(chosen, _t(-20.0), _t(0.0), _t(0.0), BETA)  # beta h = 2 > 1
    (grad,) = torch.autograd.grad(loss.sum(), chosen)
    assert loss.item() == 0.0 and grad.item() == 0.0


def test_kto_gradients_and_detached_reference_point():
    logps = _t(-10.0, -12.0).requires_grad_()
    z0 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    kto_loss(logps, _t(-11.0, -11.0), torch.tensor([True, False]), BETA, kl_estimate=z0).sum().backward()
    grad = logps.grad
    assert grad is not None and grad[0].item() < 0 < grad[1].item()  # desirable pulled up, undesirable down
    # d/dr [1 - sig(beta (r - z0))] = -beta sig(0.07) sig(-0.07)
    s = 1 / (1 + math.exp(-0.07))
    assert grad[0].item() == pytest.approx(-BETA * s * (1 - s), rel=1e-12)
    assert z0.grad is None  # z0 was detached inside kto_loss


def test_implicit_rewards_are_detached():
    chosen, rejected = _t(CHOSEN).requires_grad_(), _t(REJECTED).requires_grad_()
    rewards_chosen, rewards_rejected = implicit_rewards(chosen, rejected, _t(REF_CHOSEN), _t(REF_REJECTED), BETA)
    torch.testing.assert_close(rewards_chosen, _t(0.1))
    torch.testing.assert_close(rewards_rejected, _t(-0.1))
    assert not rewards_chosen.requires_grad and not rewards_rejected.requires_grad
    assert (rewards_chosen - rewards_rejected).item() == pytest.approx(0.2)  # the margin beta h


# --- batching -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "cdpo", "robust", "hinge", "simpo"])
def test_batched_loss_is_elementwise(name):
    torch.manual_seed(0)
    chosen, rejected = -20 * torch.rand(5, dtype=torch.float64), -20 * torch.rand(5, dtype=torch.float64)
    ref_chosen, ref_rejected = -20 * torch.rand(5, dtype=torch.float64), -20 * torch.rand(5, dtype=torch.float64)
    chosen_lengths, rejected_lengths = torch.tensor([1, 3, 7, 2, 9]), torch.tensor([4, 4, 1, 8, 2])
    params = {"label_smoothing": 0.2} if name in ("cdpo", "robust") else {"gamma": 0.5} if name == "simpo" else {}
    loss_fn = PREFERENCE_LOSSES.get(name)
    batched = loss_fn(chosen, rejected, ref_chosen, ref_rejected, 0.5, chosen_lengths=chosen_lengths,
                      rejected_lengths=rejected_lengths, **params)
    assert batched.shape == (5,)
    rows = [loss_fn(chosen[i:i + 1], rejected[i:i + 1], ref_chosen[i:i + 1], ref_rejected[i:i + 1], 0.5,
                    chosen_lengths=chosen_lengths[i:i + 1], rejected_lengths=rejected_lengths[i:i + 1], **params)
            for i in range(5)]
    torch.testing.assert_close(batched, torch.cat(rows))


def test_kto_batched_is_elementwise():
    logps, ref_logps = _t(-3.0, -5.0, -1.0, -9.0), _t(-4.0, -4.0, -2.0, -6.0)
    desirable = torch.tensor([True, False, False, True])
    batched = kto_loss(logps, ref_logps, desirable, 0.5, kl_estimate=0.2)
    rows = [kto_loss(logps[i:i + 1], ref_logps[i:i + 1], desirable[i:i + 1], 0.5, kl_estimate=0.2) for i in range(4)]
    torch.testing.assert_close(batched, torch.cat(rows))


def test_large_margins_stay_finite_in_float32():
    chosen, rejected = torch.tensor([0.0, -1e4]), torch.tensor([-1e4, 0.0])
    loss = PREFERENCE_LOSSES.get("sigmoid")(chosen, rejected, torch.zeros(2), torch.zeros(2), 1.0)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(1e4)


def test_bf16_inputs_are_computed_in_float32():
    chosen = torch.tensor([CHOSEN], dtype=torch.bfloat16, requires_grad=True)
    loss = PREFERENCE_LOSSES.get("sigmoid")(chosen, torch.tensor([REJECTED], dtype=torch.bfloat16),
                                            torch.tensor([REF_CHOSEN]), torch.tensor([REF_REJECTED]), BETA)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert chosen.grad is not None and chosen.grad.dtype == torch.bfloat16


# --- KTO reference point ------------------------------------------------------------------------


def test_kto_reference_point_mean_clamped_and_detached():
    logps = _t(-5.0, -7.0, -4.0).requires_grad_()
    z0 = kto_reference_point(logps, _t(-6.0, -7.5, -6.0))  # log-ratios 1, 0.5, 2: mean 7/6
    assert z0.shape == () and z0.item() == pytest.approx(7 / 6)
    assert not z0.requires_grad
    clamped = kto_reference_point(logps, _t(-4.0, -6.0, -4.0))  # log-ratios -1, -1, 0: mean -2/3 -> 0
    assert clamped.item() == 0.0 and not clamped.requires_grad
    with pytest.raises(ValueError, match="at least one"):
        kto_reference_point(torch.zeros(0), torch.zeros(0))


# --- errors -------------------------------------------------------------------------------------


def test_unknown_loss_lists_the_choices():
    with pytest.raises(IncentivizeError, match=r"unknown preference loss 'dpo' \(choices: cdpo, hinge, ipo, "
                                               r"robust, sigmoid, simpo\)"):
        PREFERENCE_LOSSES.get("dpo")


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_robust_refuses_label_smoothing_outside_zero_to_half(eps):
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        _example("robust", label_smoothing=eps)


def test_cdpo_refuses_label_smoothing_above_half():
    with pytest.raises(ValueError, match="label_smoothing <= 0.5"):
        _example("cdpo", label_smoothing=0.6)


@pytest.mark.parametrize("name", ["ipo", "simpo"])
@pytest.mark.parametrize("missing", ["chosen_lengths", "rejected_lengths"])
def test_per_token_losses_need_lengths(name, missing):
    lengths = {"chosen_lengths": torch.tensor([5]), "rejected_lengths": torch.tensor([4])}
    del lengths[missing]
    with pytest.raises(ValueError, match=f"'{name}' loss .*needs {missing}"):
        PREFERENCE_LOSSES.get(name)(_t(CHOSEN), _t(REJECTED), _t(REF_CHOSEN), _t(REF_REJECTED), BETA, **lengths)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "cdpo", "robust", "hinge"])
@pytest.mark.parametrize("missing", ["ref_chosen_logps", "ref_rejected_logps"])
def test_reference_based_losses_refuse_none_references(name, missing):
    refs = {"ref_chosen_logps": _t(REF_CHOSEN), "ref_rejected_logps": _t(REF_REJECTED)}
    refs[missing] = None
    with pytest.raises(ValueError, match=f"'{name}' loss needs reference log-probs but {missing} is None"):
        PREFERENCE_LOSSES.get(name)(_t(CHOSEN), _t(REJECTED), refs["ref_chosen_logps"], refs["ref_rejected_logps"],
                                    BETA, chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([4]))


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "cdpo", "robust", "hinge", "simpo"])
def test_one_parameter_set_fits_every_loss(name):
    # a caller passes label_smoothing and gamma to whichever loss is named; each uses only its own
    own = {"cdpo": "label_smoothing", "robust": "label_smoothing", "simpo": "gamma"}.get(name)
    both = _example(name, label_smoothing=0.1, gamma=1.375)
    only_own = _example(name, **({own: {"label_smoothing": 0.1, "gamma": 1.375}[own]} if own else {}))
    torch.testing.assert_close(both, only_own, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) label_smoothin \(the family's parameters: "
                                        r"label_smoothing, gamma\)"):
        _example(name, label_smoothin=0.1)


def test_sigmoid_ignores_label_smoothing_use_cdpo():
    assert _example("sigmoid", label_smoothing=0.1).item() == pytest.approx(SIGMOID, rel=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        PREFERENCE_LOSSES.get("sigmoid")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                                         BETA)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        PREFERENCE_LOSSES.get("sigmoid")(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), BETA)
    with pytest.raises(ValueError, match="bool"):
        kto_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1, 0]), BETA, kl_estimate=0.0)
