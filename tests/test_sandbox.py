"""The sandbox for code rewards, the code reward and the code task.

Every hostile program must end as a failure with a telling reason, leave nothing behind (no process,
no file) and leave the caller free to go on. Limits are small so the whole file runs in seconds.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from incentivize.rewards.code import code_reward, extract_program
from incentivize.rewards.sandbox import SandboxLimits, SandboxResult, run_tests
from incentivize.tasks import load_task
from incentivize.tasks.code import PROBLEMS, TEST_SETUP, CodeTask

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")

FAST = SandboxLimits(timeout_s=1.5)
DOUBLE = "def double(x):\n    return 2 * x\n"


def processes_of(uid: int) -> list[int]:
    """Pids of live processes whose real, effective, saved or filesystem uid is `uid`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            if str(uid) in uids:
                found.append(int(entry.name))
    return found


def run_watched(program: str, tests=(), limits=FAST) -> tuple[SandboxResult, int, int]:
    """Run as a fresh uid (when root) while counting its processes: (result, most seen at once, left after)."""
    uid = 1_990_000_000 + secrets.randbelow(1_000_000)
    most, done = 0, threading.Event()

    def count() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(processes_of(uid)))
            time.sleep(0.01)

    watcher = threading.Thread(target=count, daemon=True)
    watcher.start()
    try:
        result = run_tests(program, tests, limits=limits, uid=uid)
    finally:
        done.set()
        watcher.join()
    return result, most, len(processes_of(uid))


def assert_machine_is_fine() -> None:
    assert subprocess.run(["true"]).returncode == 0  # we can still fork
    assert run_tests(DOUBLE, ["assert double(2) == 4"], limits=FAST).passed


def test_a_correct_solution_passes_and_its_output_is_captured():
    result = run_tests(DOUBLE + "print('hello')", ["assert double(2) == 4", "assert double(-3) == -6"])
    assert (result.passed, result.reason, result.tests_passed, result.tests_total) == (True, "ok", 2, 2)
    assert result.stdout == "hello\n" and result.fraction == 1.0
    assert result.seconds < 5


def test_a_wrong_solution_fails_and_counts_the_tests_it_passes():
    result = run_tests("def double(x):\n    return x + 2\n", ["assert double(2) == 4", "assert double(3) == 6",
                                                          "assert double(5) == 10"])
    assert not result.passed and (result.tests_passed, result.tests_total) == (1, 3)
    assert result.reason.startswith("failed 2/3 tests, first: assert double(3) == 6: AssertionError")
    assert result.fraction == pytest.approx(1 / 3)


def test_a_program_that_does_not_run_fails_all_tests():
    result = run_tests("def double(x)\n    return 2 * x\n", ["assert double(2) == 4"])
    assert not result.passed and result.tests_passed == 0 and result.reason.startswith("error: SyntaxError")


@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(1000)\n",
                                     "def double(x):\n    while True:\n        pass\n"])
def test_a_program_that_never_ends_is_stopped_at_the_time_limit(program):
    started = time.monotonic()
    result = run_tests(program, ["assert double(2) == 4"], limits=SandboxLimits(timeout_s=1.0))
    elapsed = time.monotonic() - started
    assert not result.passed and result.reason == "timeout" and result.fraction == 0.0
    assert 0.9 < elapsed < 4.0


@pytest.mark.skipif(os.geteuid() != 0, reason="the run gets a uid of its own only when the caller is root")
@pytest.mark.parametrize("program, reason", [
    # every process forks as fast as it can, ignores the errors, and then sleeps forever
    ("import os, time\nfor _ in range(500):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
     "time.sleep(1000)\n", "timeout"),
    # spawning interpreters that would outlive the run
    ("import subprocess, sys\nchildren = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])"
     " for _ in range(100)]\n", "error: BlockingIOError"),
])
def test_a_fork_bomb_is_contained_and_leaves_no_process_behind(program, reason):
    limits = SandboxLimits(timeout_s=1.5, processes=8)
    result, most, left = run_watched(program, ["assert True"], limits)
    assert not result.passed and result.reason.startswith(reason), result.reason
    assert 2 <= most <= limits.processes  # it did fork, up to the limit and no further
    assert left == 0
    assert_machine_is_fine()


class Interrupted(BaseException):
    pass


def test_a_run_interrupted_by_the_caller_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a 0700 directory: the run's uid needs it exposed
    assert run_tests(DOUBLE, ["assert double(1) == 2"], limits=FAST).passed

    def interrupt(signum, frame):
        raise Interrupted

    uid = 1_990_000_000 + secrets.randbelow(1_000_000)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            run_tests("import time\ntime.sleep(1000)\n", limits=SandboxLimits(timeout_s=10), uid=uid)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 2.0
    assert list(tmp_path.iterdir()) == [] and processes_of(uid) == []


@pytest.mark.parametrize("program", ["data = bytearray(10 * 1024 ** 3)\n",
                                     DOUBLE + "def grow():\n    return [0] * (10 * 1024 ** 3)\n"])
def test_allocating_10_gb_fails_with_the_memory_limit(program):
    result = run_tests(program, ["assert grow()"] if "grow" in program else [], limits=FAST)
    assert not result.passed and result.reason == "memory"


def test_no_network_not_even_to_a_socket_listening_in_the_caller():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    attempts = {
        "tcp to 1.1.1.1:53": "socket.create_connection(('1.1.1.1', 53), timeout=1)",
        f"tcp to 127.0.0.1:{port}": f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "udp to 1.1.1.1:53": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))",
        "tcp server": "socket.create_server(('0.0.0.0', 8765))",
    }
    try:
        for name, attempt in attempts.items():
            result = run_tests(f"import socket\n{attempt}\nprint('connected')\n", ["assert True"], limits=FAST)
            assert not result.passed and "connected" not in result.stdout, name
            assert result.reason.startswith(("error: PermissionError", "error: OSError")), (name, result.reason)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody knocked
    finally:
        listener.close()


@pytest.mark.parametrize("where", ["home", "tmp", "repository"])
def test_no_writing_outside_the_working_directory(where):
    directory = {"home": Path.home(), "tmp": Path(tempfile.gettempdir()), "repository": Path(__file__).parent}[where]
    target = directory / f"incentivize-sandbox-escape-{secrets.token_hex(4)}"
    result = run_tests(f"open({str(target)!r}, 'w').write('escaped')\n", ["assert True"], limits=FAST)
    assert not result.passed and result.reason.startswith("error: PermissionError"), result.reason
    assert not target.exists()


def test_the_working_directory_is_empty_writable_and_gone_afterwards():
    program = "import os\nprint(os.getcwd(), os.listdir('.'))\nopen('scratch.txt', 'w').write('x' * 1000)\n"
    result = run_tests(program, ["import os\nassert os.listdir('.') == ['scratch.txt']"], limits=FAST)
    assert result.passed, result.reason
    cwd, listing = result.stdout.split(" ", 1)
    assert listing.strip() == "[]" and not Path(cwd).exists()


def test_no_reading_outside_system_directories():
    result = run_tests(f"print(open({str(Path(__file__))!r}).read())\n", ["assert True"], limits=FAST)
    assert not result.passed and result.reason.startswith("error: PermissionError") and result.stdout == ""


def test_environment_secrets_are_not_readable(monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("INCENTIVIZE_TEST_SECRET", secret)
    program = (
        "import os\nseen = os.environ.get('INCENTIVIZE_TEST_SECRET', '')\nprint(sorted(os.environ))\n"
        f"for path in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/self/environ']:\n"
        "    try:\n        print(open(path, 'rb').read())\n    except OSError as err:\n        print(err)\n"
    )
    result = run_tests(program, ["assert len(seen) == 32"], limits=FAST)
    assert not result.passed and result.reason.startswith("failed 1/1 tests")
    assert secret not in result.stdout + result.stderr + result.reason
    assert "['LANG', 'PATH']" in result.stdout


@pytest.mark.parametrize("program", ["print('x' * 10_000_000)\n", "while True:\n    print('y' * 1000)\n",
                                     "import sys\nwhile True:\n    sys.stderr.write('z' * 1000)\n"])
def test_huge_output_is_capped_and_fails(program):
    limits = SandboxLimits(timeout_s=5.0, output_bytes=64 * 1024)
    started = time.monotonic()
    result = run_tests(program, ["assert True"], limits=limits)
    assert not result.passed and result.reason == "output limit"
    assert len(result.stdout.encode()) <= limits.output_bytes and len(result.stderr.encode()) <= limits.output_bytes
    assert time.monotonic() - started < 4.0  # stopped at the limit, not at the timeout


@pytest.mark.parametrize("program, reason", [
    ("import os\nos._exit(0)\n", "error: exited with status 0 before the tests finished"),
    ("import sys\nsys.exit(0)\n", "error: SystemExit: 0"),
    # a fake report on every descriptor the result pipe could be
    ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"nonce\": \"x\", \"passed\": 1, \"total\": 1, "
     "\"reason\": \"ok\"}\\n')\n    except OSError:\n        pass\nos._exit(0)\n", "error: exited with status 0"),
    ("import builtins\nbuiltins.exec = lambda *args, **kwargs: None\nbuiltins.len = lambda x: 0\n", "failed 1/1"),
    ("type = lambda x: int\nclass Yes:\n    def __eq__(self, other):\n        return True\n"
     "def double(x):\n    return Yes()\n", "failed 1/1"),
])
def test_reward_hacks_do_not_pass(program, reason):
    result = run_tests(program, ["assert _same(double(2), 4)"], setup=TEST_SETUP, limits=FAST)
    assert not result.passed and result.reason.startswith(reason), result.reason


def test_extract_program():
    assert extract_program("Sure!\n```python\ndef f():\n    return 1\n```\n```python\nprint(f())\n```") == (
        "def f():\n    return 1\n")
    assert extract_program("```\nx = 1\n```") == "x = 1\n"
    assert extract_program("x = 2") == "x = 2"
    assert extract_program("```Python\ny = 3") == "y = 3"  # cut off by the token limit


def test_the_code_task_splits_prompts_and_references():
    task = load_task("code", timeout_s=2.0)
    assert isinstance(task, CodeTask) and len(PROBLEMS) == 50
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (40, 10) and not {e.id for e in train} & {e.id for e in test}
    assert task.examples("test", 3) == test[:3] and [e.id for e in CodeTask().examples("test")] == [e.id for e in test]
    assert all("```python" in task.user_message(e) and e.columns["tests"] for e in train + test)
    for problem in PROBLEMS:  # every reference passes its own tests (in this process: fast)
        namespace: dict = {}
        exec(problem.solution, namespace)
        exec(TEST_SETUP, namespace)
        for test_code in problem.tests():
            exec(test_code, namespace)


def test_the_code_task_verifies_in_the_sandbox():
    task = CodeTask(timeout_s=1.0)
    example = task.examples("test")[0]
    entry = example.columns["entry_point"]
    reference = f"Here you go:\n```python\n{example.solution}```"
    assert task.verify(example, reference).correct
    assert task.verify(example, reference).extracted == example.solution
    assert not task.verify(example, f"```python\ndef {entry}(*args):\n    return None\n```").correct
    assert not task.verify(example, f"```python\ndef {entry}(*args):\n    while True:\n        pass\n```").correct
    assert task.verify(example, "").extracted is None


def test_code_reward_gives_the_share_of_tests_passed():
    tests = ["assert _same(double(1), 2)", "assert _same(double(2), 4)", "assert _same(double(0), 0)"]
    completions = [f"```python\n{DOUBLE}```", "```python\ndef double(x):\n    return x * x\n```",
                   "```python\ndef double(x):\n    while True:\n        pass\n```"]
    rewards = code_reward([None] * 3, completions, tests=[tests] * 3, setup=[TEST_SETUP] * 3, timeout_s=1.0)
    assert rewards == [1.0, pytest.approx(2 / 3), 0.0]  # x * x is right for 0 and 2, wrong for 1


def test_a_tiny_training_run_on_the_code_task_goes_on_past_a_hanging_completion(tmp_path, monkeypatch):
    import incentivize.tasks.code as code_module
    from incentivize.config import load_config
    from incentivize.trainers.rl import train

    real_check, results = code_module.check_program, []

    def first_completion_hangs(program, tests, setup="", limits=None):
        result = real_check("while True:\n    pass\n" if not results else program, tests, setup, limits)
        results.append(result)
        return result

    monkeypatch.setattr(code_module, "check_program", first_completion_hangs)
    config = load_config("grpo", None, [
        "model=tiny-random", "task=code", "task_options.timeout_s=1", "max_steps=2", "num_generations=4",
        "generation_batch_size=8", "max_completion_length=12", "micro_batch_size=4", "eval_before=false",
        "eval_limit=2", f"output_dir={tmp_path}/run",
    ])
    run = train(config)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert results[0].reason == "timeout"
    assert len(results) == 2 * 8 + 2  # every completion of both steps, then the final evaluation
    assert all(not r.reason.startswith("error: the sandbox") for r in results)
