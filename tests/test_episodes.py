"""Multi-turn episodes: the model's tokens trained, the environment's never; exact log-probs; faults contained."""

import time

import pytest
import torch

from incentivize.errors import IncentivizeError
from incentivize.rollout import SamplingParams
from incentivize.rollout import episodes
from incentivize.rollout.engine import generate as engine_generate
from incentivize.rollout.episodes import Turn, run_episodes
from incentivize.tasks import load_task
from incentivize.tasks.environments import CORRECTION_INSTRUCTION, SelfCorrection

TOOL_OUTPUT = "TOOL OUTPUT: 1234567"


class Echo:
    """Answers every turn with a fixed message; the reward is the turn's number."""

    def __init__(self):
        self.turn = 0

    def reset(self, example):
        return [{"role": "user", "content": example.question}]

    def step(self, completion):
        self.turn += 1
        return Turn(float(self.turn), TOOL_OUTPUT)


class Broken(Echo):
    def step(self, completion):
        raise RuntimeError("the tool crashed")


class Stuck(Echo):
    def step(self, completion):
        time.sleep(30)


def _episodes(tiny, environments, max_turns=3, **options):
    model, tokenizer = tiny
    examples = load_task("arithmetic").examples("test", len(environments))
    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=3)
    return run_episodes(model, tokenizer, examples, environments, params, max_turns,
                        eos_token_ids=[tokenizer.eos_token_id], **options)


def test_environment_tokens_are_masked_out_and_model_tokens_kept(tiny):
    _, tokenizer = tiny
    result = _episodes(tiny, [Echo(), Echo()])
    rollouts = result.rollouts
    for i in range(2):
        ids, mask = rollouts.completion_ids[i].tolist(), rollouts.completion_mask[i].tolist()
        assert len(result.turn_spans[i]) == 3 and result.turn_rewards[i].tolist() == [1.0, 2.0, 3.0]
        model_tokens = [t for t, m in zip(ids, mask) if m == 1]
        assert model_tokens == [t for start, end in result.turn_spans[i] for t in ids[start:end]]
        for start, end in result.turn_spans[i]:
            assert all(mask[start:end])
        # everything between two model turns is the environment's, and none of it is trained on
        for (_, end), (start, _) in zip(result.turn_spans[i], result.turn_spans[i][1:]):
            between = tokenizer.decode(ids[end:start])
            assert TOOL_OUTPUT in between and not any(mask[end:start])
        assert TOOL_OUTPUT not in tokenizer.decode(model_tokens)
        assert all(rollouts.logprobs[i, k] == 0 for k in range(len(mask)) if mask[k] == 0)


def _early_ends(tiny):
    """End-of-turn ids that end about one turn in eight early, so rows of a batch finish at different steps and the
    engine drops finished rows from its cache mid-turn."""
    _, tokenizer = tiny
    return [tokenizer.eos_token_id, *range(3, len(tokenizer), 8)]


@pytest.mark.parametrize("keep_cache", [True, False])
def test_the_logprobs_are_those_of_a_forward_pass_over_the_whole_conversation(tiny, keep_cache):
    model, tokenizer = tiny
    examples = load_task("arithmetic").examples("test", 6)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    result = run_episodes(model, tokenizer, examples, [Echo() for _ in examples], params, 3,
                          eos_token_ids=_early_ends(tiny), keep_cache=keep_cache, batch_size=4)
    assert len({len(spans) for spans in result.turn_spans}) == 1  # every episode reached its third turn
    assert len({end - start for spans in result.turn_spans for start, end in spans}) > 1  # of different lengths
    rollouts = result.rollouts
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)
    attention = torch.cat([rollouts.prompt_mask, torch.ones_like(rollouts.completion_ids)], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()
    width = rollouts.completion_ids.shape[1]
    token_logits = logits[:, -width - 1 : -1]
    fresh = torch.log_softmax(token_logits, -1).gather(2, rollouts.completion_ids[..., None]).squeeze(2)
    mask = rollouts.completion_mask.bool()
    assert mask.sum() > 0
    torch.testing.assert_close(rollouts.logprobs[mask], fresh[mask], atol=2e-4, rtol=0)


def test_keeping_the_cache_across_turns_samples_the_same_episodes(tiny, monkeypatch):
    model, tokenizer = tiny
    examples = load_task("arithmetic").examples("test", 5)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    prefilled = {True: 0, False: 0}

    def counting(keep):
        def generate(model, prompts, params, *, past=None, **options):
            prefilled[keep] += sum(len(p) - (s.length if s is not None else 0) for p, s in zip(prompts, past or []))
            return engine_generate(model, prompts, params, past=past, **options)
        return generate

    runs = []
    for keep in (True, False):
        monkeypatch.setattr(episodes, "generate", counting(keep))
        runs.append(run_episodes(model, tokenizer, examples, [Echo() for _ in examples], params, 3,
                                 eos_token_ids=_early_ends(tiny), keep_cache=keep, batch_size=3))
        monkeypatch.undo()
    # with the cache, the turns after the first read only what is new: one model token and the environment's
    separators = sum(start - end + 1 for spans in runs[0].turn_spans for (_, end), (start, _) in zip(spans, spans[1:]))
    assert prefilled[True] == int(runs[0].rollouts.prompt_mask.sum()) + separators
    assert prefilled[False] > prefilled[True]
    assert runs[0].texts == runs[1].texts
    torch.testing.assert_close(runs[0].rollouts.logprobs, runs[1].rollouts.logprobs, atol=2e-4, rtol=0)


def test_an_episode_does_not_depend_on_its_batch(tiny):
    alone = _episodes(tiny, [Echo()])
    together = _episodes(tiny, [Echo(), Echo(), Echo()], batch_size=2)
    assert alone.texts[0] == together.texts[0]


def test_an_environment_that_fails_or_hangs_costs_only_its_episode(tiny):
    result = _episodes(tiny, [Echo(), Broken(), Stuck()], timeout_s=0.5)
    assert result.faults[0] is None and "the tool crashed" in result.faults[1] and "longer than 0.5s" in result.faults[2]
    assert len(result.turn_spans[0]) == 3
    assert len(result.turn_spans[1]) == len(result.turn_spans[2]) == 1
    assert torch.isnan(result.turn_rewards[1]).all() and torch.isnan(result.turn_rewards[2]).all()


def test_self_correction_rewards_each_attempt_by_the_verifier(tiny):
    model, tokenizer = tiny
    task = load_task("arithmetic")
    examples = task.examples("test", 2)
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    result = run_episodes(model, tokenizer, examples, [SelfCorrection(task) for _ in examples], params, 2,
                          eos_token_ids=[tokenizer.eos_token_id])
    for k, example in enumerate(examples):
        assert result.turn_rewards[k].tolist() == [float(task.verify(example, t).correct) for t in result.texts[k]]
        (_, end), (start, _) = result.turn_spans[k]
        assert CORRECTION_INSTRUCTION in tokenizer.decode(result.rollouts.completion_ids[k, end:start].tolist())


def test_max_turns_below_one_is_refused(tiny):
    with pytest.raises(IncentivizeError, match="max_turns must be at least 1"):
        _episodes(tiny, [Echo()], max_turns=0)


def test_selecting_rows_keeps_every_turn_of_an_episode(tiny):
    result = _episodes(tiny, [Echo(), Echo()], max_turns=2)
    rollouts = result.rollouts
    picked = rollouts.select([1])
    last_model_token = result.turn_spans[1][-1][1]
    assert picked.completion_ids.shape[1] >= last_model_token
    assert picked.completion_ids[0, :last_model_token].tolist() == rollouts.completion_ids[1, :last_model_token].tolist()
    assert len(picked.completion_token_lists()[0]) == last_model_token
    assert int(picked.completion_lengths[0]) == sum(end - start for start, end in result.turn_spans[1])


def test_the_python_tool_runs_a_block_and_shows_its_output():
    from incentivize.rewards.sandbox import SandboxLimits
    from incentivize.tasks.environments import TOOL_INSTRUCTION, PythonTool

    task = load_task("arithmetic")
    example = task.examples("test", 1)[0]
    env = PythonTool(task, SandboxLimits(timeout_s=2.0))
    messages = env.reset(example)
    assert example.question in messages[-1]["content"] and TOOL_INSTRUCTION in messages[-1]["content"]
    ran = env.step("Let me compute.\n```python\nprint(6 * 7)\n```")
    assert ran.reward == 0.0 and ran.message == "Output:\n42"
    failed = env.step("```python\n1 / 0\n```")
    assert "ZeroDivisionError" in failed.message
    looped = env.step("```python\nwhile True:\n    pass\n```")
    assert looped.reward == 0.0 and "time" in looped.message.lower()
    final = env.step(f"The answer is {example.answer}.")
    assert final.message is None and final.reward == float(task.verify(example, f"The answer is {example.answer}.").correct)


def _record_steps(monkeypatch):
    """The StepData of each RL step, recorded; episode rewards that differ within each group (so that every
    step has something to learn)."""
    from incentivize.trainers import collect as collect_module
    from incentivize.trainers import rl

    seen = []
    original_collect = rl._collect

    def recording(*args, **kwargs):
        seen.append(original_collect(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(collect_module, "episode_rewards", lambda turns, how, alpha: torch.arange(len(turns)) % 3.0)
    monkeypatch.setattr(rl, "_collect", recording)
    return seen


def test_grpo_on_self_correction_episodes_trains_on_the_model_turns_only(tiny, tmp_path, monkeypatch):
    import json

    from incentivize.config import load_config
    from incentivize.trainers import rl

    _, tokenizer = tiny
    seen = _record_steps(monkeypatch)
    config = load_config("grpo", None, [
        "model=tiny-random", "max_steps=2", "num_generations=4", "generation_batch_size=8", "max_completion_length=6",
        "eval_limit=3", "learning_rate=1e-3", "micro_batch_size=4", "environment=self_correction", "max_turns=2",
        f"output_dir={tmp_path}/run", "report_to=none",
    ])
    result = rl.train(config)
    data = seen[0]
    for row in range(len(data)):
        ids = data.rollouts.completion_ids[row].tolist()
        mask = data.rollouts.completion_mask[row].tolist()
        width = len(data.rollouts.completion_token_lists()[row])
        holes = [ids[k] for k in range(width) if mask[k] == 0]
        # every episode had its second turn, and the environment's message is exactly what is not trained on
        assert CORRECTION_INSTRUCTION in tokenizer.decode(holes)
        trained = tokenizer.decode([ids[k] for k in range(width) if mask[k] == 1])
        assert "There might be an error" not in trained
    assert torch.equal(data.rollouts.completion_mask, data.rollouts.completion_mask * (data.rollouts.logprobs != 0))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward/turn_1", "reward/turn_2"} <= set(metrics[0])
    assert metrics[0]["grad_norm"] > 0.0
    assert "self_correct/accuracy@t2" in result.after and "self_correct/delta" in result.before


def test_episode_settings_that_do_not_fit_are_refused():
    from incentivize.config import load_config

    with pytest.raises(IncentivizeError, match="max_turns"):
        load_config("grpo", None, ["environment=self_correction", "max_turns=0"])
    with pytest.raises(IncentivizeError, match="SCoRe's two attempts"):
        load_config("grpo", None, ["environment=python_tool", "episode_reward=shaped"])
    with pytest.raises(IncentivizeError, match="drop num_rollout_workers"):
        load_config("grpo", None, ["environment=python_tool", "num_rollout_workers=2"])


def test_scores_stage_one_trains_the_second_attempt_and_holds_the_first_by_the_kl(tmp_path, monkeypatch):
    from incentivize.config import load_config
    from incentivize.trainers import rl

    captured = []
    original_loss = rl.POLICY_LOSSES.get("ppo")

    def capturing(logp, old_logp, advantages, mask, **options):
        captured.append((advantages.detach().clone(), mask.clone()))
        return original_loss(logp, old_logp, advantages, mask, **options)

    seen = _record_steps(monkeypatch)
    monkeypatch.setattr(rl.POLICY_LOSSES, "get", lambda name: capturing)
    config = load_config("grpo", None, [
        "model=tiny-random", "max_steps=1", "num_generations=4", "generation_batch_size=8", "max_completion_length=6",
        "eval_limit=2", "micro_batch_size=8", "environment=self_correction", "max_turns=2", "beta=0.04",
        "first_turn_beta=0.4", "train_first_turn=false", f"output_dir={tmp_path}/run", "report_to=none",
    ])
    rl.train(config)
    data = seen[0]
    advantages, mask = captured[0]
    turns = rl.turn_numbers(data.turn_spans, mask.shape[1])
    assert torch.all(advantages[turns == 1] == 0)  # no policy gradient on the first attempt
    assert torch.any(advantages[turns == 2] != 0)
    coef = rl._turn_weights(config, data, mask.shape[1])
    assert torch.all(coef[turns == 1] == 0.4) and torch.all(coef[turns == 2] == 0.04)


def test_turn_settings_need_an_environment_and_a_reference():
    from incentivize.config import load_config

    with pytest.raises(IncentivizeError, match="set environment"):
        load_config("grpo", None, ["train_first_turn=false"])
    with pytest.raises(IncentivizeError, match="set beta > 0"):
        load_config("grpo", None, ["environment=self_correction", "first_turn_beta=0.1"])


def test_per_turn_rewards_credit_each_turn_with_its_own_and_the_later_rewards(tmp_path, monkeypatch):
    from incentivize.config import load_config
    from incentivize.trainers import collect as collect_module
    from incentivize.trainers import rl

    original = collect_module.run_episodes

    def patterned(*args, **kwargs):  # turn rewards by row: (r1, r2) = (row % 2, row // 2 % 2)
        result = original(*args, **kwargs)
        rows = torch.arange(len(result.turn_rewards)).float()
        result.turn_rewards = torch.stack([rows % 2, (rows // 2) % 2], dim=1)
        return result

    captured, seen = [], []
    original_loss, original_collect = rl.POLICY_LOSSES.get("ppo"), rl._collect
    monkeypatch.setattr(collect_module, "run_episodes", patterned)
    monkeypatch.setattr(rl.POLICY_LOSSES, "get", lambda name: lambda logp, old, adv, mask, **o: (
        captured.append(adv.detach().clone()) or original_loss(logp, old, adv, mask, **o)))
    monkeypatch.setattr(rl, "_collect", lambda *a, **k: seen.append(original_collect(*a, **k)) or seen[-1])
    config = load_config("grpo", None, [
        "model=tiny-random", "max_steps=1", "num_generations=4", "generation_batch_size=4", "max_completion_length=5",
        "eval_limit=2", "micro_batch_size=4", "environment=self_correction", "max_turns=2", "episode_reward=per_turn",
        "advantage=grpo_process", "eval_before=false", f"output_dir={tmp_path}/run", "report_to=none",
    ])
    rl.train(config)
    data, advantages = seen[0], captured[0]
    # the group's eight turn rewards (0,0), (1,0), (0,1), (1,1): mean 1/2, Bessel std sqrt(8/7 * 1/4)
    std = (2 / 7) ** 0.5
    z = {0.0: -0.5 / (std + 1e-4), 1.0: 0.5 / (std + 1e-4)}
    turns = rl.turn_numbers(data.turn_spans, advantages.shape[1])
    for row in range(4):
        r1, r2 = float(row % 2), float(row // 2 % 2)
        assert advantages[row][turns[row] == 1].tolist() == pytest.approx([z[r1] + z[r2]] * int((turns[row] == 1).sum()))
        assert advantages[row][turns[row] == 2].tolist() == pytest.approx([z[r2]] * int((turns[row] == 2).sum()))
    with pytest.raises(IncentivizeError, match="per_turn credits each turn"):
        load_config("grpo", None, ["environment=self_correction", "episode_reward=per_turn"])
