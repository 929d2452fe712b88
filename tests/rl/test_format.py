"""The answer format: building it, extracting the final answer, and recognising well-formed output."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rl.tasks.format import (
    FORMAT_TAGS,
    MAX_ANSWER_CHARS,
    as_tagged,
    extract_answer,
    format_solution,
    is_well_formed,
    last_number,
)
from training.tokenizer import EOS

# Text that cannot contain a format tag (no "<"), so it is valid inside either block.
plain = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=80)


def test_format_solution_writes_the_documented_layout():
    assert format_solution("3+4=7", "7") == "<think>3+4=7</think> <answer>7</answer>"


@given(reasoning=plain, answer=plain.filter(lambda a: len(a.strip()) <= MAX_ANSWER_CHARS))
def test_extract_answer_recovers_what_format_solution_wrote(reasoning, answer):
    completion = format_solution(reasoning, answer)
    assert extract_answer(completion) == answer.strip()
    assert extract_answer(completion + EOS) == answer.strip()
    assert is_well_formed(completion) and is_well_formed(completion + EOS)


def test_the_last_answer_pair_counts():
    completion = "<think>x</think> <answer>1</answer> <answer>2</answer>"
    assert extract_answer(completion) == "2"
    assert not is_well_formed(completion)


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "42",
        "<think>6*7=42</think> 42",
        "<think>6*7=42</think> <answer>42",  # truncated before the closing tag
        "</answer>42<answer>",  # tags in the wrong order
        None,
        b"<answer>42</answer>",
    ],
)
def test_no_closed_answer_pair_means_no_answer(completion):
    assert extract_answer(completion) is None
    assert not is_well_formed(completion)


def test_an_over_long_answer_is_not_extracted():
    assert extract_answer(f"<answer>{'9' * (MAX_ANSWER_CHARS + 1)}</answer>") is None


@pytest.mark.parametrize(
    "completion",
    [
        "so <think>a</think> <answer>1</answer>",  # text before the think block
        "<think>a</think> then <answer>1</answer>",  # text between the blocks
        "<think>a</think> <answer>1</answer> and more",  # text after the answer
        "<answer>1</answer> <think>a</think>",  # blocks swapped
        "<think>a<think>b</think> <answer>1</answer>",  # a tag repeated
        f"<think>a</think> <answer>1</answer>{EOS}{EOS}",
    ],
)
def test_well_formed_rejects_anything_but_one_think_then_one_answer(completion):
    assert not is_well_formed(completion)


@pytest.mark.parametrize("tag", FORMAT_TAGS)
def test_format_solution_refuses_text_containing_a_tag(tag):
    with pytest.raises(ValueError, match="must not contain the tag"):
        format_solution(f"a{tag}b", "1")


@pytest.mark.timeout(10)
def test_extraction_stays_linear_on_many_unclosed_tags():
    # A lazy regex would rescan the tail once per "<answer>": ~10^11 steps here.
    completion = "<answer>1 " * 200_000 + "</answer>"
    assert extract_answer(completion) == "1"
    assert extract_answer("<answer>1 " * 200_000) is None


@pytest.mark.parametrize(
    "text, number",
    [
        ("The answer is 7.", "7"),
        ("5 - 3 = 2. So we get 2, not 3.5", "3.5"),
        ("It costs $1,234.50 in total", "1234.50"),
        ("(-9) / 9 = -1", "-1"),
        ("no digits here", None),
        ("", None),
        ("٣ + ٤", None),  # Arabic-Indic digits are not read as numbers
    ],
)
def test_last_number_reads_the_last_number_as_prose_writes_it(text, number):
    assert last_number(text) == number


def test_as_tagged_lets_the_tag_reading_verifiers_read_a_prose_answer():
    assert as_tagged("first 3, then 4", "last_number") == "<answer>4</answer>"
    assert as_tagged("no number", "last_number") == ""
    assert as_tagged("<answer>3</answer> then 4", "tags") == "<answer>3</answer> then 4"
    with pytest.raises(ValueError, match="unknown answer format 'boxed'"):
        as_tagged("x", "boxed")
