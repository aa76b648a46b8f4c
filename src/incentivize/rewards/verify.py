"""Decide whether a predicted answer equals the gold one.

Numbers (the common case, and the one on the training hot path) are compared exactly
with :class:`fractions.Fraction`, without touching SymPy. A gold answer in words (a word of
three letters or more that is not a math function, and no LaTeX) is free text: it matches when
both are equal after :func:`normalize_text`. Everything else goes to math-verify, which parses
LaTeX and plain expressions into SymPy and compares them.

Time limit. SymPy can take unbounded time on adversarial input, and math-verify's own
timeout uses ``signal.alarm``: whole seconds, per expression rather than per call, and
an error outside the main thread. So we switch it off and bound the whole comparison
with :func:`incentivize.timelimit.call_with_time_limit` (a ``SIGALRM`` in the main
thread, a daemon thread we stop waiting for elsewhere; see that module for the limits).
"""

from __future__ import annotations

import logging
import math
import re
from fractions import Fraction

from incentivize.rewards.extract import normalize_number
from incentivize.timelimit import TimedOut, call_with_time_limit

__all__ = ["answers_match", "normalize_text"]

_SIMPLE_FRACTION = re.compile(r"\s*(?P<num>[-+]?\d+)\s*/\s*(?P<den>\d+)\s*")
_LATEX_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed")


class _QuietTimeoutWarning(logging.Filter):
    """Drop math-verify's 'Timeout is disabled' warning: we enforce the time limit ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_math_verify_ready = False


def _import_math_verify() -> None:
    """Import math-verify (and SymPy) once, outside any time limit, and silence its timeout warning."""
    global _math_verify_ready
    if _math_verify_ready:
        return
    import math_verify  # noqa: F401  (import cost must not count against the first deadline)

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_QuietTimeoutWarning())
    _math_verify_ready = True


def _as_fraction(s: str) -> Fraction | None:
    """``s`` as an exact rational if it is a plain number or an integer fraction ``p/q``."""
    number = normalize_number(s)
    if number is not None:
        return Fraction(number)
    match = _SIMPLE_FRACTION.fullmatch(s)
    if match and int(match["den"]) != 0:
        return Fraction(int(match["num"]), int(match["den"]))
    return None


_LATEX_FRACTION = re.compile(r"\\[dt]?frac\{\s*(?P<num>-?\d+)\s*\}\{\s*(?P<den>\d+)\s*\}")


def _as_number_literal(s: str) -> Fraction | None:
    """``s`` as a value if it is written as a number: a decimal, or a fraction in lowest terms
    (``3/4``, ``\\frac{3}{4}``). ``56/7`` or ``8 * 7`` are calculations, not answers."""
    number = normalize_number(s)
    if number is not None:
        return Fraction(number)
    match = _SIMPLE_FRACTION.fullmatch(s.strip()) or _LATEX_FRACTION.fullmatch(s.strip().strip("$"))
    if match is None:
        return None
    numerator, denominator = int(match["num"]), int(match["den"])
    if denominator <= 1 or math.gcd(numerator, denominator) != 1:
        return None
    return Fraction(numerator, denominator)


def _as_latex(s: str) -> str:
    """Wrap bare expressions in ``$...$``: math-verify only reads LaTeX inside delimiters."""
    s = s.strip()
    return s if _LATEX_DELIMITED.search(s) else f"${s}$"


def _symbolic_match(predicted: str, gold: str) -> bool:
    """math-verify's verdict, with its own (signal-based) timeouts off."""
    from math_verify import parse, verify

    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)  # type: ignore[arg-type]
    predicted_parsed = parse(_as_latex(predicted), parsing_timeout=None)  # type: ignore[arg-type]
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


_WORD = re.compile(r"[A-Za-z]{3,}")
_MATH_WORDS = frozenset({"sqrt", "sin", "cos", "tan", "log", "exp", "frac", "infty", "inf", "cdot", "times"})
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_text(answer: str) -> str:
    """A free-text answer as compared: lower case, punctuation and the articles a/an/the dropped, spaces collapsed.

    >>> normalize_text("  The  Thursday. "), normalize_text("New-York!")
    ('thursday', 'new york')
    """
    text = _PUNCTUATION.sub(" ", answer.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def _is_text(gold: str) -> bool:
    return "\\" not in gold and any(word.lower() not in _MATH_WORDS for word in _WORD.findall(gold))


def answers_match(predicted: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
    """Whether ``predicted`` denotes the same value as ``gold``; never raises on any answer.

    Gives False after ``timeout_s`` seconds of symbolic comparison (see the module docstring).

    >>> answers_match("1/2", "0.5"), answers_match("1,234.00", "1234")
    (True, True)
    >>> answers_match("\\\\frac{1}{2}", "0.5"), answers_match("3", "4"), answers_match(None, "4")
    (True, False, False)
    >>> answers_match("8 * 7 * 9", "504"), answers_match("56/7", "8")  # calculations are not answers
    (False, False)
    >>> answers_match("thursday.", "Thursday"), answers_match("Friday", "Thursday")  # free text
    (True, False)
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if predicted is None or not predicted.strip() or not gold.strip():
        return False
    gold_number = _as_fraction(gold)
    if gold_number is not None:
        # A numeric gold answer needs a number back: otherwise restating the question
        # ("Answer: 8 * 7 * 9") would be graded by evaluating it. Policies trained by RL find
        # that loophole within a few steps.
        predicted_number = _as_number_literal(predicted)
        return predicted_number is not None and predicted_number == gold_number
    if _is_text(gold):
        return normalize_text(predicted) == normalize_text(gold)

    def work() -> bool:
        try:
            return _symbolic_match(predicted, gold)
        except Exception:
            return False

    try:
        _import_math_verify()
    except Exception:
        return False
    try:
        return call_with_time_limit(work, timeout_s)
    except TimedOut:
        return False
