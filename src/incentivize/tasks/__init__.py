"""Tasks: problems with verifiable answers. `load_task(name, **options)` builds one by name."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from incentivize.algorithms.registry import Registry
from incentivize.errors import IncentivizeError
from incentivize.tasks.arithmetic import Arithmetic
from incentivize.tasks.base import Example, Task, Verdict, chat_template_warning, render_prompt, reward_columns
from incentivize.tasks.code import CodeTask
from incentivize.tasks.gsm8k import GSM8K
from incentivize.tasks.jsonl import JsonlTask

TASKS: Registry[type[Task]] = Registry("task")
TASKS.add("arithmetic", Arithmetic)
TASKS.add("code", CodeTask)
TASKS.add("gsm8k", GSM8K)
TASKS.add("jsonl", JsonlTask)


def load_task(name: str, **options: Any) -> Task:
    """Build task `name`; options it does not take are an error unless they are None."""
    cls = TASKS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        takes = [p for p in accepted if p != "self"]
        close = difflib.get_close_matches(unknown[0], takes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise IncentivizeError(
            f"task {name!r} does not take option(s) {', '.join(unknown)} (it takes: {', '.join(takes) or 'none'}){hint}"
        )
    return cls(**given)


__all__ = ["TASKS", "Example", "Task", "Verdict", "chat_template_warning", "load_task", "render_prompt",
           "reward_columns"]
