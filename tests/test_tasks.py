import pytest

from incentivize.errors import IncentivizeError
from incentivize.tasks import load_task, render_prompt
from incentivize.tasks.arithmetic import Arithmetic, check_step


def test_arithmetic_is_deterministic_and_splits_are_disjoint():
    task = Arithmetic()
    test, train = task.examples("test", 300), task.examples("train", 2000)
    assert [e.question for e in test] == [e.question for e in Arithmetic().examples("test", 300)]
    test_expr = {e.columns["expression"] for e in test}
    assert len(test_expr) == 300  # no repeats inside a split
    assert not test_expr & {e.columns["expression"] for e in train}
    assert Arithmetic(seed=1).examples("test", 20) != test[:20]


@pytest.mark.parametrize("options", [{}, {"num_ops": 4, "digits": 2}, {"num_ops": 1, "digits": 3, "word_problems": True}])
def test_reference_solutions_are_checkable_steps_that_reach_the_answer(options):
    task = Arithmetic(**options)
    for example in task.examples("train", 50):
        *steps, last = example.solution.splitlines()
        assert len(steps) == task.num_ops
        assert all(check_step(line) is True for line in steps)
        assert last == f"Answer: {example.answer}"
        assert task.verify(example, example.solution).correct
        # the chain is computed left to right, as the parentheses in the question say
        assert steps[-1].endswith(f"= {example.answer}")


def test_expression_parentheses_follow_the_chain():
    from incentivize.tasks.arithmetic import Problem

    assert Problem((4, 7, 3), ("+", "*")).expression() == "(4 + 7) * 3"
    assert Problem((4, 7, 3), ("*", "+")).expression() == "4 * 7 + 3"
    assert Problem((4, 7, 3), ("+", "*")).answer() == 33
    assert eval(Problem((9, 2, 5, 3), ("-", "*", "-")).expression()) == Problem((9, 2, 5, 3), ("-", "*", "-")).answer()


def test_word_problems_tell_the_same_chain():
    words = Arithmetic(word_problems=True).examples("test", 5)
    plain = Arithmetic().examples("test", 5)
    assert [e.answer for e in words] == [e.answer for e in plain]
    assert all("How many" in e.question for e in words)


def test_check_step():
    assert check_step("12 * 3 = 36") is True
    assert check_step("12 x 3 = 36") is True
    assert check_step(" 7 - 9 = -2") is True
    assert check_step("7 + 9 = 15") is False
    assert check_step("Answer: 16") is None


def test_verify_reads_answers_in_several_formats():
    task = Arithmetic()
    example = task.examples("test", 1)[0]
    assert task.verify(example, f"blah\nAnswer: {example.answer}").correct
    assert task.verify(example, f"so it is \\boxed{{{example.answer}}}").correct
    wrong = task.verify(example, "Answer: 100000")
    assert not wrong.correct and wrong.extracted == "100000"
    assert task.verify(example, "I do not know").extracted is None


def test_gsm8k_from_a_file(fixtures_dir):
    task = load_task("gsm8k", data=str(fixtures_dir / "gsm8k_small.jsonl"))
    examples = task.examples(limit=3)
    assert [e.answer for e in examples] == ["21", "60", "400"]
    assert task.examples()[3].answer == "3766"  # '#### 3,766'
    assert "Problem:" in task.user_message(examples[0]) and "Answer:" in task.user_message(examples[0])
    assert task.verify(examples[2], "The boxes: 1200 / 3 = 400\nAnswer: 400").correct


def test_jsonl_task_maps_fields_and_passes_other_columns(fixtures_dir):
    task = load_task("jsonl", data=str(fixtures_dir / "custom.jsonl"), prompt_field="q", answer_field="a")
    examples = task.examples()
    assert [e.answer for e in examples] == ["4", "\\frac{1}{2}", "-3"]
    assert examples[0].columns == {"difficulty": "easy"}
    assert task.verify(examples[1], "Answer: 0.5").correct
    assert examples[2].id == "jsonl-4"  # ids carry the file's line number (line 2 is blank)


def _write(tmp_path, text, name="data.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,match",
    [
        ('{"question": "q", "answer": "#### 1"}\n{"question": "q2", "answer": \n', r"data.jsonl:2: not valid JSON"),
        ('{"question": "q", "answer": "#### 1"}\n[1, 2]\n', r"data.jsonl:2: expected a JSON object"),
        ('{"question": "q"}\n', r"data.jsonl:1: row has no field 'answer' \(it has: question\)"),
        ('{"question": "q", "answer": "42"}\n', r"data.jsonl:1: 'answer' has no '#### N'"),
        ("\n\n", r"has no rows"),
    ],
)
def test_gsm8k_bad_files_name_the_line(tmp_path, text, match):
    with pytest.raises(IncentivizeError, match=match):
        load_task("gsm8k", data=_write(tmp_path, text)).examples()


def test_bad_task_options_are_clear(tmp_path):
    with pytest.raises(IncentivizeError, match=r"unknown task 'arithmatic'.*did you mean 'arithmetic'"):
        load_task("arithmatic")
    with pytest.raises(IncentivizeError, match="does not take option"):
        load_task("gsm8k", data="x.jsonl", num_ops=3)
    with pytest.raises(IncentivizeError, match="needs --data"):
        load_task("gsm8k")
    with pytest.raises(IncentivizeError, match="does not exist"):
        load_task("jsonl", data=str(tmp_path / "missing.jsonl")).examples()
    with pytest.raises(IncentivizeError, match="set --answer-field"):
        load_task("jsonl", data=_write(tmp_path, '{"prompt": "p", "label": 1}\n')).examples()


def test_render_prompt_uses_the_chat_template_or_plain_text(tiny):
    _, tokenizer = tiny
    messages = [{"role": "user", "content": "Calculate 2 + 2."}]
    text = tokenizer.decode(render_prompt(tokenizer, messages))
    assert text.endswith("<|im_start|>user\nCalculate 2 + 2.<|im_end|>\n<|im_start|>assistant\n")
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        plain = tokenizer.decode(render_prompt(tokenizer, messages))
    finally:
        tokenizer.chat_template = template
    assert plain.strip() == "Calculate 2 + 2."


def test_encode_solution_is_the_rendered_prompt_then_the_solution_and_eos(tiny):
    from incentivize.tasks.encoding import encode_solution, pad

    _, tokenizer = tiny
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    prompt = render_prompt(tokenizer, messages)
    solution = tokenizer.encode("12 + 30 = 42\nAnswer: 42", add_special_tokens=False)
    full = encode_solution(tokenizer, messages, "12 + 30 = 42\nAnswer: 42", max_length=512)
    assert full.ids == prompt + solution + [tokenizer.eos_token_id]
    assert full.completion_start == len(prompt) and full.step_positions == []
    cut = encode_solution(tokenizer, messages, "12 + 30 = 42\nAnswer: 42", max_length=len(prompt) + 2)
    assert cut.ids == prompt + solution[:2] and cut.completion_start == len(prompt)  # the first max_length tokens
    short = encode_solution(tokenizer, messages, "42", max_length=3)
    assert short.ids == prompt[:3] and short.completion_start == 3  # nothing left to learn from
    ids, mask = pad([full, cut], pad_id=0)
    assert ids.shape == mask.shape == (2, len(full.ids))
    assert mask[1].tolist() == [1] * len(cut.ids) + [0] * (len(full.ids) - len(cut.ids))
