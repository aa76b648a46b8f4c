"""The memory and speed paths of the learner change nothing that is learned.

Flat gradient and Adam buffers, in-place vocabulary gradients, MLP recomputation and the linear
layers' kernels (PyTorch's, oneDNN's) each give the same gradients and updates as the plain PyTorch
path, and a short GRPO run with all of them on follows the same loss and reward curve as one with all
of them off.
"""

import copy

import pytest
import torch

from incentivize.config import load_config
from incentivize.models import load, onednn
from incentivize.models.recompute import recompute_mlp
from incentivize.models.speed import enable_training_paths
from incentivize.trainers.flat_state import FlatGradients, flatten_adam_state
from incentivize.trainers.rl import train

KERNELS = ["torch", pytest.param("onednn", marks=pytest.mark.skipif(not onednn.available(), reason="no oneDNN here"))]


def _loss(model, ids):
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])


@pytest.fixture()
def pair():
    model, tokenizer = load("tiny-random")
    assert model.model.embed_tokens.padding_idx == tokenizer.pad_token_id  # its row must get no gradient
    ids = torch.tensor([[tokenizer.pad_token_id] * 2 + tokenizer.encode("Tom has 12 apples and buys 30 more: 42 apples.")])
    return model, copy.deepcopy(model), ids


def _values_and_grads(layer: torch.nn.Linear, x: torch.Tensor, grad_exists: bool) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    for p in layer.parameters():
        p.grad = torch.zeros_like(p) if grad_exists else None  # as flat gradient buffers leave them, or not
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return [y.detach(), *grads]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("grad_in_place", "grad_exists"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (2, 1, 48)])
def test_training_linear_gives_pytorchs_values_and_gradients(kernel, grad_in_place, grad_exists, bias, shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80, bias=bias)
    fast = copy.deepcopy(plain)
    enable_training_paths(fast, linear=kernel)
    fast.grad_in_place = grad_in_place  # a lone layer is no vocabulary matrix: set it by hand
    x = torch.randn(*shape)
    for ours, theirs in zip(_values_and_grads(fast, x, grad_exists), _values_and_grads(plain, x, grad_exists)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_in_place_weight_gradient_hands_autograd_no_weight_sized_tensor(kernel):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 300, bias=False)
    enable_training_paths(layer, linear=kernel)
    layer.grad_in_place = True
    handed = []
    # the weight gradients autograd would accumulate (a hook may also see None where there is none)
    layer.weight.register_hook(lambda grad: handed.append(grad.shape) if grad is not None else None)
    x = torch.randn(5, 16)
    layer(x).sum().backward()  # no .grad yet: autograd's own path
    assert handed == [layer.weight.shape]
    grad = layer.weight.grad
    layer(x).sum().backward()  # .grad exists: added into it in place
    assert handed == [layer.weight.shape] and layer.weight.grad is grad
    torch.testing.assert_close(grad, 2 * torch.ones(300, 1) * x.sum(dim=0), rtol=1e-5, atol=1e-5)


def test_flat_gradients_accumulate_like_plain_gradients_and_zero_in_one_buffer(pair):
    fast, plain, ids = pair
    assert enable_training_paths(fast, grad_in_place=True)["grad_in_place"] == "on"
    assert fast.lm_head.grad_in_place and fast.model.embed_tokens.grad_in_place  # the tied vocabulary matrix
    assert not fast.model.layers[0].mlp.up_proj.grad_in_place
    flat = FlatGradients(fast.parameters())
    for _ in range(2):  # two micro-batches accumulate
        _loss(fast, ids).backward()
        _loss(plain, ids).backward()
    storages = {p.grad.untyped_storage().data_ptr() for p in fast.parameters()}
    assert len(storages) == 1  # every gradient is a view of the one buffer, after backward too
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    flat.zero()
    assert all(float(p.grad.abs().max()) == 0 for p in fast.parameters())


def test_flat_adam_state_updates_exactly_like_lazily_initialised_adam(pair):
    fast, plain, ids = pair  # plain layers both: compare the optimizer alone
    options = {"lr": 1e-2, "weight_decay": 0.01, "fused": True}
    fast_opt = torch.optim.AdamW(fast.parameters(), **options)
    flatten_adam_state(fast_opt)
    flat = FlatGradients(fast.parameters())
    plain_opt = torch.optim.AdamW(plain.parameters(), **options)
    for _ in range(3):
        flat.zero()
        plain_opt.zero_grad(set_to_none=True)
        _loss(fast, ids).backward()
        _loss(plain, ids).backward()
        fast_opt.step()
        plain_opt.step()
    for p, q in zip(fast.parameters(), plain.parameters()):
        assert torch.equal(p, q)
    # a checkpointed state loads back into the flat buffers, values intact
    state = copy.deepcopy(fast_opt.state_dict())
    restored = torch.optim.AdamW(fast.parameters(), **options)
    restored.load_state_dict(state)
    flatten_adam_state(restored)
    moments = [restored.state[p]["exp_avg"] for p in fast.parameters()]
    assert len({m.untyped_storage().data_ptr() for m in moments}) == 1
    for p, q in zip(fast.parameters(), plain.parameters()):
        assert torch.equal(restored.state[p]["exp_avg_sq"], plain_opt.state[q]["exp_avg_sq"])
        assert float(restored.state[p]["step"]) == 3.0


def test_recomputed_mlp_gives_the_same_gradients_and_keeps_parameter_names(pair):
    fast, plain, ids = pair
    assert recompute_mlp(fast) == fast.config.num_hidden_layers
    assert recompute_mlp(fast) == 0  # idempotent
    assert list(fast.state_dict()) == list(plain.state_dict())
    _loss(fast, ids).backward()
    _loss(plain, ids).backward()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_a_short_run_learns_the_same_with_and_without_the_memory_and_speed_paths(tmp_path, monkeypatch):
    curves = {}
    chosen = []

    def enable(model, **options):
        chosen.append(enable_training_paths(model, **options))
        return chosen[-1]

    for fast in (True, False):
        # the slow run keeps the plain layers of the policy and the reference
        monkeypatch.setattr("incentivize.trainers.policy.enable_training_paths",
                            enable if fast else (lambda model, **options: {"linear": "torch", "grad_in_place": "off"}))
        monkeypatch.setattr("incentivize.trainers.rl.FlatGradients", FlatGradients if fast else _PlainGradients)
        monkeypatch.setattr("incentivize.trainers.rl.flatten_adam_state",
                            flatten_adam_state if fast else (lambda optimizer: None))
        config = load_config("grpo", None, [
            "model=tiny-random", "max_steps=3", "num_generations=4", "generation_batch_size=8",
            "max_completion_length=8", "learning_rate=1e-3", "micro_batch_size=4", "beta=0.04",
            "eval_before=false", "eval_limit=2", f"recompute_mlp={str(fast).lower()}", f"output_dir={tmp_path}/{fast}",
        ])
        rows: list[dict] = []
        train(config, on_step=lambda step, metrics: rows.append(metrics))
        curves[fast] = rows
    kernel = "onednn" if onednn.available() else "torch"
    assert chosen == [{"linear": kernel, "grad_in_place": "on"}, {"linear": kernel, "grad_in_place": "off"}]  # policy, reference
    for fast, plain in zip(curves[True], curves[False]):
        assert fast["reward_mean"] == plain["reward_mean"]  # same samples: the weights stayed in step
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key


class _PlainGradients:
    """The unoptimised path: gradients allocated by autograd and freed after every update."""

    def __init__(self, params):
        self.params = list(params)
        self.buffers = []  # FlatGradients' buffers, which a group of learners sums: none here (one process)

    def zero(self):
        for p in self.params:
            p.grad = None
