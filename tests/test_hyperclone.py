"""HyperCloning: the wider model computes the small one's logits on real text, saves and loads with transformers."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from incentivize.errors import IncentivizeError
from incentivize.models.hyperclone import hyperclone, widen_linear

TEXT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. 48 / 2 = 24"


def _logits(model, tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_the_clone_computes_the_same_logits(tiny, factor, noise):
    model, tokenizer = tiny
    wide = hyperclone(model, factor, noise=noise)
    assert wide.config.hidden_size == factor * model.config.hidden_size
    assert wide.config.intermediate_size == factor * model.config.intermediate_size
    assert wide.config.num_attention_heads == factor * model.config.num_attention_heads
    assert wide.config.num_key_value_heads == factor * model.config.num_key_value_heads  # grouped-query kept
    torch.testing.assert_close(_logits(wide, tokenizer), _logits(model, tokenizer), atol=1e-5, rtol=1e-5)


def test_noise_changes_the_weights_but_not_the_function_and_breaks_the_gradient_symmetry(tiny):
    model, tokenizer = tiny
    plain, noisy = hyperclone(model, 2), hyperclone(model, 2, noise=0.5)
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(plain.state_dict()[weight], noisy.state_dict()[weight])
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    for wide, symmetric in ((plain, True), (noisy, False)):
        wide.zero_grad()
        wide(input_ids=ids, labels=ids).loss.backward()
        # the copies of a query head get different gradients once the noise of later layers sends them back
        grad = wide.model.layers[0].self_attn.q_proj.weight.grad
        half = grad.shape[0] // 2
        assert torch.allclose(grad[:half], grad[half:], atol=1e-7) == symmetric


def test_the_clone_saves_and_loads_with_transformers(tiny, tmp_path):
    model, tokenizer = tiny
    wide = hyperclone(model, 2)
    wide.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not loaded.config.tie_word_embeddings  # the head averages its inputs; the embedding copies
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-5, rtol=1e-5)


def test_widen_linear_by_hand():
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    wide = widen_linear(w, 1, 3)
    assert wide.shape == (2, 6) and torch.allclose(wide @ torch.tensor([1.0, 2.0]).repeat(3), w @ torch.tensor([1.0, 2.0]))


def test_an_unsupported_architecture_is_refused_in_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16))
    with pytest.raises(IncentivizeError, match="supports the llama and mistral architectures"):
        hyperclone(gpt2, 2)
    biased = LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=16, attention_bias=True))
    with pytest.raises(IncentivizeError, match="without attention or MLP biases"):
        hyperclone(biased, 2)


def test_grow_writes_a_loadable_model(tmp_path):
    out = tmp_path / "wide"
    result = subprocess.run([sys.executable, "-m", "incentivize.cli", "grow", "--model", "tiny-random", "--width-factor",
                             "2", "--output", str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 128
    again = subprocess.run([sys.executable, "-m", "incentivize.cli", "grow", "--model", "tiny-random", "--output",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stdout + again.stderr
