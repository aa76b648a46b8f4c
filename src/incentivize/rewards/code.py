"""Rewards for code: take the program out of a completion and run it against tests in the sandbox.

The `code` task's verifier (`incentivize.tasks.code.CodeTask.verify`) gives 1 when every test passes
and 0 otherwise; `code_reward` is the partial-credit version (the share of tests passed) for
`rewards: [incentivize.rewards.code:code_reward]`. Both run through `check_program`, which remembers
recent results, so the same program against the same tests runs once (a group of completions often
repeats itself, and the verifier and `code_reward` see the same completions).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from incentivize.rewards.functions import completion_text
from incentivize.rewards.sandbox import SandboxLimits, SandboxResult, run_tests

__all__ = ["check_program", "code_reward", "extract_program", "python_block"]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CACHE_SIZE = 4096


def extract_program(text: str) -> str:
    """The program in a completion: the first ```python (or ```py) block, else the first fenced block
    without a language, else the whole text. A block cut off by the token limit counts up to the end.

    >>> extract_program("Here:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.")
    'def f(x):\\n    return x\\n'
    >>> extract_program("```\\nprint(1)\\n```"), extract_program("def g(): return 2")
    ('print(1)\\n', 'def g(): return 2')
    >>> extract_program("```bash\\nls\\n```\\n```py\\nx = 1")
    'x = 1'
    """
    return python_block(text, untagged=True) or text


def python_block(text: str, untagged: bool = False) -> str | None:
    """The first ```python (```py, ```python3) block of `text`, or with `untagged` else the first fenced block
    without a language; None when there is none.

    >>> python_block("x ```python\\nprint(2)\\n``` y"), python_block("```\\nprint(1)\\n```")
    ('print(2)\\n', None)
    """
    blocks = [(language.lower(), body) for language, body in _FENCE.findall(text)]
    for wanted in (("python", "py", "python3"), ("",) if untagged else ()):
        for language, body in blocks:
            if language in wanted:
                return body
    return None


_results: OrderedDict[tuple, SandboxResult] = OrderedDict()
_results_lock = threading.Lock()


def check_program(program: str, tests: Sequence[str], setup: str = "",
                  limits: SandboxLimits | None = None) -> SandboxResult:
    """`sandbox.run_tests`, remembering the last few thousand results (without their captured output,
    which a remembered result returns empty); a failure of the sandbox machinery itself ("error: the
    sandbox ...") is not remembered."""
    limits = limits or SandboxLimits()
    key = (program, tuple(tests), setup, limits)
    with _results_lock:
        if key in _results:
            _results.move_to_end(key)
            return _results[key]
    result = run_tests(program, tests, setup=setup, limits=limits)
    if not result.reason.startswith("error: the sandbox"):
        with _results_lock:
            _results[key] = replace(result, stdout="", stderr="")
            while len(_results) > _CACHE_SIZE:
                _results.popitem(last=False)
    return result


def code_reward(prompts: list, completions: list, *, tests: list[Sequence[str]], setup: list[str] | None = None,
                timeout_s: float = 5.0, **_: Any) -> list[float]:
    """The share of its tests each completion's program passes (0 on a timeout or a crash).

    Reads the `tests` column (a list of test statements per completion) and the optional `setup`
    column, as the `code` task provides them.
    """
    if len(tests) != len(completions):
        raise ValueError(f"got {len(tests)} test lists for {len(completions)} completions")
    setups = setup if setup is not None else [""] * len(completions)
    limits = SandboxLimits(timeout_s=timeout_s)
    return [
        check_program(extract_program(completion_text(c)), list(t), s or "", limits).fraction
        for c, t, s in zip(completions, tests, setups)
    ]
