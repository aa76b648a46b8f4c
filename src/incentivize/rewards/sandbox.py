"""Run model-written Python against tests in a separate, locked-down process (Linux).

`run_tests(program, tests)` runs `program`, then each test (Python statements, usually `assert ...`)
with the program's names in scope, in a fresh interpreter, and returns a `SandboxResult`: passed, a reason
(`"ok"`, `"failed 1/3 tests, first: ..."`, `"error: SyntaxError: ..."`, `"timeout"`, `"memory"`,
`"output limit"`, ...), tests passed out of total, and the captured output. It never raises and never
hangs on anything the program does.

What is isolated, per run (`_sandbox_setup.py` does it, step by step):

- **Time**: the wall clock (`timeout_s`, enforced by a watchdog process and again by the caller) and
  CPU time per process (RLIMIT_CPU). At the end every process of the run is killed: the run is PID 1 of
  its own PID namespace, so when it dies the kernel kills everything it started, including processes
  that left its process group; its process group is killed as well.
- **Memory**: address space per process (RLIMIT_AS); an allocation beyond it is a MemoryError, which
  is reported as `"memory"`.
- **Processes**: at most `processes` processes and threads (RLIMIT_NPROC). Root ignores that limit, so
  when the caller is root the run gets a uid and gid of its own (random, above 1.9e9, no supplementary
  groups), which also counts only this run's processes. A fork bomb gets EAGAIN.
- **Files**: the working directory is a new, empty temporary directory, with a tmpfs of `file_mb` on it
  (a private mount: the caller never sees what was written) and removed afterwards. Landlock allows
  writing only beneath it (and to /dev/null), and reading or executing only beneath the interpreter's
  installation and system directories (/usr, /lib*, /bin, /sbin, /etc, /dev, /proc): not the home
  directory, /tmp, the repository or the task's data. Files are at most `file_mb` (RLIMIT_FSIZE), at
  most `open_files` are open, and no core files. When the interpreter lives below a directory other
  users cannot enter (pyenv under /root), that directory is covered, inside the run's mount namespace,
  by an empty tmpfs with only the interpreter bound back into it.
- **Network**: a new network namespace with no interfaces up (not even loopback), and Landlock denies
  TCP bind and connect besides. No abstract unix sockets or signals reach outside the run (Landlock
  scopes), and System V IPC is private (IPC namespace).
- **Environment**: only PATH and LANG; the interpreter runs with `-I -S` (no PYTHON* variables, no
  user or site packages: the standard library only). /proc shows only the run's own processes.
- **Privileges**: no_new_privs, no capabilities after exec, and the process dies with its watchdog.
- **Output**: stdout and stderr are captured up to `output_bytes` each; more is a failure
  (`"output limit"`) and the run is killed at once, so the caller never blocks on a full pipe.

What is not isolated:

- Reading world-readable files in the system directories above (and, without Landlock, anywhere).
- CPU and memory bandwidth shared with the machine; the address-space limit is per process, so a run
  may use up to `processes` times `memory_mb`.
- The verdict is computed in the same process as the program. The harness binds the builtins it needs
  before the program runs, restores the `builtins` module before the tests, ignores reports from forked
  processes and requires a per-run nonce in its report, and the code task compares results with exact
  types (an object whose `__eq__` always returns True does not pass). Code written to read the
  harness's memory or to patch the standard library could still fool the tests; the sandbox bounds the
  damage such code can do, not what it can claim.
- Kernel exploits: this is not a security boundary against a determined attacker with a kernel bug.

Degrading: each feature the kernel refuses (a namespace, the tmpfs, the private /proc, Landlock) is
reported by the child and warned about once per process (RuntimeWarning), never silently, and the run
goes on with the rest. Dropping root's privileges is not optional: when it fails, or when the
interpreter cannot be reached by the run's uid (no mount namespace to expose it), every run fails with
`"error: the sandbox could not start: ..."`, also warned once. Run by a non-root user, the run keeps
the caller's uid inside a user namespace; where user namespaces are disabled it gets no namespaces at
all, and RLIMIT_NPROC then counts all the caller's processes.

>>> run_tests("def double(x):\\n    return 2 * x", ["assert double(2) == 4", "assert double(-1) == -2"]).reason
'ok'
>>> result = run_tests("def double(x):\\n    return x + 2", ["assert double(2) == 4", "assert double(3) == 6"])
>>> result.passed, result.tests_passed, result.reason
(False, 1, 'failed 1/2 tests, first: assert double(3) == 6: AssertionError')
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from incentivize.errors import describe

__all__ = ["SandboxLimits", "SandboxResult", "run_tests"]

_HERE = Path(__file__).resolve().parent
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_UID_BASE, _UID_SPAN = 1_900_000_000, 100_000_000  # a run's own uid when the caller is root
_SYSTEM_READ_ROOTS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev", "/proc")
_MAX_PAYLOAD_BYTES = 512 * 1024  # program + tests, handed to the harness in one pipe (at most 1 MiB unprivileged)
_GRACE_S = 0.5  # how long to wait for the output after the watchdog reported the end
_MAX_REPORT_BYTES = 64 * 1024
_STARTUP_ALLOWANCE_S = 10.0  # the caller's own deadline is the watchdog's plus this


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run. Memory and CPU apply per process; `processes` counts threads too."""

    timeout_s: float = 5.0
    cpu_s: int | None = None  # default: timeout_s rounded up
    memory_mb: int = 512
    processes: int = 16
    output_bytes: int = 64 * 1024  # per stream
    file_mb: int = 16  # largest file, and the size of the working directory's tmpfs
    open_files: int = 64

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else max(1, math.ceil(self.timeout_s))


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `passed`: the program ran and every test passed (or, with no tests, ran)."""

    passed: bool
    reason: str
    tests_passed: int = 0
    tests_total: int = 0
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of tests passed; 0 for a run that did not finish, 1 or 0 when there were no tests."""
        return self.tests_passed / self.tests_total if self.tests_total else float(self.passed)


def run_tests(
    program: str,
    tests: Sequence[str] = (),
    *,
    setup: str = "",
    limits: SandboxLimits | None = None,
    uid: int | None = None,
) -> SandboxResult:
    """Run `program`, then `setup` (test helpers), then each of `tests`, in a sandbox (module docstring).

    A test passes when it runs without an exception. `uid` picks the run's uid when the caller is
    root (default: a random one of its own). Never raises.
    """
    limits = limits or SandboxLimits()
    started = time.monotonic()
    try:
        result = _run(program, list(tests), setup, limits, uid)
    except Exception as err:  # the machinery failed (no fork, no temp dir): not the program's doing
        _warn_once("failure", f"incentivize sandbox: could not run a program: {describe(err)}")
        result = SandboxResult(False, f"error: the sandbox failed: {describe(err)}", 0, len(tests))
    return replace(result, seconds=time.monotonic() - started)


def _run(program: str, tests: list[str], setup: str, limits: SandboxLimits, uid: int | None) -> SandboxResult:
    nonce = secrets.token_hex(16)
    payload = {"nonce": nonce, "program": program, "setup": setup, "tests": tests}
    if len(json.dumps(payload)) > _MAX_PAYLOAD_BYTES:
        return SandboxResult(False, "error: the program and tests are longer than 512 KiB", 0, len(tests))
    root = os.geteuid() == 0
    if root and uid is None:
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)  # not `random`: training seeds and replays it
    run_uid = uid if root else None
    # Only the waiting may be interrupted (a caller's time limit, Ctrl-C): starting and cleaning up
    # always finish, so that no process or directory is left behind.
    with _signals_deferred():
        base = Path(tempfile.mkdtemp(prefix="incentivize-sandbox-"))
        try:
            process, report_fd = _start(base, run_uid, limits, payload)
        except BaseException:
            _remove(base)
            raise
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.fileno(), process.stderr.fileno()
    try:
        buffers, overflow, late = _read({out: limits.output_bytes, err: limits.output_bytes,
                                         report_fd: _MAX_REPORT_BYTES}, limits.timeout_s + _STARTUP_ALLOWANCE_S)
    finally:
        with _signals_deferred():
            _stop(process, run_uid)
            os.close(report_fd)
            process.stdout.close()
            process.stderr.close()
            _remove(base)
    report = _parse(bytes(buffers[report_fd]), nonce)
    stdout, stderr = (bytes(buffers[fd]).decode(errors="replace") for fd in (out, err))
    for line in report["missing"]:
        _warn_once(str(line.get("missing")), f"incentivize sandbox: no {line.get('missing')} "
                                              f"({line.get('detail')}): {line.get('effect')}")
    if report["fatal"]:
        _warn_once("fatal", f"incentivize sandbox: the sandbox could not start: {report['fatal']}")
    passed, reason, tests_passed = _outcome(report, overflow, late, limits, stderr, len(tests))
    return SandboxResult(passed, reason, tests_passed, len(tests), stdout, stderr)


def _start(base: Path, run_uid: int | None, limits: SandboxLimits,
           payload: dict[str, Any]) -> tuple[subprocess.Popen, int]:
    """Lay out `base` (the working directory `work/`, the configuration) and start the setup script in
    a new session; returns the process and the read end of its report pipe."""
    base.chmod(0o711)  # the run's uid may pass through, not list
    work = base / "work"
    work.mkdir(mode=0o700)
    if run_uid is not None:
        os.chown(work, run_uid, run_uid)
    interpreter = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, Path(interpreter).parent)}
    config = {
        "work": str(work), "uid": run_uid, "gid": run_uid, "interpreter": interpreter, "env": _ENV,
        "timeout_s": limits.timeout_s, "cpu_s": limits.cpu_seconds, "memory_bytes": limits.memory_mb << 20,
        "processes": limits.processes, "file_bytes": limits.file_mb << 20, "disk_bytes": limits.file_mb << 20,
        "open_files": limits.open_files,
        "read_roots": sorted(prefixes | {os.path.realpath(p) for p in _SYSTEM_READ_ROOTS if os.path.exists(p)}),
        "expose": _outermost(sorted(prefixes | {str(work)})),
        "harness": (_HERE / "_sandbox_harness.py").read_text(), "payload": payload,
    }
    config_file = base / "config.json"
    with os.fdopen(os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(config, f)
    report_read, report_write = os.pipe()
    try:
        process = subprocess.Popen(
            [interpreter, "-I", "-S", str(_HERE / "_sandbox_setup.py"), str(report_write), str(config_file)],
            cwd=work, env=_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(report_write,), start_new_session=True,
        )
    except BaseException:
        os.close(report_read)
        raise
    finally:
        os.close(report_write)
    return process, report_read


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGALRM and SIGINT (delivered when the block ends) in this thread."""
    held = {signal.SIGALRM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _outermost(paths: list[str]) -> list[str]:
    """`paths` without those beneath another one of them (sorted input)."""
    kept: list[str] = []
    for path in paths:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _read(caps: dict[int, int], timeout_s: float) -> tuple[dict[int, bytearray], bool, bool]:
    """Read every fd to EOF, keeping at most `caps[fd]` bytes of each.

    The fds are stdout, stderr and the report pipe, in that order. Returns (buffers, output limit
    exceeded, deadline passed). Stops at once when stdout or stderr exceeds its cap; extra bytes on the
    report pipe are read and dropped. Once the watchdog has reported the end, waits at most `_GRACE_S`
    more (processes that escaped the run could otherwise hold the pipes open until the deadline)."""
    deadline = time.monotonic() + timeout_s
    buffers = {fd: bytearray() for fd in caps}
    *strict, report = caps
    with selectors.DefaultSelector() as selector:
        for fd in caps:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return buffers, False, True
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer, room = buffers[key.fd], caps[key.fd] - len(buffers[key.fd])
                buffer += chunk[:room]
                if len(chunk) > room and key.fd in strict:
                    return buffers, True, False
                if key.fd == report and b'"exit_code"' in chunk:
                    deadline = min(deadline, time.monotonic() + _GRACE_S)
    return buffers, False, False


def _parse(raw: bytes, nonce: str) -> dict[str, Any]:
    """The report lines: the harness's result (with the right nonce), the watchdog's status (the last
    one), features the kernel refused, and a fatal setup error."""
    report: dict[str, Any] = {"result": None, "status": {}, "missing": [], "fatal": None}
    for line in raw.decode(errors="replace").splitlines():
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if not isinstance(fields, dict):
            continue
        if "nonce" in fields:
            if fields["nonce"] == nonce and report["result"] is None and _valid_result(fields):
                report["result"] = fields
        elif "exit_code" in fields:
            report["status"] = fields
        elif "missing" in fields:
            report["missing"].append(fields)
        elif "fatal" in fields and report["fatal"] is None:
            report["fatal"] = str(fields["fatal"])
    return report


def _valid_result(fields: dict[str, Any]) -> bool:
    return isinstance(fields.get("passed"), int) and isinstance(fields.get("reason"), str)


def _outcome(report: dict[str, Any], overflow: bool, late: bool, limits: SandboxLimits, stderr: str,
             total: int) -> tuple[bool, str, int]:
    """(passed, reason, tests passed) from what the run reported."""
    if overflow:
        return False, "output limit", 0
    result, status = report["result"], report["status"]
    if result is not None:
        tests_passed = max(0, min(int(result["passed"]), total))
        return result["reason"] == "ok" and tests_passed == total, result["reason"], tests_passed
    if late or status.get("timed_out"):
        return False, "timeout", 0
    if report["fatal"]:
        return False, f"error: the sandbox could not start: {report['fatal']}", 0
    sig, code = status.get("signal"), status.get("exit_code")
    cpu = status.get("cpu_s") or 0.0
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.5):
        return False, "timeout", 0
    if sig == signal.SIGXFSZ:
        return False, "file size limit", 0
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    tail = f" ({last[:200]})" if last else ""
    if isinstance(sig, int):
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return False, f"error: killed by {name}{tail}", 0
    if isinstance(code, int):
        return False, f"error: exited with status {code} before the tests finished{tail}", 0
    return False, f"error: the sandbox gave no result{tail}", 0


def _stop(process: subprocess.Popen, run_uid: int | None) -> None:
    """End the run and reap it.

    The watchdog, asked with SIGTERM, kills the sandboxed process (and with it its PID namespace) and
    reaps it; it has usually exited already. Then SIGKILL to the run's process group and to every
    process of the run's own uid (if it has one) catches what could be left without a PID namespace."""
    try:
        os.kill(process.pid, signal.SIGTERM)  # not Popen.send_signal: it would reap the watchdog
        deadline = time.monotonic() + 2.0
        # WNOWAIT: the watchdog stays a zombie, so its process group id cannot be reused before killpg
        while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
    except OSError:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    if run_uid is not None:
        _kill_uid(run_uid)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _warn_once("reap", f"incentivize sandbox: process {process.pid} did not die after SIGKILL")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (a uid of the run's own), until none is left."""
    for _ in range(20):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
            if str(uid) in uids:
                found = True
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _remove(base: Path) -> None:
    """Delete the run's directory, also when the program left directories without permissions."""
    if os.geteuid() != 0:
        for root, dirs, _ in os.walk(base):
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    try:
                        os.chmod(path, 0o700)
                    except OSError:
                        pass
    shutil.rmtree(base, ignore_errors=True)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
