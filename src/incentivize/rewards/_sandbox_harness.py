"""The unprivileged half of the sandbox: run the program, then its tests, and report one JSON line.

Runs inside the sandbox as `python -I -S -c <the text of this file> RESULT_FD` (standard library only),
with `{"nonce", "program", "setup", "tests"}` as JSON on stdin. The program runs as a module named
`__solution__` (so an `if __name__ == "__main__":` block does not run); `setup` (helpers for the tests)
and then each test run in one namespace that holds the program's names, except names that shadow
builtins. A test passes when it runs without an exception.

The report `{"nonce", "passed", "total", "reason"}` goes to RESULT_FD, only from this process (not from
processes the program forks) and only if the harness gets to the end: a program that exits early
(`sys.exit`, `os._exit`) is reported by the parent as an error, never as a pass. The nonce makes a
report written by the program itself unlikely to be accepted; code that reads this process's memory
could still forge one (see the limits in `incentivize.rewards.sandbox`).
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from typing import Any

REASON_CHARS = 300


def describe(err: BaseException) -> str:
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def run(payload: dict[str, Any], is_original: Any, exec=exec, compile=compile, len=len, enumerate=enumerate,
        isinstance=isinstance, MemoryError=MemoryError) -> dict[str, Any]:
    """Run program, setup and tests; `is_original()` is False in processes the program forked.

    The builtins it needs are bound when it is defined, and the program's changes to the `builtins`
    module are undone before the tests run, so that `builtins.exec = print` or `builtins.len = ...`
    cannot turn failing tests into passing ones.
    """
    tests: list[str] = payload["tests"]
    namespace: dict[str, Any] = {"__name__": "__solution__", "__builtins__": builtins}
    pristine = dict(vars(builtins))  # restored after the program, before the tests
    try:
        exec(compile(payload["program"], "<solution>", "exec", optimize=0), namespace)
    except BaseException as err:
        if not is_original():
            os._exit(1)
        return {"passed": 0, "total": len(tests), "reason": "memory" if isinstance(err, MemoryError) else
                f"error: {describe(err)}"}
    if not is_original():
        os._exit(0)
    table = vars(builtins)
    for name in [name for name in table if name not in pristine]:
        del table[name]
    table.update(pristine)
    # The tests see the program's names, but not those that shadow builtins (`type = ...`, `len = ...`).
    scope = {name: value for name, value in namespace.items() if name not in pristine}
    scope.update(__name__="__tests__", __builtins__=builtins)
    try:
        exec(compile(payload["setup"], "<test setup>", "exec", optimize=0), scope)
    except BaseException as err:
        return {"passed": 0, "total": len(tests), "reason": f"error: the test setup failed with {describe(err)}"}
    passed, first_failure, out_of_memory = 0, "", False
    for number, test in enumerate(tests, 1):
        try:
            exec(compile(test, f"<test {number}>", "exec", optimize=0), scope)
            passed += 1
        except BaseException as err:
            out_of_memory = out_of_memory or isinstance(err, MemoryError)
            first_failure = first_failure or f"{' '.join(test.split())[:100]}: {describe(err)}"
        if not is_original():
            os._exit(0)
    if out_of_memory:
        reason = "memory"
    elif passed == len(tests):
        reason = "ok"
    else:
        reason = f"failed {len(tests) - passed}/{len(tests)} tests, first: {first_failure}"
    return {"passed": passed, "total": len(tests), "reason": reason}


def main() -> None:
    # Taken before the program runs, so that replacing os.write or json.dumps does not reach the report.
    write, dumps, getpid, exit_ = os.write, json.dumps, os.getpid, os._exit
    result_fd = int(sys.argv[1])
    payload = json.loads(sys.stdin.buffer.read().decode())
    nonce, me = payload.pop("nonce"), getpid()
    try:
        outcome = run(payload, lambda: getpid() == me)
    except BaseException as err:  # a failure of the harness itself, say MemoryError while reporting
        outcome = {"passed": 0, "total": len(payload["tests"]), "reason": f"error: {describe(err)}"}
    if getpid() != me:
        exit_(0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    outcome["reason"] = outcome["reason"][:REASON_CHARS]
    write(result_fd, (dumps({"nonce": nonce, **outcome}) + "\n").encode())
    exit_(0)


if __name__ == "__main__":
    main()
