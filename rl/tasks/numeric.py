"""Numeric answer verifiers: exact integer match and numeric match within a tolerance.

Parsing is by regular expression over a length-capped string, never `int()` on raw model text:
Python refuses to convert integers longer than 4300 digits (ValueError), and `float()` accepts
"inf", "nan" and "1e999".
"""

from __future__ import annotations

import re
from fractions import Fraction

from rl.tasks.format import extract_answer

# Longest number (digits) a verifier will consider; longer answers are wrong by construction.
MAX_DIGITS = 30

# ASCII digits only: `\d` alone would also match other scripts' digits.
_INTEGER = re.compile(rf"[+-]?\d{{1,{MAX_DIGITS}}}", re.ASCII)
# Decimal or integer, optional "$" and thousands separators ("$1,234.50"), optional trailing period.
_NUMBER = re.compile(
    rf"\$?([+-]?)\$?(\d{{1,3}}(?:,\d{{3}})+|\d{{1,{MAX_DIGITS}}})(\.\d{{1,{MAX_DIGITS}}})?\.?", re.ASCII
)


def parse_integer(text: str) -> int | None:
    """An integer written as plain digits with an optional sign ("-14"), else None."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def parse_number(text: str) -> Fraction | None:
    """A decimal number as people write it ("1,234", "$18", "-0.5", "7."), exactly, else None."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    return Fraction(f"{sign}{whole.replace(',', '')}{fraction or ''}")


def verify_exact_integer(completion: str, answer: str) -> float:
    """1.0 when the extracted answer is the integer `answer` written as plain digits."""
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    value = parse_integer(extracted)
    return float(value is not None and value == int(answer))


def verify_numeric(completion: str, answer: str, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> float:
    """1.0 when the extracted answer is a number within tolerance of `answer` ("18.00" for "18").

    Comparison is exact (Fractions), so the tolerance only absorbs rounding in long decimals; a
    looser relative tolerance (1e-6) was measured to accept 1000001 for 1000000.
    """
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    value, reference = parse_number(extracted), parse_number(answer)
    if reference is None:
        raise ValueError(f"reference answer {answer!r} is not a number; the dataset is malformed")
    if value is None:
        return 0.0
    return float(abs(value - reference) <= max(rel_tol * abs(reference), abs_tol))
