"""The AI judge on tiny-random: verdicts read from label probabilities, position bias cancelled, batching
that changes nothing, and the judge as an RL reward, a labeller of preference pairs and of ORM solutions."""

import json
import subprocess
import sys

import pytest
import torch

from incentivize.config import load_config, load_preference_config, load_reward_config
from incentivize.errors import IncentivizeError
from incentivize.models import load
from incentivize.rewards.judge import Judge, rubric_problem
from incentivize.tasks import load_task
from incentivize.trainers.collect import build_scorer

QUESTIONS = ["What is 2 + 3?", "What is 7 * 6?", "What is 40 - 15?"]
ANSWERS = ["2 + 3 = 5\nAnswer: 5", "7 * 6 = 48\nAnswer: 48", "Answer: 25"]
OTHERS = ["Answer: 6", "7 * 6 = 42\nAnswer: 42", "40 - 15 = 35\nAnswer: 35"]


@pytest.fixture(scope="module")
def judge():
    model, tokenizer = load("tiny-random")
    return Judge(model, tokenizer, name="tiny-random", batch_size=2)


def test_a_grade_is_the_yes_probability_renormalised_over_the_two_labels(judge):
    from incentivize.tasks.base import render_prompt

    text = judge.grade_rubric.format(question=QUESTIONS[1], answer=ANSWERS[1])
    ids = torch.tensor([render_prompt(judge.tokenizer, [{"role": "user", "content": text}])])
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0, -1]
    yes, no = judge.grade_ids
    expected = torch.softmax(logits[[yes, no]], dim=-1)[0]
    assert judge.grade(QUESTIONS[1:2], ANSWERS[1:2])[0] == pytest.approx(float(expected), abs=1e-5)


def test_batches_with_left_padding_give_the_verdicts_of_one_at_a_time(judge):
    together = judge.grade(QUESTIONS, ANSWERS)  # batch_size 2: rows of different lengths share a batch
    alone = [judge.grade([q], [a])[0] for q, a in zip(QUESTIONS, ANSWERS)]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(round(g, 6) for g in together)) > 1  # the answers are told apart, not one constant


def test_comparing_in_both_orders_cancels_the_position(judge):
    forward = judge.compare(QUESTIONS, ANSWERS, OTHERS)
    backward = judge.compare(QUESTIONS, OTHERS, ANSWERS)
    assert [f + b for f, b in zip(forward, backward)] == pytest.approx([1.0] * 3, abs=1e-5)
    assert all(0.0 < f < 1.0 for f in forward)


def test_rubrics_and_labels_are_checked_with_the_field_named(judge):
    assert rubric_problem("Q: {question} A: {answer}", "grade") is None
    assert "lacks the placeholder(s) {answer}" in rubric_problem("Q: {question}", "grade")
    assert "unknown placeholder(s) {answr}" in rubric_problem("{question} {answer} {answr}", "grade")
    assert "not a format string" in rubric_problem("{question} {answer} {", "grade")
    with pytest.raises(IncentivizeError, match=r"judge_compare_rubric: the rubric lacks the placeholder\(s\) \{answer_b\}"):
        load_config("grpo", None, ["judge_compare_rubric={question} {answer_a}"])
    with pytest.raises(IncentivizeError, match="judge_grade_labels: the label 'Definitely' is 2 tokens"):
        Judge(judge.model, judge.tokenizer, name="tiny-random", grade_labels=("Definitely", "No"))


def test_the_judge_as_an_rl_reward(tmp_path):
    config = load_config("grpo", None, ["model=tiny-random", "rewards=[judge:tiny-random]"])
    task = load_task("arithmetic")
    examples = task.examples("train", 2)
    scorer = build_scorer(config, task)
    scores = scorer(examples, ["p", "p"], ["Answer: 1", "Answer: 2"], torch.tensor([3, 3]))
    grades = scores.components["judge:tiny-random"]
    assert all(0.0 < g < 1.0 for g in grades)
    assert scores.rewards.tolist() == pytest.approx([c + g for c, g in zip(scores.components["correctness"], grades)])


def test_the_judge_labels_self_sampled_pairs(tmp_path):
    from incentivize.trainers.preference import train_preference

    config = load_preference_config("dpo", None, [
        "model=tiny-random", "pairs=self", "labeller=judge", "judge=tiny-random", "judge_confidence=0.5",
        "problems_per_round=3", "samples_per_problem=4", "max_completion_length=8", "batch_size=2",
        "report_to=none", f"output_dir={tmp_path / 'run'}",
    ])
    said = []
    result = train_preference(config, on_event=said.append)
    pairs = [json.loads(line) for line in (result.run_dir / "pairs-round-1.jsonl").read_text().splitlines()]
    assert pairs
    model, tokenizer = load("tiny-random")
    judge = Judge(model, tokenizer)
    questions = [p["prompt"][-1]["content"] for p in pairs]
    task = load_task("arithmetic")
    by_message = {task.user_message(e): e.question for e in task.examples("train", 3)}
    preferred = judge.compare([by_message[q] for q in questions], [p["chosen"] for p in pairs],
                              [p["rejected"] for p in pairs])
    assert all(p >= 0.5 for p in preferred)  # the chosen answer is the one the judge preferred
    assert any("skipped: under two distinct answers or the judge unsure" in s for s in said)
    with pytest.raises(IncentivizeError, match="labeller judge labels pairs the policy samples"):
        load_preference_config("dpo", None, ["data=x.jsonl", "labeller=judge", "judge=tiny-random"])


def test_the_judge_labels_an_orms_solutions(tmp_path):
    from incentivize.rewards.judge import load_judge
    from incentivize.trainers.reward_model import train_reward_model

    config = load_reward_config("orm", None, [
        "model=tiny-random", "labeller=judge", "judge=tiny-random", "num_problems=4", "samples_per_problem=2",
        "max_completion_length=8", "report_to=none", f"output_dir={tmp_path / 'orm'}",
    ])
    said = []
    result = train_reward_model(config, on_event=said.append)
    rows = [json.loads(line) for line in (result.run_dir / "solutions.jsonl").read_text().splitlines()]
    grades = load_judge("tiny-random").grade([r["problem"] for r in rows], [r["completion"] for r in rows])
    assert [r["correct"] for r in rows] == [g >= 0.5 for g in grades]
    assert any("they agree on" in s for s in said)
    with pytest.raises(IncentivizeError, match="labeller judge labels the solutions an orm run samples"):
        load_reward_config("prm", None, ["labeller=judge", "judge=tiny-random"])


def test_eval_selects_by_the_judge_and_reports_each_verifiers_auroc(tmp_path):
    from typer.testing import CliRunner

    from incentivize.cli import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--limit", "2", "--samples", "2",
                                      "--max-new-tokens", "6", "--select", "majority,judge:tiny-random",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert "select/judge" in results["metrics"] and "auroc/judge" in results["metrics"]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(0.0 < r["scores"]["judge"] < 1.0 for r in rows if r["mode"] == "sample")
    bad = subprocess.run([sys.executable, "-m", "incentivize.cli", "eval", "--model", "tiny-random", "--limit", "1",
                          "--samples", "2", "--select", "judge:", "--output", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "judge needs a judge model: judge:MODEL" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args,fact", [
    (["dpo", "--pairs", "self", "--set", "labeller=judge", "--set", "judge=no/such/model"],
     "judge: the judge cannot be loaded: unknown model 'no/such/model'"),
    (["grpo", "--set", "rewards=[judge:tiny-random]", "--set", "judge_grade_rubric=Is {answer} right?"],
     "judge_grade_rubric: the rubric lacks the placeholder(s) {question}"),
    (["orm", "--set", "labeller=judge", "--set", "judge=tiny-random", "--set", "judge_grade_labels=[Definitely, No!]"],
     "judge_grade_labels: the label 'Definitely' is 2 tokens"),
])
def test_bad_judge_settings_are_one_line_exit_2_and_nothing_written(tmp_path, args, fact):
    result = subprocess.run([sys.executable, "-m", "incentivize.cli", "train", *args, "--model", "tiny-random",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and fact in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
