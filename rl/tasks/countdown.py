"""Countdown: reach a target from given numbers with + - * / and parentheses, each number at most once.

The answer is an expression (`(25-3)*2+2`); the verifier parses it with `ast` (never `eval`),
checks that it uses only the given numbers, each no more often than given, and evaluates it exactly
with `Fraction`, so `7/2*4` counts for 14. Generation searches every expression over every subset of
the numbers and asks only for targets some expression reaches; the worked solution is one with the
fewest numbers, its intermediate results kept to non-negative integers so each step reads plainly.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rl.tasks.base import Sample, Task, register_task
from rl.tasks.expression import Tree, apply, evaluate, leaves, parse, render, solve
from rl.tasks.format import extract_answer, format_solution

# Number draws per problem before concluding the difficulty settings admit no problem at all.
_MAX_DRAWS = 1000


def _combine(left: dict[int, Tree], right: dict[int, Tree], into: dict[int, Tree]) -> None:
    for a, left_tree in left.items():
        for b, right_tree in right.items():
            for op in "+-*/":
                if (op == "-" and a < b) or (op == "/" and (b == 0 or a % b)):
                    continue
                into.setdefault(apply(op, a, b), (op, left_tree, right_tree))


def reachable(numbers: list[int]) -> dict[int, Tree]:
    """Every value reachable from `numbers` (each at most once) -> an expression using fewest numbers.

    Dynamic programming over subsets (bitmasks): a subset's values combine the values of each
    split of it into two non-empty parts. Intermediate results stay non-negative integers.
    """
    by_subset: dict[int, dict[int, Tree]] = {}
    best: dict[int, Tree] = {}
    for mask in sorted(range(1, 1 << len(numbers)), key=lambda m: (m.bit_count(), m)):
        if mask.bit_count() == 1:
            value = numbers[mask.bit_length() - 1]
            values: dict[int, Tree] = {value: value}
        else:
            values = {}
            part = (mask - 1) & mask
            while part:
                _combine(by_subset[part], by_subset[mask ^ part], values)
                part = (part - 1) & mask
        by_subset[mask] = values
        for value, tree in values.items():
            best.setdefault(value, tree)
    return best


def make_sample(numbers: list[int], target: int, tree: Tree) -> Sample:
    value, steps = solve(tree)
    if value != target:
        raise ValueError(f"countdown solution {render(tree)} = {value}, not the target {target}")
    listed = ", ".join(map(str, numbers))
    return Sample.create(
        task="countdown",
        key=f"{sorted(numbers)}->{target}",
        prompt=f"Use {listed} (each at most once) with + - * / to make {target}",
        solution=format_solution(", ".join(steps), render(tree)),
        answer=str(target),
        meta={"numbers": list(numbers)},
    )


@register_task("countdown")
class CountdownTask(Task):
    def sample(self, rng: random.Random) -> Sample:
        cfg = self.cfg.countdown
        for _ in range(_MAX_DRAWS):
            numbers = [rng.randint(*cfg.numbers) for _ in range(rng.randint(*cfg.num_numbers))]
            solutions = reachable(numbers)
            targets = sorted(
                value
                for value in solutions
                if cfg.target[0] <= value <= cfg.target[1] and value not in numbers
            )
            if targets:
                target = rng.choice(targets)
                return make_sample(numbers, target, solutions[target])
        raise ValueError(
            f"no target in task.countdown.target={cfg.target} was reachable in {_MAX_DRAWS} draws of "
            f"{cfg.num_numbers} numbers from {cfg.numbers}; widen the target range or the numbers"
        )

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        text = extract_answer(completion)
        tree = parse(text) if text is not None else None
        if tree is None or not Counter(leaves(tree)) <= Counter(meta["numbers"]):
            return 0.0
        value = evaluate(tree)
        return float(value is not None and value == Fraction(int(answer)))
