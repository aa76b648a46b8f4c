"""float32 linear layers through oneDNN: the same values and gradients as PyTorch's, and invisible elsewhere."""

import copy
import platform

import pytest
import torch

from incentivize.models import load, onednn

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
    reason="oneDNN float32 linears are used on x86 CPUs only",
)


def test_available_on_an_x86_cpu():
    assert onednn.available()  # the op exists and its self-check agrees with PyTorch


def _values_and_grads(layer: torch.nn.Linear, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return [y.detach(), *grads]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (2, 1, 48)])
def test_values_and_gradients_match_pytorch(bias, shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80, bias=bias)
    fast = copy.deepcopy(plain)
    fast.__class__ = onednn.OneDNNLinear
    x = torch.randn(*shape)
    for ours, theirs in zip(_values_and_grads(fast, x), _values_and_grads(plain, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_strided_input_and_a_strided_gradient_are_handled():
    torch.manual_seed(1)
    plain = torch.nn.Linear(32, 16, bias=False)
    fast = copy.deepcopy(plain)
    fast.__class__ = onednn.OneDNNLinear
    x = torch.randn(32, 6, 4).transpose(0, 2)  # (4, 6, 32), not contiguous
    outs = [layer(x) for layer in (fast, plain)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for out in outs:
        out.transpose(0, 1).sum().backward()  # a gradient that arrives as a strided view
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_installed_on_load_and_invisible_to_copies_checkpoints_and_other_dtypes(tmp_path):
    model, tokenizer = load("tiny-random")
    kinds = {type(m) for m in model.modules()}
    assert onednn.OneDNNLinear in kinds and torch.nn.Linear not in kinds
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    ids = torch.tensor([tokenizer.encode("12 + 30 = 42")])
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.model.layers[0].mlp.up_proj.weight.add_(1.0)  # a copy owns its own weights
        fast = model(input_ids=ids).logits
        assert not torch.equal(reference(input_ids=ids).logits, fast)
    onednn.uninstall(model)
    assert onednn.OneDNNLinear not in {type(m) for m in model.modules()}
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fast, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert "OneDNN" not in (tmp_path / "config.json").read_text()
    half, _ = load("tiny-random", dtype=torch.bfloat16)  # falls back to PyTorch's path
    with torch.no_grad():
        assert half(input_ids=ids).logits.dtype == torch.bfloat16
