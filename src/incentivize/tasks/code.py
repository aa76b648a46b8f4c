"""Write a Python function, checked by running tests in the sandbox.

Fifty short function-writing problems ("Write a Python function `running_sum(xs)` that returns ..."),
each with a reference solution and a handful of test cases. Every fifth problem is held out: 40 train
and 10 test problems, the same on every machine. The completion's program (the first ```python block,
else the whole text) runs in `incentivize.rewards.sandbox` with the problem's tests; it is correct
when every test passes within `timeout_s` seconds. `incentivize.rewards.code:code_reward` gives
partial credit (the share of tests passed) instead.

Tests compare results with `_same` (in `TEST_SETUP`): equal values of exactly the expected types
(an int or a float for a number), so an object whose `__eq__` always says yes does not pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from incentivize.errors import IncentivizeError
from incentivize.rewards.code import check_program, extract_program
from incentivize.rewards.sandbox import SandboxLimits
from incentivize.tasks.base import Example, Task, Verdict

INSTRUCTION = "Reply with the complete function in one ```python code block."

TEST_SETUP = '''
def _same(got, want, type=type, abs=abs, all=all, any=any, len=len, zip=zip, max=max, str=str):
    """got == want with exactly the expected types (numbers: int or float, within 1e-9)."""
    if want is None or type(want) is bool:
        return got is want
    if type(want) in (int, float):
        return type(got) in (int, float) and abs(got - want) <= 1e-9 * max(1.0, abs(want))
    if type(want) is str:
        return type(got) is str and str.__eq__(got, want)
    if type(want) in (list, tuple):
        return type(got) is type(want) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    plain = (int, float, str, bool, type(None))
    if type(want) is dict:
        return (type(got) is dict and len(got) == len(want) and all(type(k) in plain for k in got)
                and all(k in got and _same(got[k], v) for k, v in want.items()))
    if type(want) is set:
        return type(got) is set and len(got) == len(want) and all(type(x) in plain for x in got) and all(
            x in got for x in want)
    raise TypeError(f"_same cannot compare {type(want).__name__}")
'''


@dataclass(frozen=True)
class Problem:
    name: str
    params: str
    returns: str  # completes "Write a Python function `name(params)` that returns ..."
    solution: str
    cases: tuple[tuple[tuple[Any, ...], Any], ...]  # (arguments, expected result)

    def question(self) -> str:
        return f"Write a Python function `{self.name}({self.params})` that returns {self.returns}."

    def tests(self) -> list[str]:
        return [f"assert _same({self.name}({', '.join(map(repr, args))}), {want!r})" for args, want in self.cases]


def _p(name: str, params: str, returns: str, solution: str, *cases: tuple[tuple[Any, ...], Any]) -> Problem:
    return Problem(name, params, returns, solution.strip() + "\n", tuple(cases))


PROBLEMS: tuple[Problem, ...] = (
    _p("add", "a, b", "the sum of the numbers `a` and `b`",
       "def add(a, b):\n    return a + b",
       ((1, 2), 3), ((-4, 4), 0), ((10, -3), 7)),
    _p("largest", "xs", "the largest number in the non-empty list `xs`",
       "def largest(xs):\n    return max(xs)",
       (([3, 9, 2],), 9), (([-5, -2, -8],), -2), (([7],), 7)),
    _p("sum_of_evens", "xs", "the sum of the even numbers in the list of integers `xs`",
       "def sum_of_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)",
       (([1, 2, 3, 4],), 6), (([],), 0), (([-2, 5, 7],), -2)),
    _p("count_vowels", "s", "how many vowels (a, e, i, o, u, in either case) the string `s` contains",
       "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
       (("hello",), 2), (("AEIOU xyz",), 5), (("",), 0)),
    _p("reverse_string", "s", "the string `s` reversed",
       "def reverse_string(s):\n    return s[::-1]",
       (("abc",), "cba"), (("",), ""), (("racecar!",), "!racecar")),
    _p("is_palindrome", "s", "True if the string `s` reads the same forwards and backwards, else False",
       "def is_palindrome(s):\n    return s == s[::-1]",
       (("level",), True), (("ab",), False), (("",), True), (("Aa",), False)),
    _p("factorial", "n", "n! for a non-negative integer `n` (0! is 1)",
       "def factorial(n):\n    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result",
       ((0,), 1), ((5,), 120), ((10,), 3628800)),
    _p("fibonacci", "n", "the n-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1",
       "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
       ((0,), 0), ((1,), 1), ((10,), 55), ((30,), 832040)),
    _p("is_prime", "n", "True if the integer `n` is a prime number, else False",
       "def is_prime(n):\n    if n < 2:\n        return False\n"
       "    return all(n % d for d in range(2, int(n ** 0.5) + 1))",
       ((2,), True), ((1,), False), ((97,), True), ((91,), False), ((-7,), False)),
    _p("gcd", "a, b", "the greatest common divisor of the positive integers `a` and `b`",
       "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
       ((12, 18), 6), ((7, 5), 1), ((100, 25), 25)),
    _p("count_words", "s", "the number of words in the string `s`, where words are separated by whitespace",
       "def count_words(s):\n    return len(s.split())",
       (("hello world",), 2), (("  spaced   out  ",), 2), (("",), 0)),
    _p("squares", "xs", "a list of the squares of the numbers in the list `xs`, in the same order",
       "def squares(xs):\n    return [x * x for x in xs]",
       (([1, 2, 3],), [1, 4, 9]), (([],), []), (([-2],), [4])),
    _p("only_positive", "xs", "a list of the numbers in `xs` that are greater than zero, in their original order",
       "def only_positive(xs):\n    return [x for x in xs if x > 0]",
       (([3, -1, 0, 5],), [3, 5]), (([-2, -3],), []), (([],), [])),
    _p("second_largest", "xs",
       "the second largest distinct value in the list `xs`, or None if it has fewer than two distinct values",
       "def second_largest(xs):\n    values = sorted(set(xs))\n    return values[-2] if len(values) >= 2 else None",
       (([4, 1, 3],), 3), (([5, 5, 2],), 2), (([7, 7],), None), (([],), None)),
    _p("flatten", "xss", "a single list with the elements of the lists in the list `xss`, in order",
       "def flatten(xss):\n    return [x for xs in xss for x in xs]",
       (([[1, 2], [3], []],), [1, 2, 3]), (([],), []), (([["a"], ["b", "c"]],), ["a", "b", "c"])),
    _p("char_count", "s", "a dict mapping each character of the string `s` to the number of times it occurs",
       "def char_count(s):\n    counts = {}\n    for c in s:\n        counts[c] = counts.get(c, 0) + 1\n    return counts",
       (("abca",), {"a": 2, "b": 1, "c": 1}), (("",), {}), (("zz",), {"z": 2})),
    _p("dedupe", "xs", "the list `xs` without repeated elements, keeping the first occurrence of each, in order",
       "def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n"
       "            seen.add(x)\n            out.append(x)\n    return out",
       (([3, 1, 3, 2, 1],), [3, 1, 2]), (([],), []), ((["a", "a"],), ["a"])),
    _p("running_sum", "xs", "the list of running totals of the numbers in `xs` (element i is xs[0] + ... + xs[i])",
       "def running_sum(xs):\n    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n"
       "    return out",
       (([1, 2, 3],), [1, 3, 6]), (([],), []), (([5, -5, 5],), [5, 0, 5])),
    _p("digit_sum", "n", "the sum of the decimal digits of the non-negative integer `n`",
       "def digit_sum(n):\n    return sum(int(d) for d in str(n))",
       ((0,), 0), ((1234,), 10), ((909,), 18)),
    _p("capitalize_words", "s",
       "the string `s` (words separated by single spaces) with each word's first letter upper case and the rest "
       "lower case",
       "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))",
       (("hello world",), "Hello World"), (("pYTHON",), "Python"), (("a b c",), "A B C")),
    _p("is_sorted", "xs", "True if the list `xs` is in non-decreasing order, else False",
       "def is_sorted(xs):\n    return all(a <= b for a, b in zip(xs, xs[1:]))",
       (([1, 2, 2, 5],), True), (([3, 1],), False), (([],), True)),
    _p("merge_sorted", "a, b", "one sorted list with all elements of the sorted lists `a` and `b`",
       "def merge_sorted(a, b):\n    return sorted(a + b)",
       (([1, 4, 6], [2, 3, 7]), [1, 2, 3, 4, 6, 7]), (([], [1]), [1]), (([2, 2], [2]), [2, 2, 2])),
    _p("count_occurrences", "xs, x", "how many times `x` occurs in the list `xs`",
       "def count_occurrences(xs, x):\n    return sum(1 for y in xs if y == x)",
       (([1, 2, 1, 1], 1), 3), (([], 5), 0), ((["a", "b"], "c"), 0)),
    _p("average", "xs", "the arithmetic mean of the non-empty list of numbers `xs`",
       "def average(xs):\n    return sum(xs) / len(xs)",
       (([1, 2, 3, 4],), 2.5), (([10],), 10.0), (([-1, 1],), 0.0)),
    _p("celsius_to_fahrenheit", "c", "the temperature `c` in degrees Celsius converted to degrees Fahrenheit",
       "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
       ((0,), 32.0), ((100,), 212.0), ((-40,), -40.0)),
    _p("is_anagram", "a, b",
       "True if the strings `a` and `b` use the same letters the same number of times, ignoring case and spaces",
       "def is_anagram(a, b):\n    key = lambda s: sorted(s.replace(' ', '').lower())\n    return key(a) == key(b)",
       (("listen", "silent"), True), (("Dormitory", "dirty room"), True), (("abc", "abd"), False)),
    _p("longest_word", "s",
       "the longest word in the string `s` (words separated by spaces; the first one if several are longest)",
       "def longest_word(s):\n    return max(s.split(), key=len)",
       (("a quick brown fox",), "quick"), (("hi there",), "there"), (("ab cd",), "ab")),
    _p("to_binary", "n", "the binary representation of the non-negative integer `n` as a string, without a prefix",
       "def to_binary(n):\n    return bin(n)[2:]",
       ((0,), "0"), ((5,), "101"), ((255,), "11111111")),
    _p("product", "xs", "the product of the numbers in the list `xs` (1 for an empty list)",
       "def product(xs):\n    result = 1\n    for x in xs:\n        result *= x\n    return result",
       (([2, 3, 4],), 24), (([],), 1), (([5, -1],), -5)),
    _p("min_max", "xs", "a tuple (smallest, largest) of the non-empty list of numbers `xs`",
       "def min_max(xs):\n    return (min(xs), max(xs))",
       (([3, 1, 2],), (1, 3)), (([4],), (4, 4)), (([-1, -9],), (-9, -1))),
    _p("chunks", "xs, n",
       "the list `xs` split into consecutive lists of length `n` (the last one may be shorter)",
       "def chunks(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]",
       (([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]]), (([], 3), []), (([1, 2], 5), [[1, 2]])),
    _p("rotate_left", "xs, k", "the list `xs` rotated left by `k` positions (`k` may be larger than its length)",
       "def rotate_left(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[k:] + xs[:k]",
       (([1, 2, 3, 4], 1), [2, 3, 4, 1]), (([1, 2, 3], 5), [3, 1, 2]), (([], 2), [])),
    _p("count_uppercase", "s", "how many upper-case letters the string `s` contains",
       "def count_uppercase(s):\n    return sum(c.isupper() for c in s)",
       (("Hello World",), 2), (("abc",), 0), (("ABC def G",), 4)),
    _p("remove_spaces", "s", "the string `s` with every space character removed",
       "def remove_spaces(s):\n    return s.replace(' ', '')",
       (("a b  c",), "abc"), (("none",), "none"), (("   ",), "")),
    _p("is_power_of_two", "n", "True if the integer `n` is a positive power of two (1, 2, 4, ...), else False",
       "def is_power_of_two(n):\n    return n > 0 and n & (n - 1) == 0",
       ((1,), True), ((64,), True), ((12,), False), ((0,), False)),
    _p("sum_of_squares", "n", "1*1 + 2*2 + ... + n*n for a non-negative integer `n`",
       "def sum_of_squares(n):\n    return sum(k * k for k in range(1, n + 1))",
       ((0,), 0), ((3,), 14), ((10,), 385)),
    _p("index_of", "xs, x", "the index of the first occurrence of `x` in the list `xs`, or -1 if it is absent",
       "def index_of(xs, x):\n    return xs.index(x) if x in xs else -1",
       (([5, 3, 5], 5), 0), (([1, 2], 3), -1), ((["a", "b"], "b"), 1)),
    _p("zip_to_dict", "keys, values", "a dict mapping each element of `keys` to the element of `values` at the same "
       "position (both lists have the same length)",
       "def zip_to_dict(keys, values):\n    return dict(zip(keys, values))",
       ((["a", "b"], [1, 2]), {"a": 1, "b": 2}), (([], []), {}), (([1], ["x"]), {1: "x"})),
    _p("caesar", "s, k",
       "the string `s` with each lower-case letter a-z shifted `k` places forward in the alphabet, wrapping around "
       "after z, and every other character unchanged",
       "def caesar(s, k):\n    return ''.join(chr((ord(c) - 97 + k) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)",
       (("abc", 1), "bcd"), (("xyz", 3), "abc"), (("Hi there!", 2), "Hk vjgtg!")),
    _p("transpose", "matrix", "the transpose of `matrix`, a non-empty list of equally long lists",
       "def transpose(matrix):\n    return [list(row) for row in zip(*matrix)]",
       (([[1, 2, 3], [4, 5, 6]],), [[1, 4], [2, 5], [3, 6]]), (([[1]],), [[1]])),
    _p("median", "xs",
       "the median of the non-empty list of numbers `xs` (the mean of the two middle values when its length is even)",
       "def median(xs):\n    s = sorted(xs)\n    m = len(s) // 2\n    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2",
       (([3, 1, 2],), 2), (([4, 1, 3, 2],), 2.5), (([5],), 5)),
    _p("is_leap_year", "year",
       "True if `year` is a leap year in the Gregorian calendar (divisible by 4, except centuries not divisible by "
       "400), else False",
       "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
       ((2024,), True), ((1900,), False), ((2000,), True), ((2023,), False)),
    _p("fizzbuzz", "n",
       "'FizzBuzz' if the positive integer `n` is divisible by 15, 'Fizz' if by 3, 'Buzz' if by 5, else `n` as a "
       "string",
       "def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n"
       "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)",
       ((15,), "FizzBuzz"), ((9,), "Fizz"), ((10,), "Buzz"), ((7,), "7")),
    _p("collatz_steps", "n",
       "how many steps the Collatz rule (halve an even number, replace an odd one by 3n + 1) takes to bring the "
       "positive integer `n` to 1",
       "def collatz_steps(n):\n    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
       "        steps += 1\n    return steps",
       ((1,), 0), ((6,), 8), ((27,), 111)),
    _p("count_primes", "n", "how many prime numbers are less than or equal to the integer `n`",
       "def count_primes(n):\n    return sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, n + 1))",
       ((10,), 4), ((1,), 0), ((100,), 25)),
    _p("common_elements", "a, b", "a sorted list of the distinct values that occur in both lists `a` and `b`",
       "def common_elements(a, b):\n    return sorted(set(a) & set(b))",
       (([1, 2, 2, 3], [2, 3, 4]), [2, 3]), (([1], [2]), []), (([5, 1, 5], [5, 1]), [1, 5])),
    _p("compress", "s",
       "the run-length encoding of the string `s`: each run of a repeated character becomes the character followed "
       "by the run's length, e.g. 'aaab' gives 'a3b1'",
       "def compress(s):\n    out = []\n    i = 0\n    while i < len(s):\n        j = i\n"
       "        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(f'{s[i]}{j - i}')\n"
       "        i = j\n    return ''.join(out)",
       (("aaab",), "a3b1"), (("",), ""), (("abcc",), "a1b1c2")),
    _p("pairs_with_sum", "xs, target",
       "how many pairs of positions i < j in the list `xs` have xs[i] + xs[j] equal to `target`",
       "def pairs_with_sum(xs, target):\n    n = len(xs)\n"
       "    return sum(xs[i] + xs[j] == target for i in range(n) for j in range(i + 1, n))",
       (([1, 2, 3, 4], 5), 2), (([2, 2, 2], 4), 3), (([], 1), 0)),
    _p("max_subarray_sum", "xs", "the largest sum of a non-empty run of consecutive elements of the non-empty list `xs`",
       "def max_subarray_sum(xs):\n    best = current = xs[0]\n    for x in xs[1:]:\n"
       "        current = max(x, current + x)\n        best = max(best, current)\n    return best",
       (([-2, 1, -3, 4, -1, 2, 1, -5, 4],), 6), (([-3, -1, -2],), -1), (([5],), 5)),
    _p("balanced", "s",
       "True if the brackets (), [] and {} in the string `s` are balanced and properly nested, else False",
       "def balanced(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n"
       "        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n"
       "            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack",
       (("([]{})",), True), (("(]",), False), (("((",), False), (("a(b)c",), True)),
)

TEST_EVERY = 5  # problems 4, 9, 14, ... (0-based) are held out


class CodeTask(Task):
    """Fifty function-writing problems; the verifier runs the problem's tests in the sandbox."""

    name = "code"
    max_new_tokens = 256

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512) -> None:
        if timeout_s <= 0 or memory_mb <= 0:
            raise IncentivizeError(f"code: timeout_s and memory_mb must be positive (got {timeout_s}, {memory_mb})")
        self.limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise IncentivizeError(f"code has splits 'train' and 'test', not {split!r}")
        chosen = [p for i, p in enumerate(PROBLEMS) if (i % TEST_EVERY == TEST_EVERY - 1) == (split == "test")]
        return [
            Example(
                id=f"code-{p.name}", question=p.question(), answer=p.solution, solution=p.solution,
                columns={"entry_point": p.name, "tests": p.tests(), "setup": TEST_SETUP},
            )
            for p in chosen[:limit]
        ]

    def user_message(self, example: Example) -> str:
        return f"{example.question} {INSTRUCTION}"

    def verify(self, example: Example, completion: str) -> Verdict:
        """Correct when the completion's program passes every test of `example` in the sandbox."""
        program = extract_program(completion)
        result = check_program(program, example.columns["tests"], example.columns["setup"], self.limits)
        return Verdict(program if program.strip() else None, result.passed)
