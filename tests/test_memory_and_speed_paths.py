"""The memory and speed paths of the learner change nothing that is learned.

Flat gradient and Adam buffers, in-place vocabulary gradients, MLP recomputation and oneDNN linears
each give the same gradients and updates as the plain PyTorch path, and a short GRPO run with all of
them on follows the same loss and reward curve as one with all of them off.
"""

import copy
import functools

import pytest
import torch

from incentivize.config import load_config
from incentivize.models import load, onednn
from incentivize.models.recompute import recompute_mlp
from incentivize.trainers.flat_state import FlatGradients, flatten_adam_state
from incentivize.trainers.rl import train


def _loss(model, ids):
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])


@pytest.fixture()
def pair():
    model, tokenizer = load("tiny-random")
    assert model.model.embed_tokens.padding_idx == tokenizer.pad_token_id  # its row must get no gradient
    ids = torch.tensor([[tokenizer.pad_token_id] * 2 + tokenizer.encode("Tom has 12 apples and buys 30 more: 42 apples.")])
    return model, copy.deepcopy(model), ids


def test_flat_gradients_accumulate_like_plain_gradients_and_zero_in_one_buffer(pair):
    fast, plain, ids = pair
    flat = FlatGradients(fast.parameters(), in_place_above=10**6)
    vocab = fast.lm_head.weight
    assert getattr(vocab, "accumulate_in_place", False)  # the tied vocabulary matrix is the big one
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
    fast, plain, ids = pair
    onednn.uninstall(fast)
    onednn.uninstall(plain)  # compare the optimizer alone
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
    for fast in (True, False):
        monkeypatch.setenv("INCENTIVIZE_ONEDNN", "1" if fast else "0")
        onednn.available.cache_clear()
        # in_place_above: the tiny model's vocabulary matrix takes the in-place path too
        monkeypatch.setattr("incentivize.trainers.rl.FlatGradients",
                            functools.partial(FlatGradients, in_place_above=10**6) if fast else _PlainGradients)
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
    onednn.available.cache_clear()
    for fast, plain in zip(curves[True], curves[False]):
        assert fast["reward_mean"] == plain["reward_mean"]  # same samples: the weights stayed in step
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key


class _PlainGradients:
    """The unoptimised path: gradients allocated by autograd and freed after every update."""

    def __init__(self, params):
        self.params = list(params)

    def zero(self):
        for p in self.params:
            p.grad = None
