"""Code-execution reward: run the model's Python and its tests in a sandbox; exit 0 scores 1.

The sandbox, layer by layer (each one is tested in tests/rl/test_code_exec.py):
- A child `python -I` in a fresh temporary directory (deleted afterwards), minimal environment,
  stdin closed, in a session of its own (`start_new_session`, done by subprocess in C).
- A bootstrap script in that child sets everything else up, then forks and execs the program. Not
  `preexec_fn`: that runs Python between fork and exec in a copy of a multi-threaded process (the
  reward threads), where a lock another thread held at fork time stays locked forever; CPython
  documents it as unsafe with threads. The bootstrap is a fresh single-threaded interpreter, and it
  must fork anyway: a new PID namespace applies only to the children of the process that makes it.
- Namespaces: network (no interface up, not even loopback) and PID (the program is its init: when
  it exits, the kernel kills and reaps everything it started). Root makes them directly, another
  user inside a user namespace of its own. When the kernel refuses, the run goes on without them,
  and `ExecResult.network_isolated` and a log warning say so.
- Limits (setrlimit): CPU, address space, file size, no core files, open files, processes.
- A uid of its own when running as root: the kernel never enforces RLIMIT_NPROC for root, so the
  program runs as an unprivileged uid claimed for this run alone (one per concurrent run, across
  processes, by flock), with no supplementary groups and no_new_privs. Afterwards every process of
  that uid is killed at once: kill(-1) from a helper running as that uid. Such a uid cannot enter
  /root (mode 0700), where a root setup's venv or pyenv often lives: the program then runs on the
  system python3 of the same version, without the venv's packages (logged once). Not root:
  RLIMIT_NPROC counts all of the user's processes, so it is their current count plus the allowance.
- The parent reads stdout and stderr as they come, keeps at most `output_bytes` and kills the run
  on the next byte, and kills it at `wall_s`.

Not covered: the program sees the host's /proc and may write to world-writable directories such
as /tmp, which outlive the run (only its working directory is deleted), and may fill the disk with
many files each under `file_mb` until `wall_s`. Not root, concurrent runs share the user's process
count, and without a PID namespace a program that leaves its session and clears its parent-death
signal outlives the run. The tests run in the program's own interpreter, so a program that reads
its source can forge the token `verify_code` checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rl.tasks.format import ANSWER_CLOSE, ANSWER_OPEN

log = logging.getLogger(__name__)

# Uids the sandbox runs as under root, one per concurrent run: high enough to belong to no account.
SANDBOX_UIDS = range(1_900_000_000, 1_900_000_064)
# Where the flock files that claim those uids live (shared by every process on the machine).
_UID_LOCKS = os.path.join(tempfile.gettempdir(), "reasonforge-sandbox-uids")

Status = Literal["ok", "error", "timeout", "cpu_limit", "output_limit", "sandbox_error"]


@dataclass(frozen=True)
class CodeLimits:
    # CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL a second later).
    cpu_s: int = 5
    # Wall seconds for the whole run, interpreter start-up included; the parent kills it then.
    wall_s: float = 10.0
    # Address space per process (RLIMIT_AS), which is more than resident memory: Python needs ~30.
    memory_mb: int = 512
    # stdout and stderr bytes kept, together; one more byte kills the run.
    output_bytes: int = 1 << 20
    # Processes and threads at once (RLIMIT_NPROC), the program's own included.
    max_processes: int = 16
    # Largest file the program may write (RLIMIT_FSIZE); a bigger write fails with EFBIG.
    file_mb: int = 16
    # Open file descriptors (RLIMIT_NOFILE).
    open_files: int = 64


# The limits `verify_code` runs under: it has the verifiers' signature, (completion, answer, meta).
# What `verify_code` (the `code` verifier) runs under: inside rlvr.reward_timeout_s (5 s by
# default), so the sandbox kills a slow program and cleans up before the reward scorer gives up on
# the call and leaves its thread behind.
VERIFY_LIMITS = CodeLimits(cpu_s=3, wall_s=4.0)


@dataclass(frozen=True)
class ExecResult:
    # "ok": exit 0; "error": any other exit; "cpu_limit": killed at cpu_s; "timeout": killed at
    # wall_s; "output_limit": killed past output_bytes; "sandbox_error": the sandbox failed to start.
    status: Status
    # The program's exit code, negative for the signal that killed it; None when it never ran.
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    # Whether the program ran in a network namespace with no interfaces; see `detail` when not.
    network_isolated: bool
    # Why the sandbox could not isolate the network or start, in the kernel's words.
    detail: str = ""


# The bootstrap: argv[1] is a JSON config from `run_python`. It reports on the status pipe
# "namespaces <net 0|1> <pid 0|1> <why not>", then "error <what>" if the program could not start,
# then "exit <code> <CPU seconds>" once the program has exited.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
status, sandbox_uid = cfg["status_fd"], cfg["uid"]
libc = ctypes.CDLL(None, use_errno=True)
NEWUSER, NEWPID, NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

def tell(line):
    os.write(status, (line.replace("\n", " ") + "\n").encode())

def unshare(flags):
    return "" if libc.unshare(flags) == 0 else os.strerror(ctypes.get_errno())

def prctl(option, value):
    return libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))

uid, gid = os.getuid(), os.getgid()
userns = 0 if sandbox_uid is not None else NEWUSER
why = unshare(userns | NEWNET | NEWPID)
net = pid = not why
if why:
    why = unshare(userns | NEWNET)
    net = not why
if userns and net:
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
tell(f"namespaces {int(net)} {int(pid)} {why}")
prctl(PR_SET_CHILD_SUBREAPER, 1)
child = os.fork()
if child == 0:
    try:
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if sandbox_uid is not None:
            os.setgroups([])
            os.setgid(sandbox_uid)
            os.setuid(sandbox_uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_PDEATHSIG, 9)
        os.set_inheritable(status, False)
        os.execv(cfg["python"], [cfg["python"], "-I", cfg["program"]])
    except BaseException as error:
        tell(f"error {type(error).__name__}: {error}")
        os._exit(127)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
_, wait_status, usage = os.wait4(child, 0)
tell(f"exit {os.waitstatus_to_exitcode(wait_status)} {usage.ru_utime + usage.ru_stime:.3f}")
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""

# Run as the sandbox uid: SIGKILL every process that uid may signal, i.e. all of its own, at once
# (the kernel walks the task list under a lock that fork also takes, so none is born meanwhile).
_KILL_ALL = "import os\ntry:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n"


def run_python(source: str, limits: CodeLimits = CodeLimits()) -> ExecResult:
    """Run `source` as a Python program in the sandbox; never returns before all of it is dead."""
    started = time.monotonic()
    with _sandbox_uid() as uid, _work_dir(uid) as work_dir:
        program = os.path.join(work_dir, "main.py")
        with open(program, "w", encoding="utf-8", errors="replace") as f:
            f.write(source)
        os.chmod(program, 0o644)  # whatever our umask: the sandbox uid must read it
        python, rlimits = _sandbox_python(uid is not None), _rlimits(limits, uid is not None)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": work_dir,
            "TMPDIR": work_dir,
        }
        status_r, status_w = os.pipe()
        config = {"status_fd": status_w, "uid": uid, "python": python, "program": program, "rlimits": rlimits}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                cwd=work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        with contextlib.closing(_Sandbox(proc, status_r, uid)) as sandbox:
            cut_short = sandbox.pump(started + limits.wall_s, limits.output_bytes)
        return sandbox.result(cut_short, time.monotonic() - started, limits.cpu_s)


class _Sandbox:
    """A running sandbox: the bootstrap process, its output so far, and how to kill all of it."""

    # Seconds the pipes may stay open after the program exited before what holds them is killed.
    EXIT_GRACE_S = 0.2

    def __init__(self, proc: subprocess.Popen, status_fd: int, uid: int | None) -> None:
        self.proc, self.status_fd, self.uid = proc, status_fd, uid
        self.output = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self.notes = bytearray()
        self._killed = False

    def pump(self, deadline: float, output_bytes: int) -> Status | None:
        """Read until the program and all it started have exited; why the run was cut short, if it was."""
        selector = selectors.DefaultSelector()
        for fd in (*self.output, self.status_fd):
            selector.register(fd, selectors.EVENT_READ)
        kept, grace_end = 0, None
        with selector:
            while selector.get_map():
                now = time.monotonic()
                if now >= deadline:
                    return "timeout"
                if grace_end is not None and now >= grace_end and not self._killed:
                    # Without a PID namespace, what the program left running still holds the pipes.
                    self.kill()
                wait_until = deadline if grace_end is None or self._killed else min(deadline, grace_end)
                for key, _ in selector.select(wait_until - now):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fd)
                    elif key.fd == self.status_fd:
                        self.notes += chunk
                    elif kept + len(chunk) > output_bytes:
                        return "output_limit"
                    else:
                        self.output[key.fd] += chunk
                        kept += len(chunk)
                if grace_end is None and b"\nexit " in b"\n" + self.notes:
                    grace_end = time.monotonic() + self.EXIT_GRACE_S
        return None

    def kill(self) -> None:
        """SIGKILL the program, everything it started and the bootstrap; reap the bootstrap."""
        if self._killed:
            return
        self._killed = True
        if self.uid is not None:
            _kill_uid(self.uid)
            # The bootstrap now reaps what it adopted and exits. It is not reaped here yet: while
            # it is a zombie, its pid, which is the process group's id, cannot be reused.
            _exited(self.proc.pid, timeout_s=1.0)
        with contextlib.suppress(ProcessLookupError):  # the group is already empty
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        # The bootstrap held the status pipe's only write end: read it to the end.
        while chunk := os.read(self.status_fd, 1 << 16):
            self.notes += chunk

    def close(self) -> None:
        self.kill()
        os.close(self.status_fd)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def result(self, cut_short: Status | None, wall_s: float, cpu_limit_s: float) -> ExecResult:
        lines = self.notes.decode(errors="replace").splitlines()
        notes = dict(line.partition(" ")[::2] for line in lines)
        net, _, why = notes.get("namespaces", "0 0 the bootstrap did not start").split(" ", 2)
        if net != "1":
            _warn_once(f"sandboxed code runs WITH network access: no network namespace ({why})")
        exit_code, _, cpu_s = notes.get("exit", "").partition(" ")
        code = int(exit_code) if exit_code else None
        if cut_short is not None:
            status = cut_short
        elif "error" in notes or code is None:
            status = "sandbox_error"
        elif code in (-signal.SIGXCPU, -signal.SIGKILL) and float(cpu_s) >= cpu_limit_s:
            # SIGXCPU at the soft limit, but the program is its PID namespace's init, which the
            # kernel spares signals it does not handle: it dies by the SIGKILL at the hard limit.
            status = "cpu_limit"
        else:
            status = "ok" if code == 0 else "error"
        stdout, stderr = (bytes(b).decode(errors="replace") for b in self.output.values())
        if status == "sandbox_error":
            _warn_once(f"the code sandbox failed to start: {notes.get('error') or stderr[-500:]}")
        return ExecResult(status, code, stdout, stderr, wall_s, net == "1", notes.get("error", why))


@functools.cache
def _warn_once(message: str) -> None:
    # Once per process and message: a reward runs thousands of times a step.
    log.warning(message)


def _rlimits(limits: CodeLimits, own_uid: bool) -> list[tuple[str, int, int]]:
    processes = limits.max_processes if own_uid else _tasks_of(os.getuid()) + limits.max_processes
    memory, file_size = limits.memory_mb << 20, limits.file_mb << 20
    return [
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", memory, memory),
        ("RLIMIT_FSIZE", file_size, file_size),
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", processes, processes),
    ]


@contextlib.contextmanager
def _sandbox_uid() -> Iterator[int | None]:
    """A uid from SANDBOX_UIDS that no other run holds, with nothing left running under it; None
    when not root (the program then runs as the current user)."""
    if os.geteuid() != 0:
        yield None
        return
    os.makedirs(_UID_LOCKS, mode=0o700, exist_ok=True)
    for uid in SANDBOX_UIDS:
        fd = os.open(os.path.join(_UID_LOCKS, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            _kill_uid(uid)  # whatever a run whose parent died left behind
            yield uid
        finally:
            os.close(fd)  # releases the lock
        return
    raise RuntimeError(
        f"all {len(SANDBOX_UIDS)} sandbox uids are in use (locks in {_UID_LOCKS}); run fewer code rewards at once"
    )


@contextlib.contextmanager
def _work_dir(uid: int | None) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="reasonforge-sandbox-")
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        try:
            shutil.rmtree(path)
        except (RecursionError, PermissionError):
            # shutil.rmtree recurses once per directory level (a program nests 3000 in 60 ms) and
            # cannot enter a directory the program chmod-ed to 000 (when it runs as our own user);
            # chmod and rm walk trees iteratively.
            subprocess.run(["chmod", "-R", "u+rwx", "--", path], check=True)
            subprocess.run(["rm", "-rf", "--", path], check=True)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as `uid` and wait until none is left."""
    for _ in range(5):
        if not processes_of(uid, zombies=False):
            return
        subprocess.run(
            [_sandbox_python(True), "-I", "-S", "-c", _KILL_ALL],
            cwd="/",
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        # SIGKILLed processes take a moment to go (longer in an uninterruptible disk wait).
        deadline = time.monotonic() + 0.5
        while processes_of(uid, zombies=False) and time.monotonic() < deadline:
            time.sleep(0.005)
    raise RuntimeError(f"processes of sandbox uid {uid} survive SIGKILL: {processes_of(uid, zombies=False)}")


def processes_of(uid: int, zombies: bool = True) -> list[int]:
    """Pids of the processes whose real or saved uid is `uid` (what kill() from that uid reaches)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):  # it exited while we looked
            continue
        real, _, saved, _ = (int(u) for u in fields["Uid"].split())
        if uid in (real, saved) and (zombies or not fields["State"].strip().startswith("Z")):
            pids.append(int(name))
    return pids


def _tasks_of(uid: int) -> int:
    """Processes and threads of `uid`: what RLIMIT_NPROC counts."""
    total = 0
    for pid in processes_of(uid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return total


def _exited(pid: int, timeout_s: float) -> bool:
    """Whether child `pid` exits within `timeout_s`, without reaping it."""
    deadline = time.monotonic() + timeout_s
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@functools.cache
def _sandbox_python(own_uid: bool) -> str:
    """The interpreter the program runs on: ours, unless the sandbox uid cannot reach it.

    Under root a venv or pyenv often lives in /root (mode 0700), where no other uid can enter; then
    a system python3 of the same version, with a warning, since the program loses the venv.
    """
    ours = [sys.executable, sys.prefix, sysconfig.get_paths()["stdlib"]]
    if not own_uid or all(map(_others_can_reach, ours)):
        return sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"):
        if os.path.exists(candidate) and _others_can_reach(candidate):
            log.warning(
                "the sandbox uid cannot reach %s; sandboxed code runs on %s", sys.executable, candidate
            )
            return candidate
    raise RuntimeError(
        f"the sandbox uid cannot reach this interpreter ({sys.executable}: a directory on the way is not "
        f"searchable by others) and there is no python{version} in /usr/local/bin or /usr/bin"
    )


def _others_can_reach(path: str) -> bool:
    """Whether a user with no rights of its own can open `path`: every directory above it searchable."""
    path = os.path.realpath(path)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return True
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        path = parent


def extract_program(completion: str) -> str:
    """The last ```python fenced block, else the last `<answer>` pair's content, else the whole text."""
    # rfind, not a lazy regex: on many unclosed fences a regex rescans the tail once per fence.
    start = completion.rfind("```python")
    while start >= 0:
        body = completion.find("\n", start)
        end = completion.find("```", body) if body >= 0 else -1
        if end >= 0:
            return completion[body + 1 : end]
        start = completion.rfind("```python", 0, start)
    close = completion.rfind(ANSWER_CLOSE)
    open_ = completion.rfind(ANSWER_OPEN, 0, max(close, 0))
    if close >= 0 and open_ >= 0:
        return completion[open_ + len(ANSWER_OPEN) : close]
    return completion


def verify_code(completion: str, answer: str, meta: Mapping[str, Any] | None = None) -> float:
    """1.0 when the program in `completion`, followed by the tests, exits 0 in the sandbox, else 0.0.

    The tests are `meta["tests"]` (Python statements, e.g. assert lines) when given, else `answer`
    (test code). After the tests the run prints a random token, and only a run that printed it
    counts: a program that calls `sys.exit(0)` or `os._exit(0)` before the tests scores 0.
    """
    if not isinstance(completion, str):
        return 0.0
    tests = (meta or {}).get("tests", answer)
    if not isinstance(tests, str):
        tests = "\n".join(str(statement) for statement in tests)
    token = secrets.token_hex(16)
    source = f"{extract_program(completion)}\n\n{tests}\n\nimport os as _os\n_os.write(1, b'\\n{token}\\n')\n"
    result = run_python(source, VERIFY_LIMITS)
    return float(result.status == "ok" and token in result.stdout)
