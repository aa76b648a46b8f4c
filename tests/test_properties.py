"""Properties that hold for every input hypothesis can think of: answer extraction and comparison,
config parsing, and reading data files."""

from __future__ import annotations

import json
import math
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from incentivize.config import RLConfig, load_config, load_run_config
from incentivize.errors import IncentivizeError
from incentivize.rewards.extract import extract_answer, has_final_answer_marker, normalize_number
from incentivize.rewards.verify import answers_match
from incentivize.tasks.base import Example
from incentivize.tasks.data import read_jsonl
from incentivize.tasks.jsonl import JsonlTask

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------
# Answer extraction and comparison

@st.composite
def numbers(draw: st.DrawFn) -> tuple[str, str, Fraction]:
    """A number as a model writes it (sign, thousands commas or not, decimals), the same number written
    plainly, and its exact value."""
    negative = draw(st.booleans())
    integer = draw(st.integers(min_value=0, max_value=10**15))
    decimals = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=8)))
    sign = "-" if negative else ""
    body = f"{integer:,}" if draw(st.booleans()) else str(integer)
    if integer == 0 and decimals and draw(st.booleans()):
        body = ""  # ".5"
    fraction = f".{decimals}" if decimals else ""
    plain = f"{sign}{integer}{fraction}"
    return f"{sign}{body}{fraction}", plain, Fraction(plain)


REASONING = "Let me work it out. 3 + 4 = 7, and 12 * 2 = 24; so 24 - 7 = 17.\n"
MARKED = [
    "Answer: {}", "Final answer: {}", "The answer is {}.", "The answer is: {}", "**Answer:** {}", "Answer: **{}**",
    "Answer: ${}$", "Answer:\n{}", "#### {}", "####{}", "\\boxed{{{}}}", "$\\boxed{{{}}}$.", "\\fbox{{{}}}",
]


@FEW
@given(numbers(), st.sampled_from(MARKED))
def test_a_marked_number_is_extracted_exactly_and_canonically(number, template):
    written, _, value = number
    extracted = extract_answer(REASONING + template.format(written))
    assert extracted is not None and Fraction(extracted) == value
    assert normalize_number(extracted) == extracted  # canonical: equal numbers give equal strings


@FEW
@given(numbers(), numbers(), st.sampled_from(["Answer: {}", "\\boxed{{{}}}"]))
def test_the_gsm8k_marker_wins_wherever_it_stands(first, second, other):
    """`#### N` is the most explicit marker: it beats `Answer:` and `\\boxed{}`, before or after it."""
    for text in (f"{other.format(first[0])}\n#### {second[0]}", f"#### {second[0]}\n{other.format(first[0])}"):
        extracted = extract_answer(text)
        assert extracted is not None and Fraction(extracted) == second[2]


@FEW
@given(numbers())
def test_the_last_number_is_the_answer_when_nothing_is_marked(number):
    written, _, value = number
    extracted = extract_answer(f"{REASONING}In total that makes {written} apples")
    assert extracted is not None and Fraction(extracted) == value


# text made of the pieces that steer extraction, so that the odd combinations actually occur
PIECES = st.sampled_from(["Answer", "answer is", ":", "**", "####", "\\boxed{", "\\fbox{", "{", "}", "$", "\\$", "\\(",
                          "\\)", ",", ".", "-", "+", "%", "0", "7", "12", "1,000", " ", "\n", "`", '"', "'"])
TRICKY = st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TRICKY, st.text()))
def test_extraction_never_raises_and_numbers_come_back_canonical(text):
    extracted = extract_answer(text)
    has_final_answer_marker(text)
    assert extracted is None or (isinstance(extracted, str) and extracted)
    if extracted is not None and normalize_number(extracted) is not None:
        assert normalize_number(extracted) == extracted


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_number_is_idempotent_and_keeps_the_value(text):
    canonical = normalize_number(text)
    if canonical is not None:
        assert normalize_number(canonical) == canonical
        assert Fraction(canonical) == Fraction(text.strip().strip("+").replace("\\", "").replace("$", "")
                                               .replace("%", "").replace(",", "").rstrip(".") or "0")


def _spellings(number: tuple[str, str, Fraction]) -> list[str]:
    """Ways of writing the same number that a grader must accept."""
    written, plain, _ = number
    sign, unsigned = ("-", written[1:]) if written.startswith("-") else ("", written)
    zeros = unsigned + ("0" if "." in unsigned else ".00")
    return [written, plain, f"{sign}${unsigned}", f"{sign}\\${unsigned}", f"{sign}{zeros}", f"{written}.", f" {written} ",
            *([] if sign else [f"+{written}"])]


@FEW
@given(numbers(), st.data())
def test_answers_match_any_two_spellings_of_a_number(number, data):
    predicted = data.draw(st.sampled_from(_spellings(number)))
    gold = data.draw(st.sampled_from(_spellings(number)))
    assert answers_match(predicted, gold)
    assert answers_match(predicted, predicted)


@FEW
@given(numbers(), numbers())
def test_answers_match_tells_different_numbers_apart(a, b):
    assume(a[2] != b[2])
    assert not answers_match(a[0], b[1])


@FEW
@given(numbers(), st.sampled_from(MARKED), st.data())
def test_a_task_grades_a_marked_answer_correct_in_any_spelling(number, template, data):
    spelling = data.draw(st.sampled_from(_spellings(number)))
    assume("\\$" not in spelling or "$" not in template)  # "$\\$5$" is LaTeX for a dollar sign, not a number
    task = JsonlTask(data="unused.jsonl")
    example = Example(id="x", question="q", answer=number[1])
    verdict = task.verify(example, REASONING + template.format(spelling.strip()))
    assert verdict.correct, (spelling, template, verdict)


@settings(max_examples=100, deadline=None)
@given(st.one_of(TRICKY, st.text(max_size=30)), numbers())
def test_answers_match_never_raises_on_any_prediction_against_a_number(predicted, gold):
    assert answers_match(predicted, gold[1]) in (True, False)


# ---------------------------------------------------------------------------------------------------
# Config: `--set key=value`, YAML files, unknown keys

finite = {"allow_nan": False, "allow_infinity": False}
positive = st.floats(min_value=0.0, max_value=1e6, exclude_min=True, **finite)
unit = st.floats(min_value=0.0, max_value=1.0, **finite)
# text as a user types it after `key=`: not a YAML null, no surrounding whitespace, no NUL
text_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20).map(
    str.strip
).filter(lambda t: t not in ("null", "Null", "NULL", "~"))
name = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_steps": st.integers(1, 10**9),
    "seed": st.integers(-(2**62), 2**62),
    "top_k": st.integers(0, 10**6),
    "eval_steps": st.integers(0, 10**6),
    "max_completion_length": st.integers(1, 10**6),
    "learning_rate": positive,
    "temperature": positive,
    "beta": st.floats(min_value=0.0, max_value=1e6, **finite),
    "top_p": st.floats(min_value=0.0, max_value=1.0, exclude_min=True, **finite),
    "lam": unit,
    "gamma": unit,
    "adam_beta1": st.floats(min_value=-1e6, max_value=1e6, **finite),
    "format_reward": st.floats(min_value=-1e6, max_value=1e6, **finite),
    "epsilon_high": st.none() | unit,
    "dual_clip": st.none() | st.floats(min_value=1.0, max_value=100.0, exclude_min=True, **finite),
    "share_prompt": st.booleans(),
    "use_peft": st.booleans(),
    "dynamic_sampling": st.booleans(),
    "lr_scheduler_type": st.sampled_from(["constant", "cosine"]),
    "kl_estimator": st.sampled_from(["k1", "k2", "k3"]),
    "scale_rewards": st.sampled_from(["group", "batch", "none"]),
    "model": text_value,
    "task": text_value,
    "output_dir": st.none() | text_value,
    "critic_model": st.none() | text_value,
    "rewards": st.lists(name.map(lambda n: f"rewards/{n}.py:{n}"), max_size=3),
    "lora_target_modules": name.filter(lambda n: n != "null") | st.lists(name, min_size=1, max_size=4),
}


def _typed(value: Any) -> str:
    """`value` as a user would type it after `--set key=`."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


@FEW
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})))
def test_any_valid_values_round_trip_through_set(values):
    config = load_config("grpo", None, [f"{key}={_typed(value)}" for key, value in values.items()])
    for key, value in values.items():
        assert getattr(config, key) == value, key


@FEW
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 63))
def test_the_group_size_must_divide_the_batch(group, groups, remainder):
    assume(group >= 2 and remainder < group)
    assert load_config("grpo", None, [f"num_generations={group}", f"generation_batch_size={group * groups}"])
    with pytest.raises(IncentivizeError, match=rf"generation_batch_size \({group * groups + remainder}\) must be a "
                                               rf"multiple of num_generations \({group}\)"):
        load_config("grpo", None, [f"num_generations={group}", f"generation_batch_size={group * groups + remainder}"])


unknown_key = st.text("abcdefghijklmnopqrstuvwxyzABC_-0123456789", min_size=1, max_size=20).filter(
    lambda k: k not in RLConfig.model_fields
)


@FEW
@given(unknown_key, st.sampled_from(["1", "x", "[1, 2]", ""]))
def test_an_unknown_key_in_set_is_refused_by_name(key, value):
    with pytest.raises(IncentivizeError, match="unknown config key") as err:
        load_config("grpo", None, ["beta=0.1", f"{key}={value}", "seed=2"])
    assert repr(key) in str(err.value) and f"--set {key}={value}" in str(err.value)


@FEW
@given(st.lists(st.sampled_from(["beta: 0.1", "seed: 3", "max_steps: 7", "model: tiny-random", "# a comment", ""]),
                max_size=6), unknown_key, st.data())
def test_an_unknown_key_in_a_yaml_file_is_refused_with_its_line(lines, key, data):
    position = data.draw(st.integers(0, len(lines)))
    lines = list(dict.fromkeys(lines))  # YAML keys once each
    position = min(position, len(lines))
    lines.insert(position, f"{yaml.safe_dump({key: 1}).strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(IncentivizeError) as err:
            load_config("grpo", path)
    assert f"config.yaml:{position + 1}: unknown config key {key!r}" in str(err.value)


@FEW
@given(st.sampled_from(sorted(RLConfig.model_fields)), st.data())
def test_a_misspelt_key_gets_a_valid_name_suggested(key, data):
    cut = data.draw(st.integers(0, len(key) - 1))
    typo = key[:cut] + key[cut + 1:]  # one letter dropped
    assume(typo and typo not in RLConfig.model_fields)
    with pytest.raises(IncentivizeError, match=f"unknown config key {typo!r}") as err:
        load_config("grpo", None, [f"{typo}=1"])
    message = str(err.value)
    suggested = message.split("did you mean ")[-1].rstrip("?").strip("'") if "did you mean" in message else None
    assert suggested in RLConfig.model_fields or "(choices: " in message, message
    if len(key) >= 8:  # a long name one letter short is close enough to be found
        assert suggested is not None, message


@FEW
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=8).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})), st.sampled_from(["grpo", "rloo", "dapo", "ppo"]))
def test_a_config_dumped_to_yaml_loads_back_equal(values, algorithm):
    values = {k: v for k, v in values.items() if k != "output_dir"}
    overrides = [f"{key}={_typed(value)}" for key, value in values.items()]
    if algorithm == "ppo":
        overrides.append("generation_batch_size=8")
    config = load_config(algorithm, None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        loaded = load_run_config(tmp)
        # and the same file given with --config makes the same config again
        again = load_config(algorithm, Path(tmp) / "config.yaml")
    assert loaded.model_dump() == config.model_copy(update={"output_dir": tmp}).model_dump()
    assert again.model_dump() == config.model_dump()


# ---------------------------------------------------------------------------------------------------
# Data files

json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
records = st.lists(
    st.fixed_dictionaries(
        {"prompt": json_text, "answer": st.one_of(st.integers(-10**9, 10**9), json_text.filter(str.strip))},
        optional={"id": st.integers(), "source": json_text, "tags": st.lists(json_text, max_size=2)},
    ),
    min_size=1, max_size=12,
)


def _write_jsonl(path: Path, rows: list[dict[str, Any]], blank_after: set[int], ascii_only: bool) -> list[int]:
    """Write `rows` one per line with blank lines after the given rows; return each row's line number."""
    lines, numbers = [], []
    for index, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=ascii_only))
        numbers.append(len(lines))
        if index in blank_after:
            lines.append(" " if index % 2 else "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return numbers


@FEW
@given(records, st.sets(st.integers(0, 12)), st.booleans())
def test_any_valid_records_load_back_in_order(rows, blank_after, ascii_only):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        numbers = _write_jsonl(path, rows, blank_after, ascii_only)
        assert read_jsonl(path) == list(zip(numbers, rows))
        examples = JsonlTask(data=str(path)).examples()
    assert [e.question for e in examples] == [r["prompt"] for r in rows]
    assert [e.id for e in examples] == [f"jsonl-{n}" for n in numbers]
    assert [e.columns for e in examples] == [{k: v for k, v in r.items() if k not in ("prompt", "answer")} for r in rows]


CORRUPTIONS = {
    "truncated": lambda line: line[: max(1, len(line) // 2)],
    "not an object": lambda line: "[" + line + "]",
    "trailing text": lambda line: line + " and more",
    "single quotes": lambda line: line.replace('"', "'"),
}


@FEW
@given(records, st.sets(st.integers(0, 12)), st.sampled_from(sorted(CORRUPTIONS)), st.data())
def test_a_corrupt_line_is_reported_with_its_exact_number(rows, blank_after, corruption, data):
    broken = data.draw(st.integers(0, len(rows) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        numbers = _write_jsonl(path, rows, blank_after, True)
        lines = path.read_text().split("\n")
        lines[numbers[broken] - 1] = CORRUPTIONS[corruption](lines[numbers[broken] - 1])
        path.write_text("\n".join(lines))
        with pytest.raises(IncentivizeError) as err:
            JsonlTask(data=str(path)).examples()
    assert str(err.value).startswith(f"{path}:{numbers[broken]}: "), str(err.value)


@FEW
@given(records, st.sets(st.integers(0, 12)), st.sampled_from(["answer", "prompt"]), st.data())
def test_a_row_without_its_field_is_reported_with_its_line_and_field(rows, blank_after, field, data):
    broken = data.draw(st.integers(0, len(rows) - 1))
    rows = [dict(r) for r in rows]
    del rows[broken][field]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        numbers = _write_jsonl(path, rows, blank_after, False)
        with pytest.raises(IncentivizeError) as err:
            JsonlTask(data=str(path)).examples()
    assert str(err.value).startswith(f"{path}:{numbers[broken]}: row has no field {field!r}"), str(err.value)


@FEW
@given(records, st.sets(st.integers(0, 12)), st.binary(min_size=1, max_size=4), st.data())
def test_bytes_that_are_not_utf8_are_reported_with_their_line(rows, blank_after, junk, data):
    assume(b"\n" not in junk and b"\r" not in junk and not _is_utf8(junk))
    broken = data.draw(st.integers(0, len(rows) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        numbers = _write_jsonl(path, rows, blank_after, True)
        lines = path.read_bytes().split(b"\n")
        lines[numbers[broken] - 1] = lines[numbers[broken] - 1][:-1] + junk + b"}"
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(IncentivizeError) as err:
            read_jsonl(path)
    assert str(err.value).startswith(f"{path}:{numbers[broken]}: not UTF-8"), str(err.value)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
