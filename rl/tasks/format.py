"""The answer format every task uses: `<think>{reasoning}</think> <answer>{final}</answer>`.

The reasoning is free text; the verifier reads only the answer. Extraction is deliberately
forgiving about what surrounds the tags (leading text, a trailing `<|endoftext|>`, whitespace inside
the answer) and strict about the tags themselves: no closed `<answer>…</answer>` pair, no answer.
When a completion holds several answer pairs the last one counts, so hedging by listing many
answers earns nothing more than the last of them.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# The data stage makes each tag a single token of the tokenizer it trains.
FORMAT_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
# An end-of-turn token left in the text, in Hugging Face's `<|name|>` form: ours is `<|endoftext|>`,
# SmolLM2's `<|im_end|>`.
END_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")

# Longest answer text the verifiers look at; anything longer is garbage, not a number or expression.
MAX_ANSWER_CHARS = 200

# How a verifier finds the answer in a completion (`task.answer_format`): `tags`, the last closed
# `<answer>` pair (strict: a model must have learnt the format); `last_number`, the last number
# anywhere in the reply (lm-evaluation-harness's "flexible extract"), for pretrained chat models that
# answer in prose and never write the tags - a 135M instruct model wrote them in 0 of 48 replies
# when its system prompt asked for them, which leaves RL no reward to learn from.
ANSWER_FORMATS = ("tags", "last_number")
# Meta key that carries a sample's answer format from the data stage to every verifier.
ANSWER_FORMAT_KEY = "answer_format"
# A number as prose writes it: optional sign, thousands separators, decimals; ASCII digits only.
_PROSE_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", re.ASCII)


def format_solution(reasoning: str, answer: str) -> str:
    """A completion in the answer format."""
    for tag in FORMAT_TAGS:
        if tag in reasoning or tag in answer:
            raise ValueError(
                f"reasoning and answer must not contain the tag {tag!r}: {reasoning!r} / {answer!r}"
            )
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE} {ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def extract_answer(completion: object) -> str | None:
    """The stripped text of the last closed `<answer>…</answer>` pair, or None if there is none."""
    # rfind, not a regex: a lazy `<answer>(.*?)</answer>` rescans the tail once per unclosed tag,
    # which is quadratic on adversarial completions.
    if not isinstance(completion, str):
        return None
    end = completion.rfind(ANSWER_CLOSE)
    start = completion.rfind(ANSWER_OPEN, 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    answer = completion[start + len(ANSWER_OPEN) : end].strip()
    return answer if len(answer) <= MAX_ANSWER_CHARS else None


def is_well_formed(completion: object) -> bool:
    """True when the completion is exactly one think block, then one answer block, then an
    end-of-turn token or nothing."""
    if not isinstance(completion, str) or any(completion.count(tag) != 1 for tag in FORMAT_TAGS):
        return False
    think_open, think_close, answer_open, answer_close = (completion.index(tag) for tag in FORMAT_TAGS)
    if not think_open < think_close < answer_open < answer_close:
        return False
    tail = completion[answer_close + len(ANSWER_CLOSE) :].strip()
    return (
        not completion[:think_open].strip()
        and not completion[think_close + len(THINK_CLOSE) : answer_open].strip()
        and (not tail or END_TOKEN.fullmatch(tail) is not None)
    )


def last_number(completion: object) -> str | None:
    """The last number in the completion with thousands separators dropped ("1,234.5" -> "1234.5"),
    or None if it has none."""
    if not isinstance(completion, str):
        return None
    numbers = _PROSE_NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else None


def _last_number_tagged(completion: str) -> str:
    number = last_number(completion)
    return "" if number is None else f"{ANSWER_OPEN}{number}{ANSWER_CLOSE}"


# Answer format -> the completion as the tag-reading verifiers are to see it.
_AS_TAGGED = {"tags": lambda completion: completion, "last_number": _last_number_tagged}


def as_tagged(completion: str, answer_format: str) -> str:
    """The completion as the tag-reading verifiers see it under `answer_format`: unchanged for
    `tags`; for `last_number`, just `<answer>{last number}</answer>` (empty when there is none)."""
    if answer_format not in _AS_TAGGED:
        raise ValueError(f"unknown answer format {answer_format!r}; known: {ANSWER_FORMATS}")
    return _AS_TAGGED[answer_format](completion)
