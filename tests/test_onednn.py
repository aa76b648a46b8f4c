"""float32 linear layers through oneDNN: the same values and gradients as PyTorch's, and invisible elsewhere.

The layer itself (both kernels, the in-place weight gradient) is tested in test_memory_and_speed_paths.py.
"""

import copy
import platform

import pytest
import torch

from incentivize.errors import IncentivizeError
from incentivize.models import load, onednn
from incentivize.models.speed import TrainingLinear, disable_training_paths, enable_training_paths

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
    reason="oneDNN float32 linears are used on x86 CPUs only",
)


def test_available_on_an_x86_cpu():
    assert onednn.available()  # the op exists and its self-check agrees with PyTorch


def test_products_match_pytorch_for_strided_operands():
    torch.manual_seed(0)
    a, b = torch.randn(40, 7).t(), torch.randn(24, 40).t()  # (7, 40) and (40, 24), both transposed views
    torch.testing.assert_close(onednn.matmul_nt(a, b.t()), a @ b, rtol=1e-5, atol=1e-5)
    out = torch.randn(7, 24)
    expected = out + a @ b
    onednn.add_matmul_nt(out, a, b.t(), rows=3)  # blocks that do not divide the rows
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_strided_input_and_a_strided_gradient_are_handled():
    torch.manual_seed(1)
    plain = torch.nn.Linear(32, 16, bias=False)
    fast = copy.deepcopy(plain)
    assert enable_training_paths(fast, linear="onednn") == {"linear": "onednn", "grad_in_place": "off"}
    x = torch.randn(32, 6, 4).transpose(0, 2)  # (4, 6, 32), not contiguous
    outs = [layer(x) for layer in (fast, plain)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for out in outs:
        out.transpose(0, 1).sum().backward()  # a gradient that arrives as a strided view
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_chosen_by_auto_and_invisible_to_copies_checkpoints_and_other_dtypes(tmp_path):
    model, tokenizer = load("tiny-random")
    assert enable_training_paths(model)["linear"] == "onednn"  # auto, on an x86 CPU
    assert {m.kernel for m in model.modules() if isinstance(m, TrainingLinear)} == {"onednn"}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    ids = torch.tensor([tokenizer.encode("12 + 30 = 42")])
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.model.layers[0].mlp.up_proj.weight.add_(1.0)  # a copy owns its own weights
        fast = model(input_ids=ids).logits
        assert not torch.equal(reference(input_ids=ids).logits, fast)
    disable_training_paths(model)
    assert TrainingLinear not in {type(m) for m in model.modules()}
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fast, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert "Training" not in (tmp_path / "config.json").read_text()
    half, _ = load("tiny-random", dtype=torch.bfloat16)
    assert enable_training_paths(half)["linear"] == "torch"  # auto: oneDNN's products are float32
    enable_training_paths(half, linear="onednn")  # asked for anyway: each call falls back to PyTorch's path
    with torch.no_grad():
        assert half(input_ids=ids).logits.dtype == torch.bfloat16


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("INCENTIVIZE_ONEDNN", "0")
    onednn.available.cache_clear()
    try:
        layer = torch.nn.Linear(4, 4)
        assert enable_training_paths(layer)["linear"] == "torch"
        with pytest.raises(IncentivizeError, match="'onednn' is not available here"):
            enable_training_paths(layer, linear="onednn")
    finally:
        monkeypatch.undo()
        onednn.available.cache_clear()
