"""Multi-step integer arithmetic: `Compute 3+4*2` -> `<think>4*2=8, 3+8=11</think> <answer>11</answer>`.

The default demo task. Problems are random expression trees; the worked solution evaluates one
operation per step in precedence order, so the chain of thought is short but every step is a real
sub-result the model can learn to compute. Difficulty is the number of operations and the operand
range (`task.arithmetic`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from rl.tasks.base import Sample, Task, register_task
from rl.tasks.config import ArithmeticConfig
from rl.tasks.expression import Tree, render, solve
from rl.tasks.format import format_solution
from rl.tasks.numeric import verify_exact_integer


def random_tree(rng: random.Random, num_ops: int, cfg: ArithmeticConfig) -> Tree:
    """A random expression with `num_ops` operators, operands drawn from `cfg.operands`."""
    if num_ops == 0:
        return rng.randint(cfg.operands[0], cfg.operands[1])
    left_ops = rng.randint(0, num_ops - 1)
    op = rng.choice(list(cfg.ops))
    return (op, random_tree(rng, left_ops, cfg), random_tree(rng, num_ops - 1 - left_ops, cfg))


def make_sample(tree: Tree) -> Sample:
    """The sample for one expression; its rendered text is the canonical key."""
    expression = render(tree)
    value, steps = solve(tree)
    return Sample.create(
        task="arithmetic",
        key=expression,
        prompt=f"Compute {expression}",
        solution=format_solution(", ".join(steps), str(value)),
        answer=str(value),
        meta={"num_ops": len(steps)},
    )


@register_task("arithmetic")
class ArithmeticTask(Task):
    def sample(self, rng: random.Random) -> Sample:
        low, high = self.cfg.arithmetic.num_ops
        return make_sample(random_tree(rng, rng.randint(low, high), self.cfg.arithmetic))

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        return verify_exact_integer(completion, answer)
