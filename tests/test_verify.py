"""Answer equivalence: exact numbers, math-verify for the rest, and the time limit."""

from __future__ import annotations

import threading
import time

import math_verify
import pytest

from incentivize.rewards.verify import answers_match


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("1/2", "0.5"),
        ("0.5", "1/2"),
        ("1,234", "1234"),
        ("1234.00", "1,234"),
        ("-3.50", "-3.5"),
        ("$18", "18"),
        ("12%", "12"),
        ("+7", "7"),
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "$\\frac{3}{4}$"),
        ("x^2 + 1", "1 + x^2"),
        ("\\sqrt{2}", "2^{1/2}"),
    ],
)
def test_equivalent_answers_match(predicted: str, gold: str) -> None:
    assert answers_match(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        (None, "4"),
        ("", "4"),
        ("4", ""),
        ("3", "4"),
        ("0.5", "0.51"),
        ("1/3", "0.333"),
        ("-5", "5"),
        ("\\frac{1}{3}", "0.5"),
        ("x + 1", "x + 2"),
    ],
)
def test_different_answers_do_not_match(predicted: str | None, gold: str) -> None:
    assert not answers_match(predicted, gold)


def test_numbers_compare_exactly_without_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("math-verify must not be called for plain numbers")

    monkeypatch.setattr(math_verify, "parse", fail)
    assert answers_match("100000000000000000001", "100000000000000000001.0")
    assert not answers_match("100000000000000000001", "100000000000000000000")


def test_math_verify_errors_mean_no_match(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert not answers_match("\\sqrt{4}/2", "\\frac{\\sqrt{2}}{\\sqrt{2}}")


def _slow_verify(*args: object, **kwargs: object) -> bool:
    time.sleep(3)
    return True


def test_timeout_in_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_verify, "verify", _slow_verify)
    start = time.monotonic()
    assert not answers_match("\\sqrt{4}/2", "\\frac{\\sqrt{2}}{\\sqrt{2}}", timeout_s=0.2)
    assert time.monotonic() - start < 1.2


def test_timeout_in_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_verify, "verify", _slow_verify)
    outcome: list[bool] = []
    start = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.append(answers_match("\\sqrt{4}/2", "\\frac{\\sqrt{2}}{\\sqrt{2}}", timeout_s=0.2)))
    worker.start()
    worker.join(5)
    assert outcome == [False]
    assert time.monotonic() - start < 1.2


def test_works_in_worker_thread() -> None:
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(answers_match("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join(5)
    assert outcome == [True]


def test_main_thread_alarm_is_cleaned_up() -> None:
    import signal

    before = signal.getsignal(signal.SIGALRM)
    assert answers_match("\\frac{1}{2}", "0.5")
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_rejects_nonpositive_timeout() -> None:
    with pytest.raises(ValueError):
        answers_match("1", "1", timeout_s=0)


def test_a_calculation_is_not_an_answer_to_a_number() -> None:
    # what a policy learned within 15 GRPO steps when the verifier evaluated expressions
    assert not answers_match("8 * 7 * 9", "504")
    assert not answers_match("8 - 3 + 3", "8")
    assert not answers_match("56/7", "8") and not answers_match("\\frac{2}{4}", "0.5")
    assert answers_match("\\frac{1}{2}", "0.5") and answers_match("-3/4", "-0.75") and answers_match("504.0", "504")
    assert answers_match("\\sqrt{4}/2", "1") is False
    assert answers_match("2\\sqrt{2}", "\\sqrt{8}")  # symbolic golds still go to math-verify
