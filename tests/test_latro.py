"""LaTRO: the self-reward, the truncation penalty and the answer term by hand; rationales with the gold answer
appended; the learner's answer term; the run end to end on a free-text file without a verifier; bad input."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from incentivize.algorithms.advantages import AdvantageInputs, compute_advantages
from incentivize.algorithms.latro import answer_nll, penalize_truncated, self_rewards
from incentivize.config import load_config
from incentivize.errors import IncentivizeError
from incentivize.rewards.verify import answers_match
from incentivize.rollout import SamplingParams
from incentivize.tasks import load_task, render_prompt
from incentivize.trainers.policy import Batch, token_logprobs
from incentivize.trainers.rationales import sample_rationales


def test_self_reward_sum_and_mean_over_the_answer_tokens_by_hand():
    logps = torch.tensor([[-0.3, -1.2, -0.1, -2.0, 0.0], [-0.7, -0.2, -0.4, 0.0, 0.0]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    assert self_rewards(logps, mask, "sum").tolist() == pytest.approx([-2.1, -0.6])
    assert self_rewards(logps, mask, "mean").tolist() == pytest.approx([-1.05, -0.3])
    assert math.isnan(float(self_rewards(logps, torch.zeros_like(mask))[0]))  # no answer: no reward


def test_a_truncated_rationale_gets_twice_the_mean_of_the_finished_ones():
    rewards = torch.tensor([-1.0, -2.0, -9.0, -3.0])
    truncated = torch.tensor([False, False, True, False])
    assert penalize_truncated(rewards, truncated).tolist() == pytest.approx([-1.0, -2.0, -4.0, -3.0])
    assert penalize_truncated(rewards, truncated, factor=3.0)[2] == pytest.approx(-6.0)
    everything = torch.tensor([True, True, True, True])  # nothing finished: the mean of them all
    assert penalize_truncated(rewards, everything).tolist() == pytest.approx([-7.5] * 4)


def test_rloo_advantages_of_latro_rewards_with_the_kl_on_the_rationale_by_hand():
    # K = 3 rationales of one question; r_k = log pi(y*|x,z_k) - beta * sum_t (log pi - log pi_ref) on z_k's tokens
    answer = torch.tensor([-1.0, -4.0, -2.5])
    kl = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.0, 0.0], [-0.1, 0.3, 0.0]])  # per rationale token
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    beta = 0.5
    # rewards -1 - 0.5 * 0.3 = -1.15, -4, -2.5 - 0.5 * 0.2 = -2.6; each minus the mean of the other two
    expected = [-1.15 + 3.3, -4.0 + 1.875, -2.6 + 2.575]
    out = compute_advantages("rloo", AdvantageInputs(scores=answer, mask=mask, group_size=3, kl=kl * mask, beta=beta))
    assert out.advantages[:, 0].tolist() == pytest.approx(expected)
    assert out.advantages[0, 2] == 0  # nothing on masked tokens


def test_answer_nll_is_minus_the_summed_answer_log_likelihood():
    logps = torch.tensor([[-0.5, -1.5, -0.25]], requires_grad=True)
    loss = answer_nll(logps, torch.tensor([[0, 1, 1]]))
    assert loss.tolist() == [1.75]
    loss.sum().backward()
    assert logps.grad.tolist() == [[0.0, -1.0, -1.0]]


@pytest.fixture(scope="module")
def rationales(tiny):
    model, tokenizer = tiny
    task = load_task("arithmetic")
    examples = task.examples("train", 3)
    prompts = [render_prompt(tokenizer, task.messages(e)) for e in examples]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=5)
    # a marker the random model writes often, so that some rationales stop at it and others do not
    return examples, sample_rationales(model, tokenizer, prompts, [e.answer for e in examples], params, "ing")


def test_each_rationale_is_followed_by_its_gold_answer(tiny, rationales):
    _, tokenizer = tiny
    examples, result = rationales
    rollouts = result.rollouts
    reasons = set(rollouts.finish_reasons)
    assert "stop" in reasons and reasons - {"stop"}  # both kinds are covered
    for row, ids in enumerate(rollouts.completion_token_lists()):
        mask, answer = rollouts.completion_mask[row, : len(ids)], result.answer_mask[row, : len(ids)]
        answer_ids = [t for t, a in zip(ids, answer.tolist()) if a]
        assert tokenizer.decode(answer_ids).strip() == examples[row // 4].answer
        assert ids[-len(answer_ids):] == answer_ids  # the answer closes the completion
        assert tokenizer.eos_token_id not in ids  # no end of turn before the answer
        text = tokenizer.decode(ids[: len(ids) - len(answer_ids)])
        assert "ing" in text  # sampled up to the marker, or the marker appended
        if rollouts.finish_reasons[row] != "stop":  # the appended marker is neither rationale nor answer
            assert mask.tolist().count(0) > 0
        assert bool(result.truncated[row]) == (rollouts.finish_reasons[row] == "length")


def test_the_answer_log_probs_are_those_of_a_forward_pass(tiny, rationales):
    model, _ = tiny
    _, result = rationales
    fresh, _ = token_logprobs(model, Batch.from_rollouts(result.rollouts), 1.0, grad=False)
    answer = result.answer_mask.bool()
    torch.testing.assert_close(result.rollouts.logprobs[answer], fresh[answer], atol=1e-4, rtol=0)
    sampled = result.rollouts.completion_mask.bool() & ~answer  # the rationale keeps the engine's log-probs
    torch.testing.assert_close(result.rollouts.logprobs[sampled], fresh[sampled], atol=2e-4, rtol=0)


def _latro_config(tmp_path, *extra):
    return load_config("latro", None, [
        "model=tiny-random", "max_steps=1", "num_rationales=4", "generation_batch_size=8", "max_rationale_tokens=8",
        "eval_limit=2", "learning_rate=1e-3", "answer_marker=e", f"output_dir={tmp_path}/run", *extra,
    ])


def _learner_step(config):
    from incentivize.rewards.scoring import Scorer
    from incentivize.trainers.policy import build_models
    from incentivize.trainers.rl import Learner, _collect
    from incentivize.trainers.sampler import PromptSampler

    task = load_task("arithmetic")
    examples = task.examples("train", 10)
    models = build_models(config)
    data = _collect(config, models, task, examples, PromptSampler(len(examples), 0), Scorer(task, []), {}, step=1)
    data.scores.rewards[:] = -1.0  # every rationale equally good: no policy gradient, only the answer term
    before = {n: p.detach().clone() for n, p in models.policy.named_parameters()}
    stats = Learner(config, models).step(data)
    moved = any(not torch.equal(p, before[n]) for n, p in models.policy.named_parameters())
    return data, stats, moved, models


def test_the_answer_term_alone_trains_the_gold_answer_and_its_weight_zero_trains_nothing(tmp_path):
    data, stats, moved, models = _learner_step(_latro_config(tmp_path, "beta=0", "answer_loss_weight=0"))
    assert not moved and stats["answer_nll"] > 0
    data, stats, moved, models = _learner_step(_latro_config(tmp_path, "beta=0", "answer_loss_weight=1"))
    assert moved
    after, _ = token_logprobs(models.policy, Batch.from_rollouts(data.rollouts), 1.0, grad=False)
    mask = data.answer_mask.bool()
    assert float(after[mask].sum()) > float(data.rollouts.logprobs[mask].sum())  # the gold answer became likelier


def test_free_text_answers_match_after_normalisation():
    assert answers_match("thursday.", "Thursday") and answers_match("The Thursday", "thursday")
    assert not answers_match("Friday", "Thursday") and not answers_match(None, "Thursday")


def test_latro_runs_from_the_command_line_on_a_free_text_file(tmp_path, fixtures_dir):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "incentivize.cli", "train", "latro", "--model", "tiny-random", "--task", "jsonl",
         "--data", str(fixtures_dir / "weekdays.jsonl"), "--prompt-field", "question", "--answer-field", "answer",
         "--output-dir", str(out), "--set", "max_steps=1", "--set", "num_rationales=2", "--set",
         "generation_batch_size=4", "--set", "max_rationale_tokens=8", "--set", "eval_limit=3", "--set",
         "task_options.holdout=0.2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for label in ("before", "after"):
        assert summary[label]["latro/gold_logprob"] < 0 and "greedy_accuracy" in summary[label]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "answer_nll" in row and "reward/self_reward" in row
    assert "of the rationales reached max_completion_length" in result.stderr  # 8 tokens rarely reach the marker
    test = load_task("jsonl", data=str(fixtures_dir / "weekdays.jsonl"), prompt_field="question", holdout=0.2)
    held_out = {e.question for e in test.examples("test")}
    assert 30 < len(held_out) < 90 and not held_out & {e.question for e in test.examples("train")}


@pytest.mark.parametrize("extra, message", [
    (["num_rationales=1"], "num_rationales (num_generations) must be at least 2"),
    (["environment=self_correction"], "drop environment"),
    (["num_rationales=4", "num_generations=4"], "num_rationales is another name of num_generations"),
])
def test_bad_latro_settings_are_refused_in_one_line(tmp_path, extra, message):
    with pytest.raises(IncentivizeError, match=re.escape(message)):
        _latro_config(tmp_path, *extra)


def test_a_gold_answer_that_tokenizes_to_nothing_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(IncentivizeError, match="tokenizes to nothing"):
        sample_rationales(model, tokenizer, [[1, 2, 3]], ["   "], SamplingParams(max_new_tokens=2), "Answer:")
