"""Prompts come from the tokenizer's own chat template: ReasonForge's tokenizer, and a pretrained
model's (SmolLM2's real tokenizer, with its ChatML turns and default system prompt)."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk
from pretrained_model import SMOLLM2_TOKENIZER
from transformers import AutoTokenizer

from rl.tasks import Sample
from rl.tasks.format import FORMAT_TAGS
from training.chat import completion_text, conversation, prompt_text
from training.corpus import COLUMNS, tokenizer_training_text, write_corpus
from training.tokenizer import EOS, render_prompt, train_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    return AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)


def _samples() -> dict[str, list[Sample]]:
    def s(i: int, split: str, messages=None) -> Sample:  # distinct questions per split
        i += {"p": 0, "s": 10, "r": 20, "e": 30}[split]
        return Sample.create(
            "arithmetic",
            f"{split}{i}",
            f"What is {i} + 1?",
            f"<think>{i}+1</think> <answer>{i + 1}</answer>",
            str(i + 1),
            messages=messages,
        )

    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 19 + 1?"},
    ]
    return {
        "pretrain": [s(i, "p") for i in range(3)],
        "sft": [s(i, "s") for i in range(3)] + [s(9, "s", messages=history)],
        "rl": [s(i, "r") for i in range(2)],
        "eval": [s(i, "e") for i in range(2)],
    }


def test_our_template_renders_what_our_format_says(tmp_path):
    tok = train_tokenizer(
        ["What is 2 + 3?", "<think>x</think> <answer>5</answer>"] * 10, 300, tmp_path, FORMAT_TAGS
    )
    for system in (None, "Answer briefly."):
        turns = conversation("What is 2 + 3?", system=system)
        assert prompt_text(tok, turns) == render_prompt("What is 2 + 3?", system)
        assert completion_text(tok, turns, "<answer>5</answer>") == f"<answer>5</answer>{EOS}"
    assert conversation("q", system="s")[0] == {"role": "system", "content": "s"}


def test_a_pretrained_tokenizer_renders_every_split_with_its_own_template(tmp_path, smollm2):
    samples = _samples()
    write_corpus(samples, smollm2, tmp_path, system="Reason step by step.")
    sft = load_from_disk(str(tmp_path / "sft"))
    for row in sft:
        turns = json.loads(row["messages"])
        assert turns[0] == {"role": "system", "content": "Reason step by step."}
        # Computed here straight from transformers: the data stage's text is the template's.
        expected = smollm2.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        assert row["prompt"] == expected and row["prompt"].endswith("<|im_start|>assistant\n")
        # The completion carries SmolLM2's own end of turn, never ReasonForge's.
        assert row["completion"].endswith("<|im_end|>\n") and EOS not in row["completion"]
    multi = sft.filter(lambda r: r["question"] == "What is 19 + 1?")[0]
    assert "<|im_start|>assistant\nHello.<|im_end|>" in multi["prompt"]  # earlier turns kept
    for split in ("rl", "eval"):
        for row in load_from_disk(str(tmp_path / split)):
            turns = json.loads(row["messages"])
            assert row["prompt"] == smollm2.apply_chat_template(
                turns, add_generation_prompt=True, tokenize=False
            )
    # No system prompt configured: the model's template adds its own default system turn.
    write_corpus(samples, smollm2, tmp_path / "nosys")
    row = load_from_disk(str(tmp_path / "nosys" / "eval"))[0]
    assert "You are a helpful AI assistant named SmolLM" in row["prompt"]
    assert set(COLUMNS["eval"]) == set(load_from_disk(str(tmp_path / "eval")).column_names)
    # The run's tokenizer is the model's, saved beside the data for every later stage.
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer").get_vocab() == smollm2.get_vocab()


def test_our_tokenizer_trains_on_text_its_template_reproduces(tmp_path):
    samples = _samples()
    text = tokenizer_training_text(samples, system="Be brief.")
    tok = train_tokenizer(text, 320, tmp_path / "tok", FORMAT_TAGS)
    write_corpus(samples, tok, tmp_path / "corpus", system="Be brief.")
    row = load_from_disk(str(tmp_path / "corpus" / "sft"))[0]
    assert row["prompt"] + row["completion"] in text


def test_a_template_that_rewrites_the_prompt_when_answered_fails_naming_it(smollm2):
    tok = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)
    # A template that drops the generation prompt's marker once an answer follows.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant says:' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="does not extend the prompt"):
        completion_text(tok, conversation("q"), "a")
