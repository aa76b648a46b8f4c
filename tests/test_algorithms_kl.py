"""KL estimators: hand-computed values, the k3 gradient identity, k3 ~ k2 near zero, exact expectations."""

import pytest
import torch

from incentivize.algorithms.kl import KL_ESTIMATORS, k1, k2, k3, unbiased_k3
from incentivize.errors import IncentivizeError

LOGP = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
REF = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)  # lr = logp - ref = 0.5, -1.0, 0.0


def test_k1_k2_k3_by_hand():
    torch.testing.assert_close(k1(LOGP, REF), torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(k2(LOGP, REF), torch.tensor([[0.125, 0.5, 0.0]], dtype=torch.float64))
    # exp(-0.5) - 1 + 0.5 = 0.1065307;  exp(1) - 1 - 1 = 0.7182818
    expected = torch.tensor([[0.10653065971263342, 0.7182818284590451, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(k3(LOGP, REF), expected, rtol=0, atol=1e-12)


def test_shapes_and_registry():
    logp, ref = torch.randn(4, 7), torch.randn(4, 7)
    for name in ("k1", "k2", "k3"):
        assert KL_ESTIMATORS.get(name)(logp, ref).shape == (4, 7)
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert KL_ESTIMATORS.get("k3") is k3
    with pytest.raises(IncentivizeError, match=r"unknown KL estimator 'k4' \(choices: k1, k2, k3\)"):
        KL_ESTIMATORS.get("k4")


def test_k3_is_never_negative_and_stays_finite_at_extremes():
    torch.manual_seed(0)
    logp, ref = 5 * torch.randn(64, 33), 5 * torch.randn(64, 33)
    assert (k3(logp, ref) >= 0).all()
    assert (k2(logp, ref) >= 0).all()
    # lr = -100 would give exp(100) ~ 2.7e43, inf in float32; the clamp at 20 keeps it finite
    far = k3(torch.tensor([[-100.0, 100.0]]), torch.zeros(1, 2))
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far[0, 0], torch.tensor(torch.e**20 - 1 - 20), rtol=1e-6, atol=0)
    torch.testing.assert_close(far[0, 1], torch.tensor(torch.e**-20 - 1 + 20), rtol=1e-6, atol=0)


def test_k3_gradient_identity():
    # d k3 / d logp = -exp(-lr) + 1 = 1 - exp(ref - logp)
    logp = torch.tensor([[-0.3, -2.0, -0.01, -4.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-0.5, -1.0, -0.02, -0.1]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(k3(logp, ref).sum(), logp)
    torch.testing.assert_close(grad, 1 - torch.exp(ref - logp.detach()), rtol=1e-12, atol=0)
    # k1's gradient is 1 everywhere, k2's is lr
    (g1,) = torch.autograd.grad(k1(logp, ref).sum(), logp)
    (g2,) = torch.autograd.grad(k2(logp, ref).sum(), logp)
    torch.testing.assert_close(g1, torch.ones_like(g1))
    torch.testing.assert_close(g2, (logp - ref).detach())


@pytest.mark.parametrize("lr", [1e-2, 1e-3, -1e-3])
def test_k3_and_k2_gradients_agree_to_first_order(lr):
    # grad k3 = 1 - exp(-lr) = lr - lr^2/2 + O(lr^3), grad k2 = lr: they differ by -lr^2/2
    logp = torch.tensor([[-1.0 + lr]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0]], dtype=torch.float64)
    (g3,) = torch.autograd.grad(k3(logp, ref).sum(), logp)
    (g2,) = torch.autograd.grad(k2(logp, ref).sum(), logp)
    assert g2.item() == pytest.approx(lr, rel=1e-9)
    assert g3.item() == pytest.approx(g2.item(), rel=2 * abs(lr))  # relative gap ~ lr/2
    assert (g3 - g2).item() / lr**2 == pytest.approx(-0.5, abs=abs(lr))


def test_expectation_of_k3_and_k1_is_the_exact_kl():
    # x ~ p over 4 outcomes, enumerated: E_p[k] = sum_x p(x) k(log p(x), log q(x))
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    torch.testing.assert_close((p * k3(p.log(), q.log())).sum(), exact, rtol=1e-12, atol=0)
    torch.testing.assert_close((p * k1(p.log(), q.log())).sum(), exact, rtol=1e-12, atol=0)
    # k2 is biased: its expectation is not the KL here
    assert abs((p * k2(p.log(), q.log())).sum().item() - exact.item()) > 0.05


# --- unbiased KL: r * k3 (ALGORITHMS.md section 16) -------------------------------------------------

REF_PROBS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
OLD_LOGITS = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)


def _exact_expectation(logits: torch.Tensor, estimator) -> torch.Tensor:
    """E_{v ~ pi_old}[estimator] over the whole 3-token vocabulary, differentiable in `logits` (pi_theta)."""
    logp = torch.log_softmax(logits, dim=0)[None]
    old = torch.log_softmax(OLD_LOGITS, dim=0)[None]
    values = estimator(logp, old, REF_PROBS.log()[None])
    return (old.exp() * values).sum()


def test_unbiased_k3_by_hand():
    value = unbiased_k3(torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[-1.2]], dtype=torch.float64),
                        torch.tensor([[-1.5]], dtype=torch.float64))
    assert float(value) == pytest.approx(0.130117, abs=1e-6)  # r = 1.221403, k3 = 0.106531


def test_unbiased_k3_is_the_reverse_kl_and_its_gradient_on_and_off_policy():
    def kl_reverse(logits):  # KL(pi_theta || pi_ref) in closed form
        logp = torch.log_softmax(logits, dim=0)
        return (logp.exp() * (logp - REF_PROBS.log())).sum()

    for logits, expected_value, expected_grad in [
        (OLD_LOGITS.clone(), None, [-0.173181, -0.075571, 0.248752]),
        (torch.tensor([0.6, -0.3, 0.1], dtype=torch.float64), 0.040298, [-0.023261, -0.088056, 0.111317]),
    ]:
        theta = logits.clone().requires_grad_()
        value = _exact_expectation(theta, unbiased_k3)
        (grad,) = torch.autograd.grad(value, theta)
        exact = logits.clone().requires_grad_()
        (exact_grad,) = torch.autograd.grad(kl_reverse(exact), exact)
        torch.testing.assert_close(value.detach(), kl_reverse(logits))
        torch.testing.assert_close(grad, exact_grad)
        torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), atol=1e-6, rtol=0)
        if expected_value is not None:
            assert float(value.detach()) == pytest.approx(expected_value, abs=1e-6)


def test_plain_k3_is_biased_off_policy_and_has_the_forward_kl_gradient_on_policy():
    plain = lambda logp, old, ref: k3(logp, ref)  # noqa: E731
    theta = OLD_LOGITS.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_exact_expectation(theta, plain), theta)
    torch.testing.assert_close(grad, torch.tensor([-0.162415, -0.049911, 0.212327], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    off = _exact_expectation(torch.tensor([0.6, -0.3, 0.1], dtype=torch.float64), plain)
    assert float(off) == pytest.approx(0.052781, abs=1e-6)  # not KL = 0.040298
    # a detached ratio brings the biased gradient back, even where r = 1
    detached = lambda logp, old, ref: torch.exp(logp - old).detach() * k3(logp, ref)  # noqa: E731
    theta = OLD_LOGITS.clone().requires_grad_()
    (grad_detached,) = torch.autograd.grad(_exact_expectation(theta, detached), theta)
    torch.testing.assert_close(grad_detached, grad)
