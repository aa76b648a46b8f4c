"""Synthetic arithmetic with step-checkable reference solutions.

A problem is a chain of `num_ops` operations (+, -, *) applied left to right to numbers of `digits`
digits, written with the parentheses that make that order explicit: `(14 + 7) * 3`. The reference
solution has one checkable step per line (`14 + 7 = 21`, `21 * 3 = 63`), which is what the process
reward model of a later stage checks step by step. With `word_problems` the same chain is told as a
short story.

Problems are generated from `seed` and an index, so they are the same on every machine. The train
and test splits are disjoint by construction: a problem belongs to the split given by a hash of its
expression, and each split drops repeated expressions.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from incentivize.algorithms.reward_losses import NEGATIVE, NEUTRAL, POSITIVE
from incentivize.errors import IncentivizeError
from incentivize.rewards.extract import extract_answer, has_final_answer_marker
from incentivize.rewards.steps import split_steps
from incentivize.rewards.verify import answers_match
from incentivize.tasks.base import Example, Task

OPS = "+-*"
TEST_SHARE = 0.2  # share of the problem space that belongs to the test split
STEP = re.compile(r"^\s*(-?\d+)\s*([-+*x×])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
EQUATION = re.compile(r"(?<![\d.])(\d+)\s*([-+*x×])\s*(\d+)\s*=\s*(-?\d+)(?![\d.])")

# Chosen by measuring SmolLM2-135M-Instruct greedy accuracy on 48 test problems per variant: an
# instruction that shows a worked example (`12 * 3 = 36`) gets the example copied back verbatim, and
# "Answer: <number>" after "step by step" is mostly ignored; this wording got the highest accuracy.
INSTRUCTION = 'Write each calculation on its own line. The last line must be "Answer: <result>".'

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack"]
_THINGS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils"]


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    ops: tuple[str, ...]

    def expression(self) -> str:
        text = str(self.numbers[0])
        for i, (op, number) in enumerate(zip(self.ops, self.numbers[1:])):
            # parenthesise the running result when the next operator binds tighter than the last
            if op == "*" and i > 0 and self.ops[i - 1] in "+-":
                text = f"({text})"
            text = f"{text} {op} {number}"
        return text

    def steps(self) -> list[tuple[int, str, int, int]]:
        value = self.numbers[0]
        out = []
        for op, number in zip(self.ops, self.numbers[1:]):
            result = apply(value, op, number)
            out.append((value, op, number, result))
            value = result
        return out

    def answer(self) -> int:
        return self.steps()[-1][3]

    def solution(self) -> str:
        lines = [f"{a} {op} {b} = {c}" for a, op, b, c in self.steps()]
        return "\n".join(lines + [f"Answer: {self.answer()}"])


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def check_step(line: str) -> bool | None:
    """True/False if `line` is an arithmetic step `a op b = c` that is right/wrong, else None.

    >>> check_step("12 * 3 = 36"), check_step("12 * 3 = 35"), check_step("so the total is")
    (True, False, None)
    """
    match = STEP.match(line.replace("×", "*").replace(" x ", " * "))
    if match is None:
        return None
    a, op, b, c = match.groups()
    op = "*" if op in "x×" else op
    return apply(int(a), op, int(b)) == int(c)


def step_reward(prompts: list, completions: list, intermediate: list[list[int]], **_: object) -> list[float]:
    """Partial credit: the share of the reference's intermediate results that the completion
    states as the result of a correct step (`a op b = c`, checked by `check_step`).

    A reward function with TRL's signature, for `rewards: [incentivize.tasks.arithmetic:step_reward]`.
    Writing true but irrelevant steps (`1 + 1 = 2`) earns nothing: only the problem's own
    intermediate values count.

    >>> step_reward(["p"], ["6 - 5 = 1\\n1 + 6 = 7\\nAnswer: 7"], intermediate=[[1, 7]])
    [1.0]
    >>> step_reward(["p"], ["6 - 5 = 1\\n1 + 6 = 8"], intermediate=[[1, 7]])
    [0.5]
    """
    rewards = []
    for completion, targets in zip(completions, intermediate):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        shown = {int(line.rsplit("=", 1)[1]) for line in text.splitlines() if check_step(line)}
        rewards.append(sum(t in shown for t in targets) / len(targets) if targets else 0.0)
    return rewards


class Arithmetic(Task):
    """Seeded arithmetic chains; knobs: `num_ops`, `digits`, `word_problems`.

    The default (one operation on 2-digit numbers, `85 + 30`) is where SmolLM2-135M-Instruct is
    clearly above zero and far from perfect (24% greedy on 100 held-out problems), so RL gets a
    reward in most groups; two 1-digit operations score 4% and give most groups no signal.
    """

    name = "arithmetic"
    max_new_tokens = 128

    def __init__(self, num_ops: int = 1, digits: int = 2, word_problems: bool = False, seed: int = 0) -> None:
        if num_ops < 1 or digits < 1:
            raise IncentivizeError(f"arithmetic: num_ops and digits must be at least 1 (got {num_ops}, {digits})")
        self.num_ops, self.digits, self.word_problems, self.seed = num_ops, digits, word_problems, seed

    def problem(self, index: int) -> Problem:
        rng = random.Random(f"arithmetic:{self.seed}:{self.num_ops}:{self.digits}:{index}")
        low, high = (2 if self.digits == 1 else 10 ** (self.digits - 1)), 10**self.digits - 1
        value = rng.randint(low, high)
        numbers, ops = [value], []
        for _ in range(self.num_ops):
            op = rng.choice(OPS)
            number = rng.randint(2, 9) if op == "*" else rng.randint(low, high)
            if op == "-" and number > value:  # keep every intermediate result non-negative
                op = "+"
            numbers.append(number)
            ops.append(op)
            value = apply(value, op, number)
        return Problem(tuple(numbers), tuple(ops))

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise IncentivizeError(f"arithmetic has splits 'train' and 'test', not {split!r}")
        wanted = limit if limit is not None else (1000 if split == "test" else 10000)
        seen: set[str] = set()
        out: list[Example] = []
        index = 0
        while len(out) < wanted and index < 100 * wanted + 1000:
            problem = self.problem(index)
            index += 1
            expression = problem.expression()
            if expression in seen or split_of(expression) != split:
                continue
            seen.add(expression)
            out.append(
                Example(
                    id=f"arithmetic-{split}-{len(out)}",
                    question=self._question(problem, index),
                    answer=str(problem.answer()),
                    solution=problem.solution(),
                    columns={"expression": expression, "intermediate": [c for *_, c in problem.steps()]},
                )
            )
        return out

    def user_message(self, example: Example) -> str:
        return f"{example.question} {INSTRUCTION}"

    def step_labels(self, example: Example, completion: str) -> list[int]:
        """Each line of `completion` checked against the problem, for process reward models.

        negative: a calculation whose result is wrong, or a final answer line with the wrong answer;
        positive: a right calculation on numbers from the problem or from earlier right steps, or a
        final answer line with the right answer; neutral: anything else (prose, or right arithmetic
        on numbers that come from nowhere).

        >>> task = Arithmetic()
        >>> example = Example(id="x", question="Calculate (14 + 7) * 3.", answer="63")
        >>> task.step_labels(example, "First, 14 + 7 = 21\\nThen 21 * 3 = 63\\nAnswer: 63")
        [2, 2, 2]
        >>> task.step_labels(example, "14 + 7 = 22\\nLet me think.\\n5 + 5 = 10\\nAnswer: 66")
        [0, 1, 1, 0]
        """
        known = {int(n) for n in re.findall(r"\d+", example.question)}
        labels = []
        for step in split_steps(completion):
            equations = EQUATION.findall(step.text.replace("×", "*"))
            if equations:
                label = POSITIVE
                for a, op, b, c in equations:
                    if apply(int(a), "*" if op in "x×" else op, int(b)) != int(c):
                        label = NEGATIVE
                        break
                    if int(a) not in known or int(b) not in known:
                        label = NEUTRAL
                    known.add(int(c))
                labels.append(label)
            elif has_final_answer_marker(step.text):
                extracted = extract_answer(step.text)
                right = extracted is not None and answers_match(extracted, example.answer)
                labels.append(POSITIVE if right else NEGATIVE)
            else:
                labels.append(NEUTRAL)
        return labels

    def _question(self, problem: Problem, index: int) -> str:
        if not self.word_problems:
            return f"Calculate {problem.expression()}."
        rng = random.Random(f"words:{self.seed}:{index}")
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        parts = [f"{name} has {problem.numbers[0]} {thing}."]
        for op, number in zip(problem.ops, problem.numbers[1:]):
            parts.append(
                f"Then {name} gets {number} more."
                if op == "+"
                else f"Then {name} gives away {number}."
                if op == "-"
                else f"Then the number of {thing} becomes {number} times as many."
            )
        parts.append(f"How many {thing} does {name} have now?")
        return " ".join(parts)


def split_of(expression: str) -> str:
    bucket = int(hashlib.sha256(expression.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < TEST_SHARE else "train"
