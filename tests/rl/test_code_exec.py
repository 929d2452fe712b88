"""The code sandbox: each test fails if the protection it names breaks."""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

from rl.tasks import code_exec
from rl.tasks.code_exec import CodeLimits, extract_program, processes_of, run_python, verify_code

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
# Prints who it is, then never stops forking, whatever fork says.
FORK_BOMB = (
    "import os\nprint(os.getuid(), os.getcwd(), flush=True)\n"
    "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
)


def _leftovers(stdout: str) -> list[int]:
    """Processes of a sandbox that printed its uid and working directory, still running."""
    uid, cwd = stdout.split()[:2]
    pids = processes_of(int(uid)) if int(uid) != os.getuid() else []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{name}/cwd").startswith(cwd):
                pids.append(int(name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def test_a_correct_function_passes_its_asserts():
    assert verify_code(f"<think>easy</think> {ADD}", ADD_TESTS) == 1.0
    assert verify_code(ADD, "", {"tests": ["assert add(2, 2) == 4", "assert add(0, 0) == 0"]}) == 1.0


def test_a_wrong_function_scores_zero():
    wrong = ADD.replace("a + b", "a - b")
    assert verify_code(wrong, ADD_TESTS) == 0.0
    assert verify_code(wrong, "", {"tests": ["assert add(2, 2) == 4"]}) == 0.0
    assert verify_code("```python\ndef add(a, b) return\n```", ADD_TESTS) == 0.0


@pytest.mark.parametrize("escape", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exiting_before_the_tests_scores_zero(escape):
    assert verify_code(f"```python\n{escape}\n```", "assert False") == 0.0


@pytest.mark.parametrize("completion", ["", "\x00\ud800", "```python", "```python\n" * 10_000, "<answer>"])
def test_garbage_completions_score_zero(completion):
    assert verify_code(completion, ADD_TESTS) == 0.0


def test_the_program_is_the_last_python_block_else_the_answer_else_the_text():
    assert extract_program("```python\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_program("<answer>c = 3</answer>") == "c = 3"
    assert extract_program("```python\nd = 4\n```<answer>e = 5</answer>") == "d = 4\n"
    assert extract_program("f = 6") == "f = 6"


def test_the_program_runs_unprivileged_in_a_fresh_minimal_environment():
    source = (
        "import os, sys\nprint(os.getuid(), os.getgroups(), sorted(os.environ), os.listdir('.'))\n"
        "try:\n    input()\nexcept EOFError:\n    print('no stdin')\n"
    )
    result = run_python(source)
    assert result.status == "ok", result
    uid, rest = result.stdout.split(" ", 1)
    if os.geteuid() == 0:
        assert int(uid) != 0 and rest.startswith("[] ")
    assert "['HOME', 'LANG', 'PATH', 'TMPDIR'] ['main.py']" in rest
    assert "no stdin" in result.stdout


def test_a_busy_loop_is_stopped_at_its_cpu_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass", CodeLimits(cpu_s=1, wall_s=30))
    assert result.status == "cpu_limit", result
    assert time.monotonic() - start < 10


def test_a_sleeping_program_is_killed_at_wall_s():
    start = time.monotonic()
    result = run_python("import time\ntime.sleep(60)", CodeLimits(wall_s=1.5))
    assert result.status == "timeout", result
    assert time.monotonic() - start < 1.5 + 3


def test_an_infinite_loop_scores_zero_within_about_wall_s(monkeypatch):
    monkeypatch.setattr(code_exec, "VERIFY_LIMITS", CodeLimits(wall_s=2))
    start = time.monotonic()
    assert verify_code("```python\nwhile True:\n    pass\n```", ADD_TESTS) == 0.0
    assert time.monotonic() - start < 2 + 3


@pytest.mark.parametrize(
    "flood",
    [
        "print('x' * 100_000_000)",
        "while True:\n    print('x' * 1000)",
        "import os\nos.write(2, b'y' * 10**8)",
    ],
)
def test_100mb_of_output_is_cut_off_without_buffering_it(flood):
    limits = CodeLimits()
    tracemalloc.start()
    try:
        start = time.monotonic()
        result = run_python(flood, limits)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "output_limit", result.status
    assert len(result.stdout) + len(result.stderr) <= limits.output_bytes
    assert elapsed < 5
    # What the parent allocated in Python meanwhile: the kept megabyte and its decoded copies.
    assert peak < 10 * limits.output_bytes


def test_writing_a_huge_file_fails():
    limits = CodeLimits(file_mb=4)
    source = (
        "try:\n    open('big', 'wb').write(b'x' * (64 << 20))\nexcept OSError as error:\n    print(error.strerror)\n"
        "import os\nprint(os.path.getsize('big'))"
    )
    result = run_python(source, limits)
    assert result.status == "ok", result
    assert result.stdout.split("\n")[:2] == ["File too large", str(4 << 20)]


def test_memory_beyond_the_limit_fails():
    result = run_python(
        "try:\n    b = bytearray(1 << 30)\nexcept MemoryError:\n    print('refused')",
        CodeLimits(memory_mb=256),
    )
    assert result.stdout == "refused\n", result


def test_the_sandbox_cannot_reach_a_socket_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        source = (
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\nexcept OSError as error:\n    print('failed', error)"
        )
        result = run_python(source)
    if not result.network_isolated:
        pytest.skip(f"no network namespace on this machine: {result.detail}")
    assert result.status == "ok", result
    assert result.stdout.startswith("failed"), result.stdout


def test_the_work_dir_is_deleted_even_when_nested_past_the_recursion_limit():
    source = "import os\nprint(os.getcwd(), flush=True)\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')"
    result = run_python(source)
    assert result.status == "ok", result
    assert not os.path.exists(result.stdout.strip())


def test_processes_started_in_the_background_do_not_outlive_the_run():
    source = (
        "import os, subprocess, sys\nprint(os.getuid(), os.getcwd(), flush=True)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)"
    )
    result = run_python(source)
    assert result.status == "ok", result
    assert _leftovers(result.stdout) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids exist only when running as root")
def test_a_sandbox_uid_is_swept_before_it_is_reused():
    # What a run whose parent died left behind, under the uid the next run will claim.
    uid = code_exec.SANDBOX_UIDS[0]
    stray = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[], start_new_session=True)
    try:
        assert run_python("print(1)").status == "ok"
        assert stray.wait(timeout=10) == -9
    finally:
        stray.kill()
        stray.wait()


def test_forks_beyond_max_processes_fail_and_a_fork_bomb_leaves_nothing_behind():
    # First a bounded fork loop: if the process cap were broken this makes 300 sleepers, not a
    # machine-wide bomb, and the test stops here.
    bounded = (
        "import os, time\nok = failed = 0\nfor _ in range(300):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        failed += 1\n        continue\n    if pid == 0:\n        time.sleep(2)\n"
        "        os._exit(0)\n    ok += 1\nprint(ok, failed)"
    )
    result = run_python(bounded, CodeLimits(max_processes=16))
    assert result.status == "ok", result
    assert [int(n) for n in result.stdout.split()] == [15, 285]

    start = time.monotonic()
    result = run_python(FORK_BOMB, CodeLimits(wall_s=3))
    assert result.status == "timeout", result
    assert time.monotonic() - start < 3 + 5
    assert _leftovers(result.stdout) == []
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert time.monotonic() - start < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: runs share the user's process count")
def test_runs_from_worker_threads_are_isolated_from_a_concurrent_fork_bomb():
    # Each run has a uid of its own, so a bomb exhausting its process cap leaves the others theirs.
    with cf.ThreadPoolExecutor(4) as pool:
        bomb = pool.submit(run_python, FORK_BOMB, CodeLimits(wall_s=4))
        time.sleep(0.5)
        scores = [pool.submit(verify_code, ADD, ADD_TESTS) for _ in range(6)]
        assert [s.result(timeout=60) for s in scores] == [1.0] * 6
        assert bomb.result(timeout=60).status == "timeout"
