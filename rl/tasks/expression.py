"""Integer expression trees: render with minimal parentheses, solve step by step, parse safely.

A tree is an `int` leaf or a tuple `(op, left, right)` with op in "+-*/". `render` adds only the
parentheses that standard precedence needs, plus parentheses around a right operand of the same
precedence, so Python parses the rendered text back into the very same tree and the worked steps
follow the order a reader would.

`parse` turns untrusted text (model output) into a tree without `eval`: a character whitelist and
a length cap first, then `ast`, accepting only integer literals and the four binary operators.
"""

from __future__ import annotations

import ast
from fractions import Fraction

Tree = int | tuple[str, "Tree", "Tree"]

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
# Model answers longer than this are not expressions over a handful of small numbers.
MAX_EXPRESSION_CHARS = 100
# Any integer literal longer than this is not one of the given numbers.
MAX_LITERAL_DIGITS = 6


def apply(op: str, a: Fraction | int, b: Fraction | int) -> Fraction | int | None:
    """`a op b`, exact; None for division by zero. Integer division returns an int when exact."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    quotient = Fraction(a) / Fraction(b)
    return (
        int(quotient) if quotient.denominator == 1 and isinstance(a, int) and isinstance(b, int) else quotient
    )


def render(tree: Tree) -> str:
    """The tree as text, e.g. `3+4*2` or `(3+4)*2`."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    left_text, right_text = render(left), render(right)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        left_text = f"({left_text})"
    if not isinstance(right, int) and _PRECEDENCE[right[0]] <= _PRECEDENCE[op]:
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}"


def _operand(value: Fraction | int) -> str:
    return str(value) if value >= 0 else f"({value})"


def solve(tree: Tree) -> tuple[Fraction | int | None, list[str]]:
    """Value of the tree and its worked steps (`"4*2=8"`, ...), left subtree first.

    The value is None when a division by zero occurs; the steps stop there.
    """
    if isinstance(tree, int):
        return tree, []
    op, left, right = tree
    a, steps = solve(left)
    if a is None:
        return None, steps
    b, right_steps = solve(right)
    steps += right_steps
    if b is None:
        return None, steps
    value = apply(op, a, b)
    if value is not None:
        steps.append(f"{a}{op}{_operand(b)}={value}")
    return value, steps


def leaves(tree: Tree) -> list[int]:
    """The integer literals of the tree, left to right."""
    if isinstance(tree, int):
        return [tree]
    return leaves(tree[1]) + leaves(tree[2])


def _from_ast(node: ast.AST) -> Tree | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        left, right = _from_ast(node.left), _from_ast(node.right)
        if left is None or right is None:
            return None
        return (_AST_OPS[type(node.op)], left, right)
    return None


def parse(text: str) -> Tree | None:
    """The tree for an arithmetic expression over integer literals, or None if it is anything else.

    Rejected: unary minus, powers, floats, names, calls, over-long text or literals. The character
    whitelist runs before `ast.parse`, so nothing but digits, operators and parentheses ever reach
    Python's parser, and the length cap bounds the nesting depth.
    """
    text = text.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS or not set(text) <= _ALLOWED_CHARS:
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    tree = _from_ast(node)
    if tree is None or any(len(str(leaf)) > MAX_LITERAL_DIGITS for leaf in leaves(tree)):
        return None
    return tree


def evaluate(tree: Tree) -> Fraction | None:
    """Exact value of the tree as a Fraction; None on division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    if a is None or b is None:
        return None
    return apply(op, a, b)
