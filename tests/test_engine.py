import pytest
import torch

from incentivize.errors import IncentivizeError
from incentivize.rollout import SamplingParams, generate
from incentivize.tasks import load_task, render_prompt


def _prompts(tokenizer, count=4):
    task = load_task("arithmetic")
    return [render_prompt(tokenizer, task.messages(e)) for e in task.examples("test", count)]


def _run(tiny, prompts, eos=None, **params):
    model, tokenizer = tiny
    return generate(
        model, prompts, SamplingParams(**params),
        eos_token_ids=eos or [tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id, decode=tokenizer.decode,
    )


def _forward_logprobs(model, rollouts, temperature):
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    width = rollouts.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, width - 1 : -1] / temperature, dim=-1)
    return logp.gather(2, rollouts.completion_ids[..., None]).squeeze(2) * rollouts.completion_mask


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 50, 0.9)])
def test_sampling_logprobs_match_a_separate_forward_pass(tiny, temperature, top_k, top_p):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 3)
    prompts[1] = prompts[1][:-7]  # unequal lengths exercise left padding
    rollouts = _run(tiny, prompts, n=4, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=24, seed=3)
    expected = _forward_logprobs(model, rollouts, temperature)
    assert rollouts.logprobs.shape == rollouts.completion_ids.shape
    torch.testing.assert_close(rollouts.logprobs, expected, atol=2e-4, rtol=1e-4)
    assert (rollouts.logprobs[rollouts.completion_mask == 0] == 0).all()


def test_samples_of_a_prompt_are_contiguous(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 3)
    rollouts = _run(tiny, prompts, n=5, temperature=0.0, max_new_tokens=8)
    assert rollouts.prompt_index.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    rows = rollouts.completion_token_lists()
    assert all(rows[i] == rows[0] for i in range(5))  # greedy: one prompt, five equal copies
    for i in range(15):
        real = rollouts.prompt_ids[i][rollouts.prompt_mask[i].bool()].tolist()
        assert real == prompts[i // 5]


def test_batched_greedy_equals_one_prompt_at_a_time(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 4)
    prompts[2] = prompts[2][:30]
    batched = _run(tiny, prompts, temperature=0.0, max_new_tokens=12).completion_token_lists()
    alone = [_run(tiny, [p], temperature=0.0, max_new_tokens=12).completion_token_lists()[0] for p in prompts]
    assert batched == alone


def test_eos_is_inside_the_mask_and_padding_is_not(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 2)
    free = _run(tiny, prompts, temperature=0.0, max_new_tokens=10)
    third_token = free.completion_ids[0, 2].item()  # make row 0's third greedy token its EOS
    rollouts = _run(tiny, prompts, temperature=0.0, max_new_tokens=10, eos=[third_token])
    first = rollouts.completion_token_lists()[0]
    stop_at = first.index(third_token)
    assert rollouts.finish_reasons[0] == "eos"
    assert rollouts.completion_mask[0].tolist()[: stop_at + 1] == [1] * (stop_at + 1)
    assert rollouts.completion_mask[0, stop_at + 1 :].sum() == 0
    assert (rollouts.completion_ids[0, stop_at + 1 :] == tokenizer.pad_token_id).all()
    assert rollouts.completion_lengths[0] == stop_at + 1


def test_stop_string_ends_the_sequence_and_stays_in_the_completion(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 1)
    free = _run(tiny, prompts, temperature=0.0, max_new_tokens=16)
    text = tokenizer.decode(free.completion_token_lists()[0])
    stop = text[3:6]
    assert stop, "the random model should produce some text"
    stopped = _run(tiny, prompts, temperature=0.0, max_new_tokens=16, stop=[stop])
    ids = stopped.completion_token_lists()[0]
    assert stopped.finish_reasons[0] == "stop"
    assert stop in tokenizer.decode(ids)
    assert stop not in tokenizer.decode(ids[:-1])  # it stopped at the first token that completed it
    assert ids == free.completion_token_lists()[0][: len(ids)]


def test_length_finish_reason_and_seed_determinism(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 2)
    a = _run(tiny, prompts, n=3, temperature=1.0, max_new_tokens=6, seed=11)
    b = _run(tiny, prompts, n=3, temperature=1.0, max_new_tokens=6, seed=11)
    c = _run(tiny, prompts, n=3, temperature=1.0, max_new_tokens=6, seed=12)
    assert a.completion_token_lists() == b.completion_token_lists()
    assert a.completion_token_lists() != c.completion_token_lists()
    assert set(a.finish_reasons) <= {"length", "eos"}
    assert a.completion_ids.shape[1] <= 6


def test_top_k_one_is_greedy(tiny):
    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 2)
    greedy = _run(tiny, prompts, temperature=0.0, max_new_tokens=8).completion_token_lists()
    top1 = _run(tiny, prompts, temperature=1.3, top_k=1, max_new_tokens=8, seed=5).completion_token_lists()
    assert greedy == top1


def test_bad_calls_are_clear(tiny):
    model, tokenizer = tiny
    with pytest.raises(IncentivizeError, match="empty prompt"):
        generate(model, [[]], SamplingParams(), eos_token_ids=[2], pad_token_id=2)
    with pytest.raises(IncentivizeError, match="decode"):
        generate(model, [[1, 2]], SamplingParams(stop=["x"]), eos_token_ids=[2], pad_token_id=2)


def test_select_and_concat_keep_rows_intact(tiny):
    from incentivize.rollout import Rollouts

    _, tokenizer = tiny
    prompts = _prompts(tokenizer, 3)
    a = _run(tiny, prompts[:2], n=2, temperature=1.0, max_new_tokens=6, seed=1)
    b = _run(tiny, [prompts[2][:20]], n=2, temperature=1.0, max_new_tokens=9, seed=2)
    both = Rollouts.concat([a, b])
    assert len(both) == 6 and both.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.completion_token_lists() == a.completion_token_lists() + b.completion_token_lists()
    for i, part, j in [(1, a, 1), (4, b, 0)]:
        assert both.prompt_ids[i][both.prompt_mask[i].bool()].tolist() == part.prompt_ids[j][part.prompt_mask[j].bool()].tolist()
        torch.testing.assert_close(both.logprobs[i, : part.logprobs.shape[1]], part.logprobs[j])
    picked = both.select([4, 5])
    assert picked.completion_token_lists() == b.completion_token_lists()
    assert picked.prompt_ids.shape[1] == 20  # the padding only the other rows needed is gone


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7)])
def test_sampler_draws_from_the_softmax_it_reports(temperature, top_k, top_p):
    from incentivize.rollout.engine import _sample

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, float("-inf")]]).repeat(40_000, 1)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    chosen, logp = _sample(logits, params, torch.rand(len(logits), generator=torch.Generator().manual_seed(0)))
    full = torch.log_softmax(logits[0] / temperature, dim=-1)
    torch.testing.assert_close(logp, full[chosen])
    allowed = full.exp()
    if top_k:
        allowed[torch.argsort(full, descending=True)[top_k:]] = 0.0
    if top_p < 1.0:  # the smallest prefix of the sorted tokens that reaches top_p: here the first two
        allowed[2:] = 0.0
    expected = allowed / allowed.sum()
    observed = torch.bincount(chosen, minlength=6).float() / len(chosen)
    assert observed[5] == 0 and (observed[expected == 0] == 0).all()
    torch.testing.assert_close(observed, expected, atol=0.01, rtol=0.0)  # 40k draws: 3 standard errors < 0.008


def test_preallocated_cache_layer_acts_like_a_growing_one():
    from incentivize.models.cache import PreallocatedLayer

    first_k, first_v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = PreallocatedLayer(first_k, first_v, capacity=6, repeats=2)  # rows 0,0,1,1
    expected_k = first_k.repeat_interleave(2, dim=0)
    for _ in range(3):  # the third step outgrows the buffer and must grow it
        new_k, new_v = torch.randn(4, 3, 1, 4), torch.randn(4, 3, 1, 4)
        keys, values = layer.update(new_k, new_v)
        expected_k = torch.cat([expected_k, new_k], dim=2)
    assert torch.equal(keys, expected_k) and layer.get_seq_length() == 8
    assert values.shape == (4, 3, 8, 4)
    layer.batch_select_indices(torch.tensor([3, 0]))
    assert torch.equal(layer.keys, expected_k[[3, 0]])
    layer.crop(-2)
    assert torch.equal(layer.keys, expected_k[[3, 0], :, :6])


def test_a_prompts_samples_do_not_depend_on_the_prompts_beside_it(tiny):
    """Per-prompt seeds: sampling prompts one by one, or split between processes, gives the same
    completions as sampling them together."""
    from incentivize.rollout.engine import prompt_seeds

    model, tokenizer = tiny
    prompts = [tokenizer(text)["input_ids"] for text in ("one two", "three four five six", "seven")]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=7)
    together = generate(model, prompts, params, eos_token_ids=[tokenizer.eos_token_id],
                        pad_token_id=tokenizer.pad_token_id).completion_token_lists()
    seeds = prompt_seeds(7, 3)
    alone = [ids for i, prompt in enumerate(prompts)
             for ids in generate(model, [prompt], params, eos_token_ids=[tokenizer.eos_token_id],
                                 pad_token_id=tokenizer.pad_token_id, seeds=[seeds[i]]).completion_token_lists()]
    assert together == alone
    assert len({tuple(ids) for ids in together}) > 3  # really sampled: the rows differ
