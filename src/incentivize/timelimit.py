"""Bound the time of a call we do not control: SymPy on adversarial input, a user's reward function.

Two ways, chosen per call:

* In the main thread (when no other real-time timer is armed) a ``SIGALRM`` from
  ``signal.setitimer`` interrupts the work after ``timeout_s``; the work really stops. The alarm
  repeats every 50 ms until the call returns, so code that swallows the first interruption
  (a bare ``except:`` around a slow call) is interrupted again, and an answer that comes
  after the deadline is not taken. Code that catches every exception in an endless loop
  cannot be stopped from inside the process; only a separate process can bound that.
* Elsewhere (worker threads, or an outer timer already armed, as when a reward function
  itself calls a time-limited verifier) the work runs in a daemon thread that we wait on
  for ``timeout_s``. The caller gets :class:`TimedOut` on time, but a runaway computation
  cannot be killed: it keeps its thread (and a share of the GIL) until it finishes on its
  own, and dies with the process at the latest.

Both rely on the interpreter getting control back: a single C call that never returns to
Python delays the signal until it does.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

__all__ = ["TimedOut", "call_with_time_limit"]

T = TypeVar("T")

_REPEAT_S = 0.05


class TimedOut(Exception):
    """The call did not finish within its time limit."""


class _Deadline(BaseException):
    """Raised inside the work by our SIGALRM handler; a BaseException so ``except Exception`` lets it through."""


def call_with_time_limit(work: Callable[[], T], timeout_s: float) -> T:
    """``work()``, or :class:`TimedOut` after ``timeout_s`` seconds; exceptions of ``work`` propagate."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if _can_use_alarm():
        return _within_alarm(work, timeout_s)
    return _within_thread(work, timeout_s)


def _can_use_alarm() -> bool:
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    # Someone else's alarm is armed, or a handler we could not restore is set: leave them alone.
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is not None


def _within_alarm(work: Callable[[], T], timeout_s: float) -> T:
    here = sys._getframe()
    fired = [False]

    def interrupt(signum: int, frame: FrameType | None) -> None:
        fired[0] = True
        # Only inside the work: an alarm that lands in this function's own bookkeeping is ignored.
        if frame is not here:
            raise _Deadline

    previous_handler = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s, _REPEAT_S)
        result = work()
        if fired[0]:  # the work swallowed the interruption and finished late: a late answer is no answer
            raise _Deadline
        return result
    except _Deadline:
        raise TimedOut(f"timed out after {timeout_s:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


def _within_thread(work: Callable[[], T], timeout_s: float) -> T:
    outcome: list[tuple[bool, object]] = []

    def target() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as err:  # handed to the caller, who decides
            outcome.append((False, err))

    worker = threading.Thread(target=target, name="incentivize-time-limit", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise TimedOut(f"timed out after {timeout_s:g} s")
    finished, value = outcome[0]
    if not finished:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
