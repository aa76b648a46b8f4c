"""`eval --self-correct`: two attempts, the second reading the first, and SCoRe's metrics."""

import copy
import json

import pytest

from incentivize.errors import IncentivizeError
from incentivize.eval.runner import EvalSettings, SampleRecord
from incentivize.eval.self_correct import Attempts, self_correct, self_correction_metrics
from incentivize.rollout.episodes import turn_separator
from incentivize.tasks.environments import CORRECTION_INSTRUCTION as INSTRUCTION
from incentivize.tasks import load_task
from test_cli import _assert_one_line_error, _cli


def _record(correct, completion="x"):
    return SampleRecord("p", "greedy", 0, "prompt", completion, None, "1", correct, "stop", 1)


def test_the_five_quantities_and_the_edit_measures_by_hand():
    pairs = [
        Attempts("a", 0, _record(False, "7"), _record(True, "8")),  # wrong -> right
        Attempts("b", 0, _record(True, "5"), _record(False, "6")),  # right -> wrong
        Attempts("c", 0, _record(True, "abcd"), _record(True, " abcd\n")),  # kept, whitespace aside
        Attempts("d", 0, _record(False, "ab"), _record(False, "ab")),  # no edit
    ]
    m = self_correction_metrics(pairs)
    assert m["accuracy@t1"] == 0.5 and m["accuracy@t2"] == 0.5 and m["delta"] == 0.0
    assert m["delta_i_to_c"] == 0.25 and m["delta_c_to_i"] == 0.25
    assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
    assert m["unchanged"] == 0.5
    # difflib ratios: 0, 0, 8/10 ("abcd" in " abcd\n"), 1
    assert m["similarity"] == pytest.approx((0 + 0 + 0.8 + 1) / 4)


def test_the_second_attempt_reads_the_first_and_the_instruction(tiny):
    model, tokenizer = tiny
    task = load_task("arithmetic")
    examples = task.examples("test", 3)
    settings = EvalSettings(samples=0, max_new_tokens=6, batch_size=2)
    report = self_correct(model, tokenizer, task, examples, settings)
    assert [a.example_id for a in report.attempts] == [e.id for e in examples]
    for pair, example in zip(report.attempts, examples):
        assert pair.first.prompt.count(example.question) == 1
        assert pair.first.completion in pair.second.prompt and INSTRUCTION in pair.second.prompt
        assert pair.second.prompt.index(pair.first.completion) < pair.second.prompt.index(INSTRUCTION)
        assert pair.second.correct == task.verify(example, pair.second.completion).correct
    # greedy: the same attempts again, whatever the batch size
    again = self_correct(model, tokenizer, task, examples, settings.model_copy(update={"batch_size": 64}))
    assert [(a.first.completion, a.second.completion) for a in again.attempts] == \
           [(a.first.completion, a.second.completion) for a in report.attempts]
    sampled = self_correct(model, tokenizer, task, examples[:2], settings.model_copy(update={"samples": 3}))
    assert len(sampled.attempts) == 6 and [a.index for a in sampled.attempts] == [0, 1, 2, 0, 1, 2]


def test_a_template_that_forgets_earlier_turns_is_refused(tiny):
    _, tokenizer = tiny
    turn_separator(tokenizer, "fix it", [tokenizer.eos_token_id])  # SmolLM2's template keeps every turn
    forgetful = copy.deepcopy(tokenizer)
    forgetful.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(IncentivizeError, match="does not hold a conversation"):
        turn_separator(forgetful, "fix it", [tokenizer.eos_token_id])


def test_eval_self_correct_writes_both_attempts(tmp_path):
    out = tmp_path / "sc"
    result = _cli("eval", "--model", "tiny-random", "--limit", 3, "--max-new-tokens", 6, "--self-correct",
                  "--output", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["samples"] == 0 and results["settings"]["instruction"] == INSTRUCTION
    for key in ["accuracy@t1", "accuracy@t2", "delta", "delta_i_to_c", "delta_c_to_i", "unchanged", "similarity"]:
        assert key in results["metrics"] and key in result.stdout
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"completion", "correct", "extracted"} <= set(r["second"]) for r in rows)


@pytest.mark.parametrize("args, fact", [
    (["--self-correct", "--select", "majority", "--samples", "2"], "drop --select"),
    (["--correction-instruction", "Fix it."], "add --self-correct"),
    (["--traces", "t.jsonl"], "add --self-correct"),
    (["--self-correct", "--correction-instruction", " "], "is empty"),
])
def test_self_correct_options_that_do_not_fit_are_one_line(tmp_path, args, fact):
    result = _cli("eval", "--model", "tiny-random", "--limit", 2, "--output", tmp_path / "x", *args)
    _assert_one_line_error(result, fact)
    assert not (tmp_path / "x").exists()


def test_wrong_then_right_pairs_become_sft_traces(tiny, tmp_path, monkeypatch):
    from incentivize.eval import self_correct as module
    from incentivize.tasks.preference_data import load_completions

    model, tokenizer = tiny
    task = load_task("arithmetic")
    examples = task.examples("test", 3)
    verdicts = iter([(False, True), (True, True), (False, False)])

    def scripted(tokenizer, task, example, result, k, mode):  # the verifier's verdicts, scripted
        first, second = next(verdicts)
        return _record(first, f"first {k}"), _record(second, f"second {k}")

    monkeypatch.setattr(module, "_records", scripted)
    report = self_correct(model, tokenizer, task, examples, EvalSettings(samples=0, max_new_tokens=2))
    assert report.metrics["delta_i_to_c"] == pytest.approx(1 / 3)
    report.write_traces(tmp_path / "traces.jsonl")
    rows = load_completions(tmp_path / "traces.jsonl")
    assert len(rows) == 1
    prompt, completion = rows[0]
    assert completion == "second 0"
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert prompt[1]["content"] == "first 0" and prompt[2]["content"] == INSTRUCTION
    assert examples[0].question in prompt[0]["content"]
