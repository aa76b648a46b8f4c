"""Reward models: losses, step labels, data files, training (ORM, PRM, RM) and scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from incentivize.algorithms.reward_losses import (
    bradley_terry_loss, outcome_loss, step_correct_probability, step_loss, step_score,
)
from incentivize.config import RewardModelConfig, load_reward_config
from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.rewards.reward_model import Verifier, load_verifier, score_head_model
from incentivize.rewards.steps import split_steps, supervised_prefix
from incentivize.tasks import load_task
from incentivize.tasks.encoding import encode
from incentivize.tasks.reward_data import load_pairs, load_step_solutions
from incentivize.trainers.loop import clipped_step
from incentivize.trainers.reward_model import Solution, backward_batch

FIXTURES = Path(__file__).parent / "fixtures"


def test_outcome_loss_falls_as_logits_move_towards_labels_and_respects_the_mask() -> None:
    labels = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    logits = torch.zeros(2, 3, requires_grad=True)
    outcome_loss(logits, labels, mask).backward()
    assert logits.grad is not None
    assert (logits.grad[0, :2] < 0).all() and (logits.grad[1, 1:] > 0).all()  # descent raises row 0, lowers row 1
    assert logits.grad[0, 2] == 0 and logits.grad[1, 0] == 0  # masked positions get nothing
    better = torch.tensor([[2.0, 2.0, -9.0], [9.0, -2.0, -2.0]])
    assert outcome_loss(better, labels, mask) < outcome_loss(torch.zeros(2, 3), labels, mask)
    assert outcome_loss(better, labels, mask, "mse") < outcome_loss(torch.zeros(2, 3), labels, mask, "mse")


def test_step_loss_ignores_unsupervised_steps_and_bradley_terry_prefers_chosen() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    assert torch.isclose(step_loss(logits, torch.tensor([2, -1])), step_loss(logits[:1], torch.tensor([2])))
    assert step_loss(logits, torch.tensor([-1, -1])).item() == 0.0
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])) < bradley_terry_loss(torch.tensor([0.0]), torch.tensor([2.0]))


def test_step_scores_aggregate_as_documented() -> None:
    probs = step_correct_probability(torch.log(torch.tensor([[0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])))
    assert torch.allclose(probs, torch.tensor([0.9, 0.5]))
    assert step_score(probs, "prod").item() == pytest.approx(0.45)
    assert step_score(probs, "min").item() == pytest.approx(0.5)
    assert step_score(probs, "last").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aggregation"):
        step_score(probs, "mean")


def test_arithmetic_step_labels_follow_the_problem() -> None:
    task = load_task("arithmetic", num_ops=2)
    example = task.examples("train", 1)[0]
    assert example.solution is not None
    labels = task.step_labels(example, example.solution)
    assert labels == [2] * len(split_steps(example.solution))  # the reference solution: every step right
    a, op, b, _ = example.solution.splitlines()[0].replace("=", " ").split()
    wrong = example.solution.replace(example.solution.splitlines()[0], f"{a} {op} {b} = 100000", 1)
    labels = task.step_labels(example, wrong)
    assert labels[0] == 0
    assert supervised_prefix(labels)[1:] == [-1] * (len(labels) - 1)


def test_prm800k_loader_takes_chosen_then_human_steps_and_stops_at_the_first_error() -> None:
    solutions = load_step_solutions(FIXTURES / "prm800k_sample.jsonl")
    rows = [json.loads(line) for line in (FIXTURES / "prm800k_sample.jsonl").read_text().splitlines()]
    assert len(solutions) == len(rows)
    wrong, right = solutions[0], solutions[1]
    assert wrong.labels == [1, 0] and wrong.steps[1] == rows[0]["label"]["steps"][1]["completions"][0]["text"]
    assert right.labels == [1, 2, 2, 2]
    assert right.steps[2] == rows[1]["label"]["steps"][2]["completions"][1]["text"]  # the chosen one, not the first
    assert right.steps[3].startswith("Answer:")  # the human completion


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": {"problem": "x"}}', r"bad\.jsonl:2: row has no field 'label'"),
        ('{"question": {"problem": "x"}, "label": {"steps": [{"completions": [{"text": "a", "rating": 5}], '
         '"chosen_completion": 0}]}}', r"bad\.jsonl:2: label\.steps\[0\]: rating must be 1, 0 or -1"),
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ],
)
def test_prm800k_loader_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = (FIXTURES / "prm800k_sample.jsonl").read_text().splitlines()[0]
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(IncentivizeError, match=message):
        load_step_solutions(path)


def test_pairs_loader_checks_fields(tmp_path: Path) -> None:
    assert len(load_pairs(FIXTURES / "pairs.jsonl")) == 12
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(IncentivizeError, match=r"pairs\.jsonl:1: row has no field 'rejected'"):
        load_pairs(path)
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "a"}\n')
    with pytest.raises(IncentivizeError, match="same text"):
        load_pairs(path)


def test_encode_reads_each_step_at_the_token_holding_its_last_character() -> None:
    _, tokenizer = load("tiny-random")
    completion = "12 + 30 = 42\nso far so good\nAnswer: 42"
    encoded = encode(tokenizer, "<|im_start|>user\nhi<|im_end|>\n", completion)
    steps = split_steps(completion)
    assert len(encoded.step_positions) == len(steps)
    assert encoded.step_positions == sorted(encoded.step_positions)
    for position, step in zip(encoded.step_positions, steps):
        assert step.text[-1] in tokenizer.decode([encoded.ids[position]])
    assert encoded.last == len(encoded.ids) - 1 and encoded.step_positions[-1] == encoded.last


def _solutions(tokenizer: object) -> list[Solution]:
    out = []
    for i in range(8):
        correct = i % 2 == 0
        answer = 15 if correct else 99
        out.append(Solution(f"p{i}", "<|im_start|>user\nCalculate 12 + 3.<|im_end|>\n<|im_start|>assistant\n",
                            f"12 + 3 = {answer}\nAnswer: {answer}", correct, [2, 2] if correct else [0, -1]))
    return out


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_a_few_updates_teach_the_head_to_tell_right_from_wrong(kind: str) -> None:
    torch.manual_seed(0)
    lm, tokenizer = load("tiny-random")
    model = score_head_model(lm, kind)
    config = RewardModelConfig(kind=kind, model="tiny-random", learning_rate=3e-3, batch_size=8, micro_batch_size=4,
                               lm_loss_weight=0.5 if kind == "orm" else 0.0, target="final")
    # (token-level targets could not fall this far: right and wrong solutions share their first tokens)
    lm_head = model.base_model.get_input_embeddings().weight
    items = _solutions(tokenizer)
    verifier = Verifier(model, tokenizer, {"kind": kind})
    before = verifier.score([s.prompt for s in items], [s.completion for s in items])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    losses = []
    for _ in range(25):
        model.train()
        optimizer.zero_grad()
        losses.append(backward_batch(config, model, lm_head if kind == "orm" else None, tokenizer, items)["loss"])
        clipped_step(optimizer, list(model.parameters()), config.max_grad_norm)
    model.eval()
    after = verifier.score([s.prompt for s in items], [s.completion for s in items])
    assert losses[-1] < 0.5 * losses[0]
    assert max(before) - min(before) < 0.05  # a zero head starts undecided
    assert min(a for a, s in zip(after, items) if s.correct) > max(a for a, s in zip(after, items) if not s.correct)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "incentivize.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("orm", ["--set", "num_problems=6", "--set", "samples_per_problem=2", "--set", "max_completion_length=12",
                 "--set", "lm_loss_weight=1"]),
        ("prm", ["--data", str(FIXTURES / "prm800k_sample.jsonl")]),
        ("prm", ["--set", "num_problems=4", "--set", "samples_per_problem=2", "--set", "max_completion_length=12"]),
        ("rm", ["--data", str(FIXTURES / "pairs.jsonl")]),
    ],
)
def test_train_reward_model_cli_writes_a_transformers_checkpoint(tmp_path: Path, kind: str, extra: list[str]) -> None:
    from transformers import AutoModelForTokenClassification

    out = tmp_path / kind
    result = _cli("train", kind, "--model", "tiny-random", "--output-dir", str(out), *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reward model in" in result.stdout + result.stderr
    model = AutoModelForTokenClassification.from_pretrained(out / "final")
    assert model.config.num_labels == (3 if kind == "prm" else 1)
    verifier = load_verifier(out / "final")
    assert verifier.kind == kind
    scores = verifier.score(["<|im_start|>user\nhi<|im_end|>\n"] * 2, ["1 + 1 = 2\nAnswer: 2", "no idea"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    if kind == "prm":
        steps = verifier.step_scores(["<|im_start|>user\nhi<|im_end|>\n"], ["1 + 1 = 2\nAnswer: 2"])
        assert len(steps[0]) == 2 and scores[0] == pytest.approx(steps[0][0] * steps[0][1], rel=1e-5)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all("loss" in m for m in metrics)
    if kind != "rm":  # the labelled solutions are kept, and a later run trains on them without sampling
        solutions = [json.loads(line) for line in (out / "solutions.jsonl").read_text().splitlines()]
        assert solutions and set(solutions[0]) == {"problem", "prompt", "completion", "correct", "steps"}
        reuse = _cli("train", "orm", "--model", "tiny-random", "--data", str(out / "solutions.jsonl"),
                     "--output-dir", str(tmp_path / "reuse"), cwd=tmp_path)
        assert reuse.returncode == 0, reuse.stderr
        assert "sampling" not in reuse.stderr + reuse.stdout
    again = _cli("train", kind, "--model", "tiny-random", "--output-dir", str(out), *extra, cwd=tmp_path)
    assert again.returncode != 0 and "already holds a run" in again.stdout + again.stderr  # nothing overwritten


def test_reward_model_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    result = _cli("train", "rm", "--model", "tiny-random", cwd=tmp_path)
    assert result.returncode != 0 and "needs preference pairs" in result.stderr and "Traceback" not in result.stderr
    result = _cli("train", "prm", "--model", "tiny-random", "--task", "gsm8k", "--set", "num_problems=1", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    with pytest.raises(IncentivizeError, match="did you mean 'aggregation'"):
        load_reward_config("prm", None, ["agregation=min"])
    with pytest.raises(IncentivizeError, match="does not exist"):
        load_verifier(tmp_path / "nowhere")


def test_encode_truncates_the_prompt_start_first() -> None:
    _, tokenizer = load("tiny-random")
    prompt, completion = "<|im_start|>user\nCalculate 12 + 3.<|im_end|>\n", "12 + 3 = 15\nAnswer: 15"
    full = encode(tokenizer, prompt, completion)
    kept = full.last + 1 - full.completion_start + 2
    short = encode(tokenizer, prompt, completion, max_length=kept)
    assert short.ids == full.ids[-kept:] and short.completion_start == 2
    assert [p - 2 for p in short.step_positions] == [p - full.completion_start for p in full.step_positions]


def test_step_end_tokens_find_the_token_that_completes_each_line() -> None:
    from incentivize.rewards.steps import step_end_tokens

    _, tokenizer = load("tiny-random")
    text = "12 + 30 = 42\n\nso far so good\nAnswer: 42"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = step_end_tokens(lambda part: tokenizer.decode(part), ids, text)
    assert len(ends) == 3 and ends[-1] == len(ids) - 1
    for end, step in zip(ends, split_steps(text)):
        assert tokenizer.decode(ids[: end + 1]).rstrip("\n").endswith(step.text)
        assert not tokenizer.decode(ids[:end]).rstrip("\n").endswith(step.text)


def test_grpo_with_prm_step_rewards_runs_from_the_command_line(tmp_path: Path) -> None:
    from incentivize.rewards import load_reward_function

    trained = _cli("train", "prm", "--model", "tiny-random", "--data", str(FIXTURES / "prm800k_sample.jsonl"),
                   "--output-dir", "prm", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    reward = load_reward_function(f"prm:{tmp_path / 'prm' / 'final'}")
    from incentivize.eval.monitor import proxies
    assert proxies([reward]) == {"prm": True}  # the sophistry monitor watches it
    prompts, completions = ["<|im_start|>user\nq<|im_end|>\n"] * 2, ["1 + 1 = 2\nAnswer: 2", "no"]
    assert reward(prompts, completions) == pytest.approx(load_verifier(tmp_path / "prm" / "final").score(prompts, completions))
    with pytest.raises(IncentivizeError, match="holds a prm, not a orm"):
        load_reward_function(f"orm:{tmp_path / 'prm' / 'final'}")

    result = _cli("train", "grpo", "--model", "tiny-random", "--reward", "prm:prm/final", "--set", "advantage=grpo_process",
                  "--set", "max_steps=2", "--set", "generation_batch_size=8", "--set", "max_completion_length=16",
                  "--set", "eval_limit=2", "--output-dir", "rl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["reward/prm"] is not None for m in metrics)
    assert any(abs(m["loss"]) > 0 for m in metrics)  # step rewards differ, so the advantages are not all zero
    refused = _cli("train", "grpo", "--model", "tiny-random", "--set", "advantage=grpo_process", cwd=tmp_path)
    assert refused.returncode == 2 and "--reward prm:DIR" in refused.stderr

    # hardened: prose counts as neither right nor wrong, and the verdict is one more step at each completion's end
    from incentivize.config import load_config
    from incentivize.tasks import load_task
    from incentivize.trainers.collect import build_scorer, collect
    from incentivize.trainers.policy import build_models
    from incentivize.trainers.sampler import PromptSampler

    config = load_config("grpo", None, ["model=tiny-random", f"rewards=[prm:{tmp_path / 'prm' / 'final'}]",
                                        "advantage=grpo_process", "generation_batch_size=8", "max_completion_length=16",
                                        "process_neutral=neither", "process_outcome_weight=2"])
    task = load_task("arithmetic")
    examples = task.examples("train", 8)
    scorer = build_scorer(config, task)
    assert scorer.step_source.verifier.neutral == "neither"
    data = collect(config, build_models(config), task, examples, PromptSampler(8, 0), scorer, {}, 1)
    last = (~torch.isnan(data.step_scores)).long().cumsum(1).argmax(1)  # each row's last step: the outcome
    rows = torch.arange(len(last))
    assert data.step_scores[rows, last].tolist() == (2.0 * data.scores.correct.float()).tolist()
    assert data.step_ends[rows, last].tolist() == (data.rollouts.completion_lengths - 1).tolist()


def test_process_step_tensors_put_each_step_reward_at_its_last_token() -> None:
    from incentivize.rollout import Rollouts
    from incentivize.trainers.collect import step_tensors as _step_tensors

    _, tokenizer = load("tiny-random")
    texts = ["7 + 5 = 12\nAnswer: 12", "Answer: 3"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    rollouts = Rollouts(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), ids, mask,
                        torch.zeros(2, width), torch.tensor([0, 1]), ["eos", "eos"], 0)
    scores, ends = _step_tensors(tokenizer, rollouts, texts, [[0.9, 0.2], [0.4]])
    assert scores.shape == ends.shape == (2, 2)
    assert scores[0].tolist() == pytest.approx([0.9, 0.2]) and scores[1, 0].item() == pytest.approx(0.4)
    assert torch.isnan(scores[1, 1]) and ends[1, 1].item() == -1
    assert ends[0, 1].item() == len(rows[0]) - 1 and ends[1, 0].item() == len(rows[1]) - 1
    assert tokenizer.decode(rows[0][: ends[0, 0] + 1]).endswith("12")
