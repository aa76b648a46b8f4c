"""The privileged half of the sandbox (see `incentivize.rewards.sandbox` for the whole design).

`sandbox.run_tests` starts this file as `python -I -S _sandbox_setup.py RESULT_FD CONFIG_FILE` in a new
session, with a scrubbed environment, in the run's empty working directory. It runs with the caller's
privileges and uses the standard library only (no site-packages). It

1. reads and deletes the configuration file written by the parent;
2. enters new namespaces: user (when not root), network, mount, PID and IPC;
3. forks the sandboxed process, which becomes PID 1 of the new PID namespace, and acts as its watchdog:
   after `timeout_s`, or on SIGTERM from the caller, it kills it (and with it, the whole namespace),
   reaps it, and reports how it ended.

The sandboxed process, before it replaces itself with `python -I -S -c HARNESS`:

4. makes every mount private, puts a size-limited tmpfs on the working directory, makes the interpreter
   reachable for the unprivileged uid (hiding the directory that blocked it behind an empty tmpfs) and
   mounts a /proc that shows only the namespace's processes;
5. sets resource limits: address space, CPU time, file size, open files, processes, no core files;
6. when root, drops to the run's own unprivileged uid and gid with no supplementary groups;
7. dies with its parent (PR_SET_PDEATHSIG), sets no_new_privs and a Landlock ruleset: reading and
   executing only beneath the interpreter, system directories, /dev and /proc; writing only beneath the
   working directory (and /dev/null); no TCP bind or connect; no signals or abstract unix sockets
   outside the sandbox.

Each step that the kernel refuses is reported to the parent as a JSON line `{"missing": ..., "effect":
...}` on RESULT_FD (the parent warns once per feature); a step whose failure would leave the process
with more privilege than intended (dropping the uid) is fatal instead: `{"fatal": ...}`.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import sys
import time
from typing import Any

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
F_SETPIPE_SZ = 1031

# Landlock (linux/landlock.h); the syscall numbers are the same on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_MAKE_AND_REMOVE = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # what a rule on a file may grant

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def c_string(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    check(libc.mount(c_string(source), c_string(target), c_string(fstype), ctypes.c_ulong(flags), c_string(data)),
          f"mount {target}")


class Reporter:
    """JSON lines to the parent on the result pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **fields: Any) -> None:
        os.write(self.fd, (json.dumps(fields) + "\n").encode())

    def missing(self, feature: str, err: BaseException, effect: str) -> None:
        self.send(missing=feature, detail=str(err), effect=effect)


def enter_namespaces(config: dict, report: Reporter) -> set[str]:
    """Unshare what the kernel allows; returns the names of the namespaces entered."""
    entered = set()
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        try:
            check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            entered.add("user")
        except OSError as err:
            report.missing("user namespace", err, "no network, mount or PID namespace without it")
    for name, flag, effect in (
        ("network", CLONE_NEWNET, "the network is reachable except for TCP, which Landlock still blocks"),
        ("mount", CLONE_NEWNS, "no private tmpfs, /proc shows every process of the machine"),
        ("pid", CLONE_NEWPID, "processes that leave the process group outlive the run"),
        ("ipc", CLONE_NEWIPC, "System V IPC objects are shared with the machine"),
    ):
        try:
            check(libc.unshare(flag), f"unshare({name})")
            entered.add(name)
        except OSError as err:
            report.missing(f"{name} namespace", err, effect)
    return entered


def first_unsearchable_ancestor(path: str) -> str | None:
    """The first directory above `path` that other users cannot enter (`/root` is usually 0700)."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def expose(paths: list[str]) -> None:
    """Make `paths` reachable for an unprivileged uid: an empty tmpfs covers each ancestor that blocks
    them (hiding its other contents) and each path is bound back at its own place, so paths embedded in
    the interpreter (its prefix, its library RUNPATH) stay valid."""
    plan = [(path, hidden) for path in paths if (hidden := first_unsearchable_ancestor(path)) is not None]
    handles = {path: os.open(path, os.O_PATH) for path, _ in plan}  # before any tmpfs covers them
    for hidden in sorted({hidden for _, hidden in plan}):
        mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path, _ in plan:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{handles[path]}", path, None, MS_BIND | MS_REC)
        os.close(handles[path])


def prepare_filesystem(config: dict, entered: set[str], report: Reporter) -> None:
    if "mount" not in entered:
        return
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the machine
    if config["uid"] is not None:
        expose(config["expose"])
    owner = f",uid={config['uid']},gid={config['gid']}" if config["uid"] is not None else ""
    try:
        mount("tmpfs", config["work"], "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={config['disk_bytes']},nr_inodes=4096,mode=0700{owner}")
    except OSError as err:
        report.missing("tmpfs working directory", err, "files written are limited in size but not in number")
    if "pid" in entered:
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as err:
            report.missing("private /proc", err, "/proc lists every process of the machine")


def set_limits(config: dict) -> None:
    cpu = config["cpu_s"]
    for limit, value in (
        (resource.RLIMIT_AS, config["memory_bytes"]),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at cpu_s, SIGKILL one second later
        (resource.RLIMIT_FSIZE, config["file_bytes"]),
        (resource.RLIMIT_NOFILE, config["open_files"]),
        (resource.RLIMIT_NPROC, config["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(limit, (soft, hard))


def drop_privileges(config: dict) -> None:
    """Root becomes the run's own uid and gid (RLIMIT_NPROC does not apply to root)."""
    uid, gid = config["uid"], config["gid"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise OSError(f"still uid {os.getresuid()}, groups {os.getgroups()}")


def landlock(config: dict, report: Reporter) -> None:
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        err = OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        report.missing("Landlock", err, "writes are limited by file permissions only (/tmp is writable), "
                                        "reads are not limited to system directories, TCP only by the network namespace")
        return
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    write = FS_WRITE_FILE | FS_MAKE_AND_REMOVE | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    write |= FS_IOCTL_DEV if abi >= 5 else 0
    attr = RulesetAttr(read | write, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                       SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = check(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0), "landlock_create_ruleset")
    rules = [(path, read) for path in config["read_roots"]]
    rules += [(config["work"], read | write), ("/dev/null", FS_READ_FILE | FS_WRITE_FILE | (write & FS_TRUNCATE))]
    for path, allowed in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a system directory this machine does not have
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= FILE_RIGHTS
        rule = PathBeneathAttr(allowed, fd)
        check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0),
              f"landlock_add_rule {path}")
        os.close(fd)
    check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def harness_stdin(payload: bytes) -> int:
    """A pipe already holding `payload` and closed for writing: the harness's stdin."""
    read_end, write_end = os.pipe()
    if len(payload) >= 65536:
        check(libc.fcntl(write_end, F_SETPIPE_SZ, len(payload) + 4096), "grow the stdin pipe")
    os.write(write_end, payload)
    os.close(write_end)
    return read_end


def sandboxed_child(config: dict, entered: set[str], report: Reporter) -> None:
    """Runs in the forked child; never returns."""
    try:
        prepare_filesystem(config, entered, report)
        stdin = harness_stdin(json.dumps(config["payload"]).encode())
        set_limits(config)
        if config["uid"] is not None:
            drop_privileges(config)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # after setuid
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        landlock(config, report)
        os.dup2(stdin, 0)
        os.close(stdin)
        os.set_inheritable(report.fd, True)
        os.chdir(config["work"])
        interpreter = config["interpreter"]
        os.execve(interpreter, [interpreter, "-I", "-S", "-c", config["harness"], str(report.fd)], config["env"])
    except BaseException as err:
        try:
            report.send(fatal=f"{type(err).__name__}: {err}")
        finally:
            os._exit(70)


class Stop(Exception):
    """SIGTERM from the caller: the run is over (output limit, interrupted caller)."""


def raise_stop(signum: int, frame: Any) -> None:
    raise Stop


def watch(child: int, timeout_s: float) -> tuple[int, Any, bool]:
    """Wait for `child` at most `timeout_s` seconds (or until SIGTERM), then kill it; returns (wait
    status, rusage, timed out). The child is reaped here, so it never lingers as a zombie."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, usage = os.wait4(child, os.WNOHANG)
            if pid:
                return status, usage, False
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(child, signal.SIGKILL)  # as PID 1 of its namespace, it takes every process there along
    _, status, usage = os.wait4(child, 0)
    return status, usage, time.monotonic() >= deadline


def main() -> None:
    report = Reporter(int(sys.argv[1]))
    with open(sys.argv[2]) as f:
        config = json.load(f)
    os.unlink(sys.argv[2])
    entered = enter_namespaces(config, report)
    child = os.fork()
    if child == 0:
        sandboxed_child(config, entered, report)
    signal.signal(signal.SIGTERM, raise_stop)
    status, usage, timed_out = watch(child, config["timeout_s"])
    report.send(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out,
        namespaces=sorted(entered),
    )


if __name__ == "__main__":
    main()
