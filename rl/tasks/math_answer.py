"""Math answer verifier: symbolic equivalence by math-verify, so "0.5" matches "\\frac{1}{2}".

math-verify bounds its own work with `signal.alarm`, which works only in the main thread: from the
reward threads (`RewardScorer`) `parse` and `verify` raise ValueError. Passing `parsing_timeout=None`
and `timeout_seconds=None` turns the alarm off, and then nothing bounds the work: `\\boxed{9^{9^{9}}}`
was measured to keep `verify` busy past 20 s (sympy evaluating the tower), and a length cap cannot
catch a 17-character answer. So the parsing and comparing run in child processes that serve one
request at a time in their main thread, where math-verify's alarms do work; the parent kills a child
that still overruns (a loop inside C that no signal reaches) and starts a fresh one on the next call.
One child per concurrent caller, kept for reuse: starting one (importing sympy) costs about 0.5 s.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from rl.tasks.format import ANSWER_CLOSE, ANSWER_OPEN, extract_answer

log = logging.getLogger(__name__)

# Without answer tags, the tail of the completion math-verify searches for the last \boxed{} or
# expression: the final answer sits at the end, and parse time grows with the text (0.2 s was
# measured for 4000 characters of "1+1+...").
MAX_COMPLETION_CHARS = 4000
# Seconds math-verify's alarm allows each parse and each comparison inside a child (an integer:
# `signal.alarm` takes whole seconds). Legitimate answers take milliseconds.
STEP_TIMEOUT_S = 1
# Wall seconds the parent waits for one answer before it kills the child; below the default
# `reward_timeout_s` (5 s) so the verifier, not the scorer, decides.
REQUEST_TIMEOUT_S = 4.0
# Wall seconds a new child may take to import math-verify (sympy) on a loaded machine.
START_TIMEOUT_S = 60.0
# Address-space cap of a child: sympy needs ~100 MB; a huge integer fails with MemoryError instead.
CHILD_MEMORY_BYTES = 1 << 30

# Text already marked as maths; anything else is wrapped in $...$, because math-verify reads bare
# text as prose: it parses "1,2" as 1.2, "(1, 3]" as 3 and "2\\pi" as 2.
_MATH_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")

# The child: reads JSON [gold, prediction] lines, answers "1", "0", or "nogold" when the reference
# does not parse. Its CPU limit is raised before each request, so a child whose parent died
# mid-request cannot spin forever.
_CHILD = r"""
import functools, json, logging, resource, sys
logging.disable(logging.CRITICAL)
try:
    from math_verify import parse, verify
except ImportError as error:
    print("error", error, flush=True)
    sys.exit(1)
memory, step = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
parse_gold = functools.lru_cache(4096)(lambda text: parse(text, parsing_timeout=step))
print("ready", flush=True)
for line in sys.stdin:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(usage.ru_utime + usage.ru_stime) + 4 * step + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    gold_text, pred_text = json.loads(line)
    gold = parse_gold(gold_text)
    if not gold:
        print("nogold", flush=True)
        continue
    pred = parse(pred_text, parsing_timeout=step)
    print(int(verify(gold, pred, timeout_seconds=step)), flush=True)
"""


class _Child:
    """One math-verify child process and its pipes."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(CHILD_MEMORY_BYTES), str(STEP_TIMEOUT_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._buffer = b""
        line = self._read_line(START_TIMEOUT_S)
        if line != b"ready":
            self.close()
            raise RuntimeError(
                f"the math-verify child ({sys.executable}) did not start: {line!r}; "
                "is math-verify installed in this environment?"
            )

    def alive(self) -> bool:
        return self._proc.poll() is None

    def ask(self, gold: str, prediction: str) -> bytes | None:
        """The child's answer line, or None when it overran REQUEST_TIMEOUT_S or died."""
        try:
            self._proc.stdin.write(json.dumps([gold, prediction]).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:  # it died (its CPU or memory limit) since the last request
            return None
        return self._read_line(REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            pipe.close()

    def _read_line(self, timeout_s: float) -> bytes | None:
        # os.read on the raw descriptor, never the buffered file: select() cannot see what a
        # BufferedReader already holds.
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.strip()


# Idle children; a caller takes one (or starts one) and puts it back after a clean answer.
_IDLE: queue.SimpleQueue[_Child] = queue.SimpleQueue()


@atexit.register
def _close_idle() -> None:
    while True:
        try:
            _IDLE.get_nowait().close()
        except queue.Empty:
            return


def _idle_child() -> _Child:
    while True:
        try:
            child = _IDLE.get_nowait()
        except queue.Empty:
            return _Child()
        if child.alive():
            return child
        child.close()


def _is_equivalent(gold: str, prediction: str) -> bool:
    child = _idle_child()
    reply = child.ask(gold, prediction)
    if reply is None:
        child.close()
        log.warning("math-verify ran past %.1fs or died on %r; scored 0", REQUEST_TIMEOUT_S, prediction[:100])
        return False
    _IDLE.put(child)
    if reply == b"nogold":
        raise ValueError(
            f"reference answer {gold!r} is not maths math-verify can parse; the dataset is malformed"
        )
    return reply == b"1"


def _as_math(text: str) -> str:
    return text if any(mark in text for mark in _MATH_DELIMITERS) else f"${text}$"


def _model_answer(completion: str) -> str | None:
    """The last `<answer>` pair's content as maths, else the completion's tail; None when nothing."""
    close = completion.rfind(ANSWER_CLOSE)
    if close >= 0 and completion.rfind(ANSWER_OPEN, 0, close) >= 0:
        # None: an answer longer than MAX_ANSWER_CHARS, garbage rather than an expression.
        answer = extract_answer(completion)
        return _as_math(answer) if answer else None
    tail = completion[-MAX_COMPLETION_CHARS:]
    return tail if tail.strip() else None


def verify_math(completion: str, answer: str, meta: Mapping[str, Any] | None = None) -> float:
    """1.0 when the model's final answer is mathematically equal to `answer` (math-verify), else 0.0.

    The model's answer is the content of the last `<answer>…</answer>` pair when there is one, else
    the whole completion, where math-verify takes the last \\boxed{} or expression. `answer` is the
    reference as a bare expression ("\\frac{1}{2}", "(1, 3]") or LaTeX in $...$. Raises only when
    `answer` does not parse (a dataset bug); `meta` is unused.
    """
    if not isinstance(completion, str):
        return 0.0
    prediction = _model_answer(completion)
    if prediction is None:
        return 0.0
    return float(_is_equivalent(_as_math(answer), prediction))
