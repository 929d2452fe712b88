"""The math-verify verifier: equivalent forms score 1, wrong or garbage answers 0, from any thread."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

from rl.tasks import math_answer
from rl.tasks.math_answer import verify_math

# (completion, reference): right answers that string or number matching would miss.
EQUIVALENT = [
    ("<think>half</think> <answer>0.5</answer>", "\\frac{1}{2}"),
    ("So the probability is \\boxed{\\frac{3}{4}}, as claimed.", "0.75"),
    ("<answer>x = 2</answer>", "2"),
    ("<answer>1,000</answer>", "1000"),
    ("<answer>\\frac{1}{\\sqrt{2}}</answer>", "\\frac{\\sqrt{2}}{2}"),
    ("<answer>(1,3]</answer>", "(1, 3]"),
    ("<answer>\\{3, 1, 2\\}</answer>", "\\{1, 2, 3\\}"),
    ("<answer>1 + x^2</answer>", "x^2 + 1"),
    # A bare "2\pi" would be read as prose, i.e. 2: the answer is wrapped in $...$ first.
    ("<answer>2\\pi</answer>", "2\\pi"),
]

WRONG = [
    ("<answer>0.6</answer>", "\\frac{1}{2}"),
    ("The answer is \\boxed{\\frac{4}{3}}.", "0.75"),
    ("<answer>x = 3</answer>", "2"),
    ("<answer>[1,3]</answer>", "(1, 3]"),
    ("<answer>\\{1, 3\\}</answer>", "\\{1, 2\\}"),
    ("<answer>x^2 + 2</answer>", "x^2 + 1"),
    ("<answer>2</answer>", "2\\pi"),
    # The last answer pair counts, not an earlier right one.
    ("<answer>0.5</answer> no wait <answer>0.4</answer>", "\\frac{1}{2}"),
]

GARBAGE = [
    "",
    "   ",
    "<answer></answer>",
    "I have no idea.",
    "$$$$ \\boxed{ \\frac{ {{{ ((( ]]]",
    "<answer>" + "1" * 10_000 + "</answer>",
    "1+" * 500_000,
    "\\boxed{" * 100_000,
    "\x00\xff\ud800 <answer>\x00</answer>",
]


@pytest.mark.parametrize("completion, answer", EQUIVALENT)
def test_equivalent_answers_score_one(completion, answer):
    assert verify_math(completion, answer) == 1.0


@pytest.mark.parametrize("completion, answer", WRONG)
def test_wrong_answers_score_zero(completion, answer):
    assert verify_math(completion, answer) == 0.0


@pytest.mark.parametrize("completion", GARBAGE)
def test_garbage_scores_zero_quickly(completion):
    start = time.monotonic()
    assert verify_math(completion, "3") == 0.0
    assert time.monotonic() - start < math_answer.REQUEST_TIMEOUT_S


def test_non_string_completion_scores_zero():
    assert verify_math(None, "3") == 0.0  # type: ignore[arg-type]


def test_a_huge_power_tower_is_cut_off_not_computed():
    # sympy would evaluate 9^(9^9) for minutes; the child's alarm stops it.
    start = time.monotonic()
    assert verify_math("\\boxed{9^{9^{9}}}", "3") == 0.0
    assert time.monotonic() - start < math_answer.REQUEST_TIMEOUT_S


def test_an_overrunning_child_is_killed_and_the_next_call_still_works(monkeypatch):
    # A wait shorter than the child's own alarm: the parent must kill the child and start another.
    monkeypatch.setattr(math_answer, "REQUEST_TIMEOUT_S", 0.2)
    start = time.monotonic()
    assert verify_math("\\boxed{9^{9^{9}}}", "3") == 0.0
    assert time.monotonic() - start < 0.2 + 0.5
    monkeypatch.undo()
    assert verify_math("<answer>0.5</answer>", "\\frac{1}{2}") == 1.0


def test_an_unparseable_reference_is_a_dataset_error():
    with pytest.raises(ValueError, match="reference answer"):
        verify_math("<answer>3</answer>", "")


def test_scores_are_right_from_worker_threads():
    # RewardScorer calls verifiers from a thread pool, where math-verify's signal.alarm would raise.
    cases = [(c, a, 1.0) for c, a in EQUIVALENT] + [(c, a, 0.0) for c, a in WRONG]
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(verify_math, c, a) for c, a, _ in cases]
        names = pool.submit(lambda: threading.current_thread().name).result()
        scores = [f.result(timeout=60) for f in futures]
    assert names != threading.main_thread().name
    assert scores == [expected for _, _, expected in cases]
