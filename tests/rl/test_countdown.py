"""Countdown task: the exhaustive solver, generation and the safe expression verifier."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.tasks import verify
from rl.tasks.config import CountdownConfig, TaskConfig
from rl.tasks.countdown import CountdownTask, reachable
from rl.tasks.expression import evaluate, leaves, parse

difficulties = st.builds(
    lambda n, extra, top: CountdownConfig(num_numbers=[n, n + extra], numbers=[1, top], target=[10, 100]),
    n=st.integers(2, 3),
    extra=st.integers(0, 1),
    top=st.integers(10, 30),
)


def _sample(seed: int, difficulty: CountdownConfig):
    return CountdownTask(TaskConfig(tasks=["countdown"], countdown=difficulty)).sample(random.Random(seed))


def _answer(sample) -> str:
    return sample.solution.split("<answer>")[1].split("</answer>")[0]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), difficulty=difficulties, delta=st.integers(-50, 50).filter(bool))
def test_reference_solution_is_accepted_and_a_wrong_target_rejected(seed, difficulty, delta):
    sample = _sample(seed, difficulty)
    numbers, target = sample.meta["numbers"], int(sample.answer)
    assert difficulty.num_numbers[0] <= len(numbers) <= difficulty.num_numbers[1]
    assert 10 <= target <= 100 and target not in numbers
    tree = parse(_answer(sample))
    assert evaluate(tree) == target and Counter(leaves(tree)) <= Counter(numbers)
    assert verify("countdown", sample.solution, sample.answer, sample.meta) == 1.0
    assert verify("countdown", sample.solution, str(target + delta), sample.meta) == 0.0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), difficulty=difficulties)
def test_expressions_using_a_number_not_given_or_twice_are_rejected(seed, difficulty):
    sample = _sample(seed, difficulty)
    numbers = sample.meta["numbers"]
    used = leaves(parse(_answer(sample)))
    n = used[0]
    # Take away a number the solution uses: it is no longer available.
    without = [x for x in numbers if x != n]
    assert verify("countdown", sample.solution, sample.answer, {"numbers": without}) == 0.0
    # Use n more often than it is given, in an expression that still hits the target.
    k = numbers.count(n) - used.count(n) + 1
    overused = f"<answer>({_answer(sample)}){f'+{n}' * k}{f'-{n}' * k}</answer>"
    assert verify("countdown", overused, sample.answer, sample.meta) == 0.0
    assert verify("countdown", overused, sample.answer, {"numbers": numbers + [n] * 2 * k}) == 1.0


def test_solver_finds_exactly_the_non_negative_integer_results():
    # 2+3, 3-2, 2*3 and the numbers themselves; 2-3 is negative and 2/3, 3/2 are not integers.
    assert sorted(reachable([2, 3])) == [1, 2, 3, 5, 6]
    assert evaluate(reachable([25, 3, 2, 2])[46]) == 46


@pytest.mark.parametrize(
    "answer, score",
    [
        ("(25-3)*2+2", 1.0),
        ("2+2*(25-3)", 1.0),
        (" ( 25 - 3 ) * 2 + 2 ", 1.0),
        ("25*2-3-2+... ", 0.0),
        ("(25-3)*2+2+0", 0.0),  # 0 is not given
        ("-3+25+25-1", 0.0),  # unary minus and a number used twice
        ("(25-3)*2.0+2", 0.0),  # floats are not given numbers
        ("46", 0.0),
    ],
)
def test_countdown_verifier_cases(answer, score):
    assert (
        verify("countdown", f"<think>x</think> <answer>{answer}</answer>", "46", {"numbers": [25, 3, 2, 2]})
        == score
    )


def test_non_integer_intermediate_results_count_when_the_value_is_exact():
    assert verify("countdown", "<answer>7/2*4</answer>", "14", {"numbers": [7, 2, 4]}) == 1.0


BOMBS = [
    "10**10**10",
    "9**9**9**9",
    "(" * 1000 + "1" + ")" * 1000,
    "(" * 60 + "25" + ")" * 60,
    "9" * 5000,
    "25/(3-3)",
    "(2-2)/(2-2)",
    "__import__('os').system('true')",
    "[25 for _ in range(10**9)]",
    "(25-3",
    "25 3",
    "",
    "-" * 99 + "3",
    "25" + "*25" * 40,
]


@pytest.mark.parametrize("answer", BOMBS)
def test_malformed_or_hostile_answers_score_zero(answer):
    assert verify("countdown", f"<answer>{answer}</answer>", "46", {"numbers": [25, 3, 2, 2]}) == 0.0


@settings(max_examples=300)
@given(st.text(alphabet="0123456789+-*/() ", max_size=150) | st.text(max_size=150))
def test_verifier_never_raises_on_arbitrary_expressions(answer):
    assert verify("countdown", f"<answer>{answer}</answer>", "46", {"numbers": [25, 3, 2, 2]}) in (0.0, 1.0)


def test_impossible_difficulty_fails_with_a_message_naming_the_setting():
    cfg = TaskConfig(
        tasks=["countdown"], countdown=CountdownConfig(num_numbers=[2, 2], numbers=[1, 1], target=[50, 60])
    )
    with pytest.raises(ValueError, match=r"task\.countdown\.target"):
        CountdownTask(cfg).sample(random.Random(0))
