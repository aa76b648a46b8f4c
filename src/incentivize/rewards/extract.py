"""Pull the final answer out of a model completion.

Models state answers in a handful of conventions; we look for them from the most
explicit to the least, so that an unambiguous marker always beats a stray number:

1. the last ``#### N`` (GSM8K),
2. the last ``\\boxed{...}`` (MATH, most chat models),
3. the last ``Answer: N`` / ``answer is N`` / ``Final answer: N``,
4. otherwise the last number in the text.

Plain numbers come back canonical (see :func:`normalize_number`) so that they can be
compared as strings; anything else (LaTeX, words) comes back as written.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "has_final_answer_marker", "normalize_number"]

# A number as written in prose: optional sign and dollar, thousands commas or plain
# digits, optional decimals (".5" allowed), optional percent. The lookbehind keeps us
# from starting inside a word or another number ("x2", the "5" of "3.5").
_NUMBER_IN_TEXT = re.compile(
    r"""
    (?<![\w.])
    [-+]?
    \\?\$?
    (?:\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?=\.\d))
    (?:\.\d+)?
    (?:\\?%)?
    """,
    re.VERBOSE,
)

# The whole string is one plain number (what normalize_number accepts).
_PLAIN_NUMBER = re.compile(
    r"""
    (?P<sign>[-+]?)
    (?:\\?\$)?
    (?P<int>\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))
    (?:\.(?P<frac>\d+))?
    (?:\\?%)?
    \.?
    """,
    re.VERBOSE,
)

_HASH_MARKER = re.compile(r"####(?=[ \t]*(?P<value>[^\n]*))")
_BOXED_MARKER = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Answer: 5", "Final answer: 5", "the answer is 5", "The answer is: 5". The value may
# start on the next line ("**Answer:**\n5"). It sits in a lookahead so that markers may
# overlap: in "Final Answer: The final answer is $12$." the last marker gives "12".
_ANSWER_VALUE = r"(?=\**[ \t]*(?:\n[ \t]*)?(?P<value>[^\n]*))"
_ANSWER_MARKER = re.compile(
    r"\banswer(?:[ \t]*\**[ \t]*:|[ \t]+is\b[ \t]*:?)" + _ANSWER_VALUE, re.IGNORECASE
)
_ANSWER_COLON_MARKER = re.compile(r"\banswer[ \t]*\**[ \t]*:" + _ANSWER_VALUE, re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# "42 apples", "$18 per day": a number followed only by words is that number.
_NUMBER_THEN_WORDS = re.compile(r"(?P<number>\S+?)[,;:]?\s+[A-Za-z][A-Za-z,; \t]*")
# A "####" value must look like an answer, so that a markdown heading ("#### Step 1") is no answer.
_ANSWER_LIKE_START = re.compile(r"[-+$\\\d.(]")


def normalize_number(s: str) -> str | None:
    """Canonical form of ``s`` if it is a plain number, else None.

    Strips whitespace, ``$``, ``%``, thousands commas, a trailing period, a ``+`` sign,
    leading zeros and trailing decimal zeros, so equal numbers give equal strings.

    >>> normalize_number("1,234.00")
    '1234'
    >>> normalize_number(" -3.50 ")
    '-3.5'
    >>> normalize_number("+7"), normalize_number("-0"), normalize_number(".5")
    ('7', '0', '0.5')
    >>> normalize_number("$12.") , normalize_number("12%")
    ('12', '12')
    >>> normalize_number("1/2") is None, normalize_number("12,34") is None
    (True, True)
    """
    match = _PLAIN_NUMBER.fullmatch(s.strip())
    if match is None:
        return None
    integer = match["int"].replace(",", "").lstrip("0") or "0"
    fraction = (match["frac"] or "").rstrip("0")
    body = f"{integer}.{fraction}" if fraction else integer
    if body == "0" or match["sign"] != "-":
        return body
    return "-" + body


def _last_hash_answer(text: str) -> str | None:
    values = [_clean(m["value"]) for m in _HASH_MARKER.finditer(text)]
    values = [v for v in values if _ANSWER_LIKE_START.match(v)]
    return values[-1] if values else None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` with balanced braces, in closing order (an outer
    box after the boxes nested in it); unclosed ones are skipped.

    One pass with a stack of open braces, so even many unclosed boxes cost linear time.
    """
    openers = {match.end() - 1 for match in _BOXED_MARKER.finditer(text)}
    if not openers:
        return []
    found: list[str] = []
    stack: list[int | None] = []  # content start for a box's brace, None for any other brace
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i + 1 if i in openers else None)
        elif char == "}" and stack:
            start = stack.pop()
            if start is not None:
                found.append(text[start:i].strip())
    return found


def _last_boxed(text: str) -> str | None:
    values = [v for v in _boxed_contents(text) if v]
    return values[-1] if values else None


def _last_answer_line(text: str, pattern: re.Pattern[str] = _ANSWER_MARKER) -> str | None:
    values = []
    for match in pattern.finditer(text):
        value = _SENTENCE_END.split(match["value"], maxsplit=1)[0]
        value = _clean(value)
        if value:
            values.append(value)
    return values[-1] if values else None


def _clean(value: str) -> str:
    """Strip the decoration models put around an answer: markdown bold, quotes, backticks, ``$``,
    a final period."""
    value = value.strip()
    previous = None
    while value != previous:
        previous = value
        value = value.strip().strip("*\"'`").strip()
        if value.startswith("\\(") and value.endswith("\\)"):
            value = value[2:-2]
        value = value.strip("$").rstrip(".")
    return value.strip()


def _canonical(value: str) -> str:
    """A plain number (possibly followed by unit words) becomes canonical; the rest stays."""
    number = normalize_number(value)
    if number is not None:
        return number
    match = _NUMBER_THEN_WORDS.fullmatch(value.replace("*", ""))
    if match:
        number = normalize_number(match["number"])
        if number is not None:
            return number
    return value


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None when there is nothing to take.

    >>> extract_answer("Answer: 5. Wait, recount.\\n#### 72")
    '72'
    >>> extract_answer("So $x = \\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is **$1,234.00**.")
    '1234'
    >>> extract_answer("I bought 3 apples for $4.50 each.")
    '4.5'
    >>> extract_answer("No idea.") is None
    True
    """
    for finder in (_last_hash_answer, _last_boxed, _last_answer_line):
        value = finder(text)
        if value is not None:
            return _canonical(value)
    numbers = _NUMBER_IN_TEXT.findall(text)
    if not numbers:
        return None
    return normalize_number(numbers[-1])


def has_final_answer_marker(text: str) -> bool:
    """Whether ``text`` states its answer explicitly (``Answer:``, ``####`` or ``\\boxed{}``).

    >>> has_final_answer_marker("Final answer: 12"), has_final_answer_marker("It is 12.")
    (True, False)
    >>> has_final_answer_marker("\\\\boxed{}")
    False
    """
    return (
        _last_hash_answer(text) is not None
        or _last_boxed(text) is not None
        or _last_answer_line(text, _ANSWER_COLON_MARKER) is not None
    )
