"""Reward functions written by the user, loaded from ``file.py:name`` or ``module:name``.

User code is the least trusted part of a run, so loading fails with one clear line, and
calling isolates failures per sample: one bad sample costs its own reward, not the batch.
Each call is time-limited (:mod:`incentivize.timelimit`): a call that hangs counts as failed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from incentivize.errors import IncentivizeError, describe
from incentivize.timelimit import TimedOut, call_with_time_limit

__all__ = ["DEFAULT_TIMEOUT_S", "RewardCall", "call_reward_function", "load_reward_function", "reward_name"]

DEFAULT_TIMEOUT_S = 10.0  # per call of a user reward function (the batch, or one sample on retry)

RewardFunction = Callable[..., Any]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise IncentivizeError(
            f"reward function '{spec}': file {path} not found; give an existing .py file as path/to/file.py:function_name"
        )
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"incentivize_user_reward_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise IncentivizeError(f"reward function '{spec}': cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered while it runs so that dataclasses and pickling can find the module.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise IncentivizeError(
            f"reward function '{spec}': importing {path} failed with {describe(err)}; fix that file"
        ) from err
    return module


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        # The module itself is missing (not something it imports).
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise IncentivizeError(
                f"reward function '{spec}': no module named '{name}'; give path/to/file.py:function_name or an importable module"
            ) from err
        raise IncentivizeError(
            f"reward function '{spec}': importing module '{name}' failed with {describe(err)}; fix that module"
        ) from err
    except Exception as err:
        raise IncentivizeError(
            f"reward function '{spec}': importing module '{name}' failed with {describe(err)}; fix that module"
        ) from err


def _defined_callables(module: ModuleType) -> list[str]:
    """Public callables defined in ``module`` itself (imports left out), sorted."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and not inspect.ismodule(value)
        and getattr(value, "__module__", module.__name__) == module.__name__
    )


def load_reward_function(spec: str, judge_options: dict[str, Any] | None = None,
                         process_neutral: str | None = None) -> RewardFunction:
    """The callable named by ``spec``: ``path/to/file.py:function_name`` or ``package.module:function_name``,
    a trained reward model, ``orm:DIR``, ``prm:DIR`` (its neutral steps counted as `process_neutral` says) or
    ``rm:DIR`` (`rewards.reward_model.VerifierReward`), or
    an AI judge, ``judge:MODEL`` (`rewards.judge.JudgeReward`, prompted by `judge_options`)."""
    from incentivize.rewards.judge import JudgeReward, is_judge_spec
    from incentivize.rewards.reward_model import VerifierReward, is_verifier_spec

    if is_verifier_spec(spec):
        return VerifierReward(spec, process_neutral)
    if is_judge_spec(spec):
        return JudgeReward(spec, **(judge_options or {}))
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.strip():
        raise IncentivizeError(
            f"reward function '{spec}': expected path/to/file.py:function_name or package.module:function_name"
        )
    name = name.strip()
    if _looks_like_path(target):
        module = _import_file(Path(target), spec)
        where = str(target)
    else:
        module = _import_module(target, spec)
        where = f"module '{target}'"
    if not hasattr(module, name):
        defined = _defined_callables(module)
        listing = ", ".join(defined) if defined else "none"
        raise IncentivizeError(
            f"reward function '{spec}': {where} has no '{name}'; callables it defines: {listing}"
        )
    fn = getattr(module, name)
    if not callable(fn):
        raise IncentivizeError(
            f"reward function '{spec}': '{name}' in {where} is a {type(fn).__name__}, not a function; point to a function"
        )
    return fn


def reward_name(fn: RewardFunction) -> str:
    """A readable name for logs and metrics: the function's name, or the class name of a callable object."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str):
        return name
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and isinstance(getattr(inner, "__name__", None), str):
        return inner.__name__
    return type(fn).__name__


@dataclass
class RewardCall:
    """Per-sample outcome of one reward function on one batch.

    ``values[i]`` is None when the function gave no usable reward for sample i; then
    ``errors[i]`` says why, unless the function itself returned None ("not applicable").
    ``timeouts`` counts the samples whose error is that their call ran out of time.
    """

    values: list[float | None]
    errors: list[str | None]
    timeouts: int = 0


def _coerce(value: Any) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, (str, bytes)):
        return None, f"returned {type(value).__name__} {_one_line(repr(value))[:60]}, expected a number or None"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"returned {type(value).__name__} {_one_line(repr(value))[:60]}, expected a number or None"
    if math.isnan(number):
        return None, "returned NaN"
    if math.isinf(number):
        return None, f"returned {number}"
    return number, None


def _as_list(result: Any, expected: int) -> tuple[list[Any] | None, str | None]:
    if isinstance(result, (str, bytes)) or not hasattr(result, "__len__") or not hasattr(result, "__iter__"):
        return None, f"returned {type(result).__name__}, expected a list of {expected} values"
    values = list(result)
    if len(values) != expected:
        return None, f"returned {len(values)} values, expected {expected} (one per completion)"
    return values, None


def call_reward_function(
    fn: RewardFunction, prompts: list, completions: list, columns: dict[str, list],
    *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> RewardCall:
    """Call ``fn(prompts, completions, **columns)`` on the batch, isolating failures per sample.

    If the batch call raises or takes longer than ``timeout_s`` seconds, each sample is retried
    alone (one-element lists, each call with the same limit), so one bad or hanging sample does
    not cost the others their rewards. The worst case is therefore ``(1 + n) * timeout_s``.
    ``timeout_s=None`` sets no limit.
    """
    n = len(completions)
    if n == 0:
        return RewardCall(values=[], errors=[])
    try:
        result = _limited(lambda: fn(prompts, completions, **columns), timeout_s)
    except Exception:
        return _call_per_sample(fn, prompts, completions, columns, timeout_s)
    values, error = _as_list(result, n)
    if values is None:
        return RewardCall(values=[None] * n, errors=[error] * n)
    coerced = [_coerce(v) for v in values]
    return RewardCall(values=[v for v, _ in coerced], errors=[e for _, e in coerced])


def _limited(work: Callable[[], Any], timeout_s: float | None) -> Any:
    return work() if timeout_s is None else call_with_time_limit(work, timeout_s)


def _call_per_sample(
    fn: RewardFunction, prompts: list, completions: list, columns: dict[str, list], timeout_s: float | None
) -> RewardCall:
    call = RewardCall(values=[], errors=[])
    for i in range(len(completions)):
        one_columns = {key: column[i : i + 1] for key, column in columns.items()}
        value: float | None
        error: str | None
        try:
            result = _limited(lambda: fn(prompts[i : i + 1], completions[i : i + 1], **one_columns), timeout_s)
        except TimedOut as err:
            value, error = None, str(err)
            call.timeouts += 1
        except Exception as err:
            value, error = None, describe(err)
        else:
            values, error = _as_list(result, 1)
            value, error = _coerce(values[0]) if values is not None else (None, error)
        call.values.append(value)
        call.errors.append(error)
    return call
