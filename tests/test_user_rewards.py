"""User reward functions: loading from files and modules, and per-sample error isolation."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest

from incentivize.errors import IncentivizeError
from incentivize.rewards import RewardCall, call_reward_function, load_reward_function, reward_name

GOOD_FILE = """
import os  # imported names are not listed as defined callables

def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

def helper(x):
    return x

THRESHOLD = 3
"""


def write(tmp_path: Path, source: str, name: str = "my_rewards.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def test_loads_function_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_FILE)
    fn = load_reward_function(f"{path}:length_reward")
    assert fn([None, None], ["ab", "abcd"]) == [2.0, 4.0]
    assert reward_name(fn) == "length_reward"


def test_loads_function_from_module() -> None:
    fn = load_reward_function("incentivize.rewards.functions:format_reward")
    assert fn([None], ["Answer: 1"]) == [1.0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IncentivizeError, match="not found") as info:
        load_reward_function(f"{tmp_path}/nope.py:fn")
    assert "nope.py:fn" in str(info.value)


def test_missing_colon(tmp_path: Path) -> None:
    with pytest.raises(IncentivizeError, match="function_name"):
        load_reward_function(str(write(tmp_path, GOOD_FILE)))


def test_missing_function_lists_defined_callables(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_FILE)
    with pytest.raises(IncentivizeError) as info:
        load_reward_function(f"{path}:lenght_reward")
    message = str(info.value)
    assert "has no 'lenght_reward'" in message
    assert "helper, length_reward" in message
    assert "os" not in message.split("defines:")[1]


def test_not_callable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_FILE)
    with pytest.raises(IncentivizeError, match="'THRESHOLD' .* is a int, not a function"):
        load_reward_function(f"{path}:THRESHOLD")


def test_syntax_error_file(tmp_path: Path) -> None:
    path = write(tmp_path, "def broken(:\n    pass\n", name="broken.py")
    with pytest.raises(IncentivizeError) as info:
        load_reward_function(f"{path}:broken")
    message = str(info.value)
    assert "SyntaxError" in message and str(path) in message
    assert "\n" not in message


def test_import_error_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "import definitely_not_a_module_xyz\n", name="needs_dep.py")
    with pytest.raises(IncentivizeError, match="ModuleNotFoundError: No module named 'definitely_not_a_module_xyz'"):
        load_reward_function(f"{path}:fn")


def test_unknown_module() -> None:
    with pytest.raises(IncentivizeError, match="no module named 'no_such_pkg_xyz.rewards'"):
        load_reward_function("no_such_pkg_xyz.rewards:fn")


def test_reward_name_of_objects() -> None:
    class Scorer:
        def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
            return [0.0] * len(completions)

    def base(prompts: list, completions: list, scale: float = 1.0) -> list[float]:
        return [scale] * len(completions)

    assert reward_name(Scorer()) == "Scorer"
    assert reward_name(functools.partial(base, scale=2.0)) == "base"


def picky(prompts: list, completions: list, answer: list[str]) -> list[float]:
    """Raises on the whole batch if any completion is 'bad'."""
    out = []
    for completion, gold in zip(completions, answer):
        if completion == "bad":
            raise ValueError("bad sample")
        out.append(1.0 if completion == gold else 0.0)
    return out


def test_batch_call_passes_columns() -> None:
    call = call_reward_function(picky, ["p"] * 2, ["1", "2"], {"answer": ["1", "3"]})
    assert call == RewardCall(values=[1.0, 0.0], errors=[None, None])


def test_one_raising_sample_keeps_the_others() -> None:
    call = call_reward_function(picky, ["p"] * 3, ["1", "bad", "2"], {"answer": ["1", "2", "2"]})
    assert call.values == [1.0, None, 1.0]
    assert call.errors == [None, "ValueError: bad sample", None]


def test_wrong_length_is_an_error_for_every_sample() -> None:
    call = call_reward_function(lambda p, c: [1.0], ["p"] * 3, ["a", "b", "c"], {})
    assert call.values == [None, None, None]
    assert all(e is not None and "returned 1 values, expected 3" in e for e in call.errors)


def test_non_list_return_is_an_error() -> None:
    call = call_reward_function(lambda p, c: 1.0, ["p"] * 2, ["a", "b"], {})
    assert call.values == [None, None]
    assert call.errors[0] == "returned float, expected a list of 2 values"


def test_values_are_coerced() -> None:
    values = [1, True, None, "0.5", math.nan, math.inf, 2.5]
    call = call_reward_function(lambda p, c: values, ["p"] * 7, list("abcdefg"), {})
    assert call.values == [1.0, 1.0, None, None, None, None, 2.5]
    assert call.errors[:3] == [None, None, None]
    assert call.errors[3] is not None and "expected a number or None" in call.errors[3]
    assert call.errors[4] == "returned NaN"
    assert call.errors[5] == "returned inf"
    assert call.errors[6] is None


def test_empty_batch_is_not_called() -> None:
    def explode(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("should not be called")

    assert call_reward_function(explode, [], [], {}) == RewardCall(values=[], errors=[])


def test_loaded_file_function_end_to_end(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "def reward(prompts, completions, **kw):\n"
        "    return [1 / int(c) for c in completions]\n",
        name="div.py",
    )
    fn = load_reward_function(f"{path}:reward")
    call = call_reward_function(fn, ["p"] * 3, ["2", "0", "4"], {})
    assert call.values == [0.5, None, 0.25]
    assert call.errors == [None, "ZeroDivisionError: division by zero", None]


def hangs_on_some(prompts: list, completions: list, **kwargs: object) -> list[float]:
    """Sleeps for ever on 'sleep', spins for ever on 'spin', raises on 'bad'; else the length."""
    import time

    out = []
    for completion in completions:
        if completion == "sleep":
            time.sleep(1000)
        while completion == "spin":
            pass
        if completion == "bad":
            raise ValueError("bad sample")
        out.append(float(len(completion)))
    return out


def test_a_hanging_sample_times_out_and_costs_only_its_own_reward() -> None:
    import time

    started = time.monotonic()
    call = call_reward_function(hangs_on_some, ["p"] * 5, ["ab", "sleep", "abc", "spin", "bad"], {}, timeout_s=0.2)
    assert time.monotonic() - started < 3  # the batch call, then one limited call per sample
    assert call.values == [2.0, None, 3.0, None, None]
    assert call.errors[1] == call.errors[3] == "timed out after 0.2 s"
    assert call.errors[4] == "ValueError: bad sample"
    assert call.timeouts == 2


def test_a_reward_that_swallows_the_interruption_is_still_stopped() -> None:
    import time

    def sloppy(prompts: list, completions: list) -> list[float]:
        try:
            time.sleep(1000)
        except BaseException:  # a bare except around a slow call: the alarm repeats, and stops the next one
            pass
        time.sleep(1000)
        return [1.0]

    def late(prompts: list, completions: list) -> list[float]:
        try:
            time.sleep(1000)
        except BaseException:  # swallows the interruption and answers anyway: too late to count
            pass
        return [1.0]

    started = time.monotonic()
    for fn in (sloppy, late):
        call = call_reward_function(fn, ["p"], ["a"], {}, timeout_s=0.1)
        assert call.values == [None] and call.timeouts == 1, fn
    assert time.monotonic() - started < 3


def test_the_time_limit_holds_off_the_main_thread_and_leaves_no_alarm() -> None:
    import signal
    import threading

    handler = signal.getsignal(signal.SIGALRM)
    outcome: list[RewardCall] = []
    worker = threading.Thread(
        target=lambda: outcome.append(call_reward_function(hangs_on_some, ["p"] * 2, ["sleep", "ab"], {}, timeout_s=0.2))
    )
    worker.start()
    worker.join(10)
    assert outcome and outcome[0].values == [None, 2.0] and outcome[0].timeouts == 1
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
