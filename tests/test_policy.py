"""The learner's forward pass: a shared prompt computed once gives the same log-probs and gradients."""

import pytest
import torch

from incentivize.config import load_config
from incentivize.rollout import SamplingParams, generate
from incentivize.trainers.policy import Batch, SharedPrompts, token_logprobs
from incentivize.trainers.rl import train


@pytest.fixture(scope="module")
def rollouts(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode("3 + 4 ="), tokenizer.encode("Compute twelve times eleven, please:"),
               tokenizer.encode("hi")]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=3)
    return generate(model, prompts, params, eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)


def _logprobs_and_grads(model, batch, share_prompt, rows):
    model.zero_grad(set_to_none=True)
    part = batch.rows(rows)
    logp, entropy = token_logprobs(model, part, 0.7, share_prompt=share_prompt, with_entropy=True)
    weights = torch.linspace(-1.0, 1.0, logp.shape[1])
    (logp * part.pad(part.completion_mask.float()) * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads


@pytest.mark.parametrize("rows", [slice(0, 12), slice(2, 9), slice(4, 8), slice(11, 12)])
def test_shared_prompt_matches_full_forward_in_values_and_gradients(tiny, rollouts, rows):
    model, _ = tiny
    batch = Batch.from_rollouts(rollouts)
    full, full_entropy, full_grads = _logprobs_and_grads(model, batch, False, rows)
    shared, shared_entropy, shared_grads = _logprobs_and_grads(model, batch, True, rows)
    mask = rollouts.completion_mask[rows].bool()
    assert full.shape == shared.shape == mask.shape
    torch.testing.assert_close(shared[mask], full[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shared_entropy[mask], full_entropy[mask], atol=2e-5, rtol=1e-5)
    assert (shared[~mask] == 0).all()
    assert full_grads.keys() == shared_grads.keys() and len(full_grads) > 0
    for name in full_grads:
        scale = float(full_grads[name].abs().max())  # float rounding differs in the shared prompt's sums
        torch.testing.assert_close(shared_grads[name], full_grads[name], atol=2e-5 * scale, rtol=1e-4, msg=name)


def test_engine_logprobs_match_the_shared_prompt_learner(tiny, rollouts):
    model, _ = tiny
    batch = Batch.from_rollouts(rollouts)
    logp, _ = token_logprobs(model, batch.rows(slice(0, 12)), 1.0, grad=False)
    mask = rollouts.completion_mask.bool()
    torch.testing.assert_close(logp[mask], rollouts.logprobs[mask], atol=2e-5, rtol=1e-5)


def test_a_short_run_learns_the_same_with_and_without_prompt_sharing(tmp_path):
    curves = {}
    for share in (True, False):
        config = load_config("grpo", None, [
            "model=tiny-random", "max_steps=3", "num_generations=4", "generation_batch_size=8",
            "max_completion_length=8", "learning_rate=1e-3", "micro_batch_size=4", "beta=0.04",
            "eval_before=false", "eval_limit=2", f"share_prompt={str(share).lower()}",
            f"output_dir={tmp_path}/{share}",
        ])
        rows: list[dict] = []
        train(config, on_step=lambda step, metrics: rows.append(metrics))
        curves[share] = rows
    for shared, full in zip(curves[True], curves[False]):
        assert shared["reward_mean"] == full["reward_mean"]  # same samples: the weights stayed in step
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert shared[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("micro", [1, 3, 5])
def test_prompts_shared_across_micro_batches_give_the_full_forward_gradients(tiny, rollouts, micro):
    model, _ = tiny
    batch = Batch.from_rollouts(rollouts)
    weights = torch.linspace(-1.0, 1.0, batch.width)

    def grads(prompts):
        model.zero_grad(set_to_none=True)
        values = []
        for start in range(0, len(rollouts), micro):
            part = batch.rows(slice(start, start + micro))
            logp, _ = token_logprobs(model, part, 0.7, share_prompt=prompts is not None, prompts=prompts)
            (logp * part.pad(part.completion_mask.float()) * weights).sum().backward()
            if prompts is not None:
                prompts.release(start + micro)
            values.append(logp.detach())
        if prompts is not None:
            assert not prompts.held  # every prompt went back through its forward pass
        return torch.cat(values), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared, shared_grads = grads(SharedPrompts(model, rollouts, detach=True))
    full, full_grads = grads(None)
    mask = rollouts.completion_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], atol=2e-5, rtol=1e-5)
    assert shared_grads.keys() == full_grads.keys()
    for name in full_grads:
        scale = float(full_grads[name].abs().max())
        torch.testing.assert_close(shared_grads[name], full_grads[name], atol=2e-5 * scale, rtol=1e-4, msg=name)


def test_a_model_whose_cache_is_not_plain_falls_back_to_full_sequences(tiny, rollouts):
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    batch = Batch.from_rollouts(rollouts).rows(slice(0, 6))
    prompts = SharedPrompts(model, rollouts, detach=True)
    shared, _ = token_logprobs(model, batch, 1.0, prompts=prompts, grad=False)
    assert not prompts.supported and not prompts.held  # a sliding-window cache: full sequences instead
    full, _ = token_logprobs(model, batch, 1.0, share_prompt=False, grad=False)
    assert torch.equal(shared, full)
