"""Answer extraction: the markers, their priority, and number formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incentivize.rewards.extract import extract_answer, has_final_answer_marker, normalize_number


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1,234", "1234"),
        ("-3.50", "-3.5"),
        ("+7", "7"),
        (".5", "0.5"),
        ("$1,234.00", "1234"),
        ("12%", "12"),
        ("-0", "0"),
        ("-0.000", "0"),
        ("007", "7"),
        ("100", "100"),
        ("42.", "42"),
        ("  3.14159 ", "3.14159"),
        ("\\$5", "5"),
        ("1,234,567.890", "1234567.89"),
    ],
)
def test_normalize_number_canonicalizes(raw: str, canonical: str) -> None:
    assert normalize_number(raw) == canonical


@pytest.mark.parametrize("raw", ["", "abc", "1/2", "12,34", "1,2345", "3x", "1.2.3", "--5", "$", ".", "\\frac{1}{2}"])
def test_normalize_number_rejects_non_numbers(raw: str) -> None:
    assert normalize_number(raw) is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        # GSM8K marker wins over everything, even an earlier explicit "Answer:".
        ("Answer: 5\nActually no.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("first #### 3 then #### 4", "4"),
        # Boxed, with nested braces, last one wins.
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{3} no wait \\boxed{4}", "4"),
        ("\\boxed{ 1,234 }", "1234"),
        ("\\boxed{\\text{(B)}}", "\\text{(B)}"),
        ("Answer: 9 but boxed \\boxed{8}", "8"),
        # Answer lines, decorations stripped.
        ("Answer: 5", "5"),
        ("The answer is 42.", "42"),
        ("the ANSWER IS: -3.50.", "-3.5"),
        ("**Answer:** 17", "17"),
        ("**Answer:**\n17", "17"),
        ("Final answer: $1,234.00$.", "1234"),
        ("The answer is **42** apples.", "42"),
        ("The answer is 42 apples.", "42"),
        ("Answer: 3.5. Done.", "3.5"),
        ("Answer: x = 5", "x = 5"),
        ("Final Answer: The final answer is $12$. I hope it is correct.", "12"),
        ("Answer: 1\nanswer: 2", "2"),
        # Last number.
        ("I had 3 apples and ate 2, so 1 left.", "1"),
        ("It costs $1,234.00 in total.", "1234"),
        ("Growth was 12%.", "12"),
        ("The result is -3.50", "-3.5"),
        ("about +7 units", "7"),
        ("a rate of .5 per hour", "0.5"),
        ("pages 3-4", "4"),
    ],
)
def test_extract_answer(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize("text", ["", "No idea.", "Answer:", "####", "\\boxed{}", "\\boxed{unclosed"])
def test_extract_answer_none_without_any_answer(text: str) -> None:
    assert extract_answer(text) is None


def test_markdown_heading_is_not_a_gsm8k_answer() -> None:
    assert extract_answer("#### Step 1\nWe get 7.") == "7"


def test_nested_and_unclosed_boxes() -> None:
    assert extract_answer("\\boxed{\\boxed{1}+2}") == "\\boxed{1}+2"
    assert extract_answer("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_answer("\\boxed{" * 5000) is None  # linear time, not quadratic


def test_empty_markers_fall_back_to_numbers() -> None:
    assert extract_answer("\\boxed{} and then 9") == "9"


@pytest.mark.parametrize(
    ("text", "marked"),
    [
        ("Answer: 3", True),
        ("Final answer: 3", True),
        ("#### 3", True),
        ("\\boxed{3}", True),
        ("The answer is 3", False),
        ("3", False),
        ("Answer:   ", False),
        ("\\boxed{}", False),
        ("#### Step 1", False),
    ],
)
def test_has_final_answer_marker(text: str, marked: bool) -> None:
    assert has_final_answer_marker(text) is marked


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_extract_answer_never_raises(text: str) -> None:
    result = extract_answer(text)
    assert result is None or isinstance(result, str)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.,-+$%#*: \n\\{}boxedAnswer"))
def test_extract_answer_never_raises_on_answer_like_text(text: str) -> None:
    extract_answer(text)
    has_final_answer_marker(text)


@given(st.integers())
def test_normalize_number_round_trips_integers(n: int) -> None:
    assert normalize_number(str(n)) == str(n)


@given(st.integers())
def test_extract_answer_reads_thousands_commas(n: int) -> None:
    assert extract_answer(f"{n:,}") == str(n)
    assert extract_answer(f"So the total is {n:,}.") == str(n)
    assert extract_answer(f"#### {n:,}") == str(n)


def test_quotes_and_backticks_around_the_answer_are_dropped():
    assert extract_answer('2 + 7 = 11\n\nThe last line must be "Answer: 11"') == "11"
    assert extract_answer("Answer: `42`") == "42"
    assert extract_answer("Answer: '3.50'.") == "3.5"
