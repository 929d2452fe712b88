"""Arithmetic task: generation, the worked solution, and the exact-integer verifier."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.tasks import generate_block, verify
from rl.tasks.arithmetic import ArithmeticTask, make_sample
from rl.tasks.config import ArithmeticConfig, TaskConfig
from rl.tasks.expression import parse, render

difficulties = st.builds(
    lambda ops, lo, width, n, extra: ArithmeticConfig(
        num_ops=[n, n + extra], operands=[lo, lo + width], ops=ops
    ),
    ops=st.lists(st.sampled_from(["+", "-", "*"]), min_size=1, max_size=3, unique=True),
    lo=st.integers(0, 50),
    width=st.integers(0, 50),
    n=st.integers(1, 4),
    extra=st.integers(0, 2),
)


def _sample(seed: int, difficulty: ArithmeticConfig):
    return ArithmeticTask(TaskConfig(arithmetic=difficulty)).sample(random.Random(seed))


@given(seed=st.integers(0, 2**32), difficulty=difficulties)
def test_generated_problems_follow_their_difficulty_and_their_worked_solution_is_right(seed, difficulty):
    sample = _sample(seed, difficulty)
    expression = sample.prompt.removeprefix("Compute ")
    # Python's own evaluator is the independent oracle for our generated (trusted) expression.
    assert int(sample.answer) == eval(expression)
    steps = (
        re.fullmatch(r"<think>(.*)</think> <answer>(-?\d+)</answer>", sample.solution).group(1).split(", ")
    )
    assert difficulty.num_ops[0] <= len(steps) <= difficulty.num_ops[1] == max(difficulty.num_ops)
    assert steps[-1].endswith(f"={sample.answer}")
    operands = [int(x) for x in re.findall(r"\d+", expression)]
    assert all(difficulty.operands[0] <= x <= difficulty.operands[1] for x in operands)
    # The rendered text parses back to the same expression (parentheses are exactly what's needed).
    assert render(parse(expression)) == expression


@given(seed=st.integers(0, 2**32), difficulty=difficulties, delta=st.integers(-1000, 1000).filter(bool))
def test_verifier_accepts_the_reference_solution_and_rejects_a_perturbed_answer(seed, difficulty, delta):
    sample = _sample(seed, difficulty)
    assert verify("arithmetic", sample.solution, sample.answer, sample.meta) == 1.0
    wrong = str(int(sample.answer) + delta)
    perturbed = sample.solution.replace(f"<answer>{sample.answer}</answer>", f"<answer>{wrong}</answer>")
    assert verify("arithmetic", perturbed, sample.answer, sample.meta) == 0.0


def test_worked_solution_evaluates_in_precedence_order():
    sample = make_sample(("+", 3, ("*", 4, 2)))
    assert sample.prompt == "Compute 3+4*2"
    assert sample.solution == "<think>4*2=8, 3+8=11</think> <answer>11</answer>"
    assert sample.answer == "11"


@pytest.mark.parametrize(
    "tree, text, solution",
    [
        (("*", ("+", 3, 4), 2), "(3+4)*2", "<think>3+4=7, 7*2=14</think> <answer>14</answer>"),
        (("-", 5, ("-", 3, 1)), "5-(3-1)", "<think>3-1=2, 5-2=3</think> <answer>3</answer>"),
        (("-", ("-", 5, 3), 1), "5-3-1", "<think>5-3=2, 2-1=1</think> <answer>1</answer>"),
        (("*", 6, ("-", 7, 8)), "6*(7-8)", "<think>7-8=-1, 6*(-1)=-6</think> <answer>-6</answer>"),
    ],
)
def test_parentheses_and_negative_steps_render_as_a_reader_expects(tree, text, solution):
    sample = make_sample(tree)
    assert sample.prompt == f"Compute {text}"
    assert sample.solution == solution


@pytest.mark.parametrize(
    "completion, score",
    [
        ("<think>x</think> <answer> 11 </answer>", 1.0),
        ("<answer>11</answer><|endoftext|>", 1.0),
        ("<think>x</think> <answer>11.0</answer>", 0.0),  # exact integer: plain digits only
        ("<think>x</think> 11", 0.0),
        ("<answer>+11</answer>", 1.0),
        ("<answer>011</answer>", 1.0),
    ],
)
def test_exact_integer_verifier_reads_only_plain_integers(completion, score):
    assert verify("arithmetic", completion, "11", {}) == score


BOMBS = [
    "<answer>10**10**10</answer>",
    "<answer>" + "9" * 5000 + "</answer>",  # int() of > 4300 digits raises ValueError
    "<answer>" + "(" * 1000 + "1" + ")" * 1000 + "</answer>",
    "<answer>1e999999</answer>",
    "<answer>inf</answer>",
    "<answer>nan</answer>",
    "<answer>٣</answer>",  # a non-ASCII digit
    "<answer></answer>",
    "<answer>" * 1000,
    "",
]


@pytest.mark.parametrize("completion", BOMBS)
def test_malformed_answers_score_zero(completion):
    assert verify("arithmetic", completion, "3", {}) == 0.0


@settings(max_examples=300)
@given(st.text(max_size=300) | st.text(max_size=300).map(lambda t: f"<answer>{t}</answer>"))
def test_verifier_never_raises_on_arbitrary_text(completion):
    assert verify("arithmetic", completion, "3", {}) in (0.0, 1.0)


def test_blocks_are_deterministic_per_seed_and_differ_across_seeds():
    cfg = TaskConfig()
    first = generate_block(cfg, "arithmetic", 7, 3, 32)
    assert first == generate_block(cfg, "arithmetic", 7, 3, 32)
    assert [s.id for s in first] != [s.id for s in generate_block(cfg, "arithmetic", 8, 3, 32)]
    assert [s.id for s in first] != [s.id for s in generate_block(cfg, "arithmetic", 7, 4, 32)]
